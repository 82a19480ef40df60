"""The scheduler tick and the task services it serves, in-process with an injected clock."""

from datetime import UTC, datetime, timedelta

import pytest

from audit.models import AuditEvent
from audit.services import Actor
from ordinaut.errors import Conflict, InvalidInput
from tasks import services
from tasks.models import Occurrence, SchedulerHeartbeat, SkippedOccurrence, Task
from tasks.scheduler import Scheduler
from tests.factories import make_agent

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 6, 1, 9, 0, 30, tzinfo=UTC)  # 12:00:30 in Chisinau (EEST)
ACTOR = Actor.system("tests")
PIPELINE = {"pipeline": [{"id": "a", "uses": "debug.echo", "with": {}}]}


@pytest.fixture
def agent():
    return make_agent()[0]


def create(agent, expr="* * * * *", kind="cron", now=T0, **fields):
    return services.task_create(
        created_by=agent,
        actor=ACTOR,
        title="t",
        schedule_kind=kind,
        schedule_expr=expr,
        payload=PIPELINE,
        now=now,
        **fields,
    )


def scheduler_at(instant, **kwargs):
    return Scheduler(clock=lambda: instant, lookahead=kwargs.pop("lookahead", 0), **kwargs)


def instants(task):
    return list(
        Occurrence.objects.filter(task=task)
        .order_by("scheduled_for")
        .values_list("scheduled_for", flat=True)
    )


def minute(n):
    """T0's minute + n minutes, as an aware UTC datetime."""
    return T0.replace(second=0) + timedelta(minutes=n)


def test_create_schedules_first_instant_and_audits(agent):
    task = create(agent)
    assert task.next_run_at == minute(1)
    event = AuditEvent.objects.get(action="task.created", subject_id=str(task.id))
    assert event.details["schedule_expr"] == "* * * * *"


def test_create_with_invalid_schedule_writes_nothing(agent):
    with pytest.raises(InvalidInput) as info:
        create(agent, expr="61 * * * *")
    assert "schedule_expr" in info.value.details
    with pytest.raises(InvalidInput) as info:
        create(agent, timezone_name="Mars/Olympus")
    assert "timezone" in info.value.details
    assert not Task.objects.exists()
    assert not AuditEvent.objects.filter(action="task.created").exists()


def test_create_rejects_out_of_range_fields_by_name(agent):
    for field, value in [("priority", 10), ("max_retries", -1), ("misfire_policy", "later")]:
        with pytest.raises(InvalidInput) as info:
            create(agent, **{field: value})
        assert field in info.value.details


def test_rrule_gets_its_creation_instant_as_dtstart(agent):
    task = create(agent, kind="rrule", expr="FREQ=MINUTELY;INTERVAL=2")
    assert "DTSTART" in task.schedule_expr
    assert task.next_run_at in (minute(2), minute(1))


def test_tick_enqueues_due_instant_and_advances_next_run_at(agent):
    task = create(agent)
    result = scheduler_at(minute(1) + timedelta(seconds=1)).tick()
    assert (result.tasks, result.enqueued) == (1, 1)
    occurrence = Occurrence.objects.get(task=task)
    assert occurrence.scheduled_for == occurrence.run_at == minute(1)
    assert (occurrence.state, occurrence.trigger, occurrence.priority) == ("queued", "schedule", 5)
    task.refresh_from_db()
    assert task.next_run_at == minute(2)


def test_tick_before_due_enqueues_nothing(agent):
    task = create(agent)
    assert scheduler_at(minute(1) - timedelta(seconds=5)).tick().enqueued == 0
    assert instants(task) == []


def test_lookahead_enqueues_ahead_with_run_at_at_the_instant(agent):
    task = create(agent)
    scheduler_at(minute(1) - timedelta(seconds=5), lookahead=10).tick()
    occurrence = Occurrence.objects.get(task=task)
    assert occurrence.run_at == minute(1)
    task.refresh_from_db()
    assert task.next_run_at == minute(2)


def test_second_tick_does_not_enqueue_the_same_instant_again(agent):
    task = create(agent)
    at = minute(1) + timedelta(seconds=1)
    scheduler_at(at).tick()
    assert scheduler_at(at).tick().enqueued == 0
    assert instants(task) == [minute(1)]


def test_misfire_coalesce_runs_latest_missed_once_and_ledgers_the_rest(agent):
    task = create(agent)  # misfire_policy defaults to coalesce
    now = minute(10) + timedelta(seconds=40)  # 10 minutes late, grace is 30 s
    scheduler_at(now).tick()
    occurrence = Occurrence.objects.get(task=task)
    assert occurrence.scheduled_for == minute(10)
    assert occurrence.run_at == now
    skipped = SkippedOccurrence.objects.filter(task=task).order_by("scheduled_for")
    assert [s.scheduled_for for s in skipped] == [minute(n) for n in range(1, 10)]
    assert {s.reason for s in skipped} == {"coalesced"}
    assert skipped[0].lateness_seconds == pytest.approx((now - minute(1)).total_seconds())
    task.refresh_from_db()
    assert task.next_run_at == minute(11)


def test_misfire_within_grace_is_not_a_misfire(agent):
    task = create(agent)
    scheduler_at(minute(1) + timedelta(seconds=25)).tick()
    assert instants(task) == [minute(1)]
    assert not SkippedOccurrence.objects.exists()


def test_misfire_skip_drops_missed_and_resumes_on_schedule(agent):
    task = create(agent, misfire_policy="skip")
    now = minute(5) + timedelta(seconds=40)
    scheduler_at(now).tick()
    assert instants(task) == []
    assert SkippedOccurrence.objects.filter(task=task, reason="misfire_skipped").count() == 5
    task.refresh_from_db()
    assert task.next_run_at == minute(6)


def test_misfire_catch_up_runs_every_missed_now_within_the_bound(agent, settings):
    settings.SCHEDULER_CATCHUP_MAX = 3
    task = create(agent, misfire_policy="catch_up")
    now = minute(5) + timedelta(seconds=40)
    scheduler_at(now).tick()
    occurrences = Occurrence.objects.filter(task=task).order_by("scheduled_for")
    assert [o.scheduled_for for o in occurrences] == [minute(1), minute(2), minute(3)]
    assert {o.run_at for o in occurrences} == {now}
    assert SkippedOccurrence.objects.filter(task=task, reason="catch_up_limit").exists()


def test_once_task_fires_once_then_has_nothing_left(agent):
    task = create(agent, kind="once", expr="2026-06-01T12:05:00")  # Chisinau wall time
    assert task.next_run_at == datetime(2026, 6, 1, 9, 5, tzinfo=UTC)
    scheduler_at(task.next_run_at + timedelta(seconds=1)).tick()
    task.refresh_from_db()
    assert task.next_run_at is None
    assert instants(task) == [datetime(2026, 6, 1, 9, 5, tzinfo=UTC)]


def test_many_tasks_are_processed_in_batches(agent):
    tasks = [create(agent) for _ in range(25)]
    result = scheduler_at(minute(1) + timedelta(seconds=1), batch_size=10).tick()
    assert (result.tasks, result.enqueued) == (25, 25)
    assert all(instants(t) == [minute(1)] for t in tasks)


def test_event_tasks_are_never_scheduled(agent):
    task = create(agent, kind="event", expr="email.received")
    assert task.next_run_at is None
    assert scheduler_at(minute(30)).tick().tasks == 0


def test_pause_drops_queued_and_stops_scheduling(agent):
    task = create(agent)
    scheduler_at(minute(1) - timedelta(seconds=5), lookahead=10).tick()
    services.task_pause(task_id=task.id, actor=ACTOR, now=minute(1) - timedelta(seconds=2))
    task.refresh_from_db()
    assert (task.status, task.next_run_at) == ("paused", None)
    assert instants(task) == []
    assert SkippedOccurrence.objects.get(task=task).reason == "paused"
    assert scheduler_at(minute(20)).tick().tasks == 0


def test_resume_ledgers_instants_missed_while_paused(agent):
    task = create(agent)
    services.task_pause(task_id=task.id, actor=ACTOR, now=T0)
    services.task_resume(task_id=task.id, actor=ACTOR, now=minute(3) + timedelta(seconds=30))
    task.refresh_from_db()
    assert (task.status, task.next_run_at) == ("active", minute(4))
    missed = SkippedOccurrence.objects.filter(task=task, reason="paused")
    assert sorted(m.scheduled_for for m in missed) == [minute(1), minute(2), minute(3)]


def test_pause_twice_is_a_conflict(agent):
    task = create(agent)
    services.task_pause(task_id=task.id, actor=ACTOR)
    with pytest.raises(Conflict, match="task is paused"):
        services.task_pause(task_id=task.id, actor=ACTOR)


def test_cancel_is_final(agent):
    task = create(agent)
    services.task_cancel(task_id=task.id, actor=ACTOR)
    with pytest.raises(Conflict):
        services.task_resume(task_id=task.id, actor=ACTOR)
    with pytest.raises(Conflict):
        services.task_run_now(task_id=task.id, actor=ACTOR)


def test_schedule_change_takes_effect_at_once(agent):
    task = create(agent)
    scheduler_at(minute(1) - timedelta(seconds=5), lookahead=10).tick()
    services.task_update(
        task_id=task.id, changes={"schedule_expr": "0 15 * * *"}, actor=ACTOR, now=T0
    )
    task.refresh_from_db()
    assert task.next_run_at == datetime(2026, 6, 1, 12, 0, tzinfo=UTC)  # 15:00 EEST
    assert instants(task) == []
    assert SkippedOccurrence.objects.get(task=task).reason == "rescheduled"


def test_update_with_bad_schedule_changes_nothing(agent):
    task = create(agent)
    with pytest.raises(InvalidInput):
        services.task_update(task_id=task.id, changes={"schedule_expr": "nope"}, actor=ACTOR)
    task.refresh_from_db()
    assert task.schedule_expr == "* * * * *"


def test_snooze_moves_queued_and_folds_due_instants(agent):
    task = create(agent)
    scheduler_at(minute(1) - timedelta(seconds=5), lookahead=10).tick()  # minute(1) queued
    now = minute(1) - timedelta(seconds=2)
    services.task_snooze(task_id=task.id, delay_seconds=300, reason="busy", actor=ACTOR, now=now)
    until = now + timedelta(seconds=300)
    occurrences = Occurrence.objects.filter(task=task).order_by("scheduled_for")
    # The queued minute(1) moved; minute(2) folded the instants up to the snooze's end.
    assert [(o.scheduled_for, o.run_at) for o in occurrences] == [
        (minute(1), until),
        (minute(2), until),
    ]
    folded = SkippedOccurrence.objects.filter(task=task, reason="snoozed")
    assert sorted(f.scheduled_for for f in folded) == [minute(3), minute(4), minute(5)]
    task.refresh_from_db()
    assert task.next_run_at == minute(6)


def test_snooze_delay_is_bounded(agent):
    task = create(agent)
    for delay in (0, 604801):
        with pytest.raises(InvalidInput, match="delay_seconds"):
            services.task_snooze(task_id=task.id, delay_seconds=delay, actor=ACTOR)


def test_run_now_queues_manual_occurrence_without_touching_schedule(agent):
    task = create(agent)
    first = services.task_run_now(task_id=task.id, actor=ACTOR, now=T0)
    second = services.task_run_now(task_id=task.id, actor=ACTOR, now=T0)
    assert (first.trigger, first.run_at) == ("manual", T0)
    assert second.scheduled_for > first.scheduled_for
    task.refresh_from_db()
    assert task.next_run_at == minute(1)


def test_run_loop_once_writes_heartbeat(agent):
    import threading

    create(agent)
    scheduler = scheduler_at(minute(1) + timedelta(seconds=1))
    scheduler.run(threading.Event(), once=True)
    beat = SchedulerHeartbeat.objects.get(id=scheduler.name)
    assert (beat.ticks, beat.enqueued, beat.last_tick["enqueued"]) == (1, 1, 1)


def test_dedupe_key_within_window_returns_the_existing_task(agent):
    fields = {"title": "t", "schedule_kind": "cron", "schedule_expr": "* * * * *",
              "payload": PIPELINE, "actor": ACTOR}  # fmt: skip
    first, created = services.task_create_deduplicated(
        created_by=agent, dedupe_key="brief", dedupe_window_seconds=600, now=T0, **fields
    )
    again, created_again = services.task_create_deduplicated(
        created_by=agent, dedupe_key="brief", dedupe_window_seconds=600,
        now=T0 + timedelta(seconds=300), **fields,
    )  # fmt: skip
    later, created_later = services.task_create_deduplicated(
        created_by=agent, dedupe_key="brief", dedupe_window_seconds=600,
        now=T0 + timedelta(seconds=601), **fields,
    )  # fmt: skip
    assert (created, created_again, created_later) == (True, False, True)
    assert again.pk == first.pk != later.pk


def test_create_refuses_invalid_pipeline_with_every_problem_and_its_path(agent):
    payload = {"pipeline": [{"id": "a", "uses": "no.such.tool", "with": {}}, {"uses": "x"}]}
    with pytest.raises(InvalidInput) as info:
        services.task_create(
            created_by=agent, actor=ACTOR, title="t", schedule_kind="cron",
            schedule_expr="* * * * *", payload=payload, now=T0,
        )  # fmt: skip
    paths = set(info.value.details)
    assert any(path.startswith("payload.pipeline[0]") for path in paths), paths
    assert any(path.startswith("payload.pipeline[1]") for path in paths), paths
    assert not Task.objects.exists()
