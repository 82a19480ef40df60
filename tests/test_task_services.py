"""Task use cases as interfaces call them: status moves, retargeting queued work, the ledger."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import Actor
from ordinaut.errors import Conflict, InvalidInput
from tasks import services
from tasks.models import Occurrence, RunStatus, SkippedOccurrence, run_status_for
from tests.factories import make_agent, make_occurrence, make_task

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("tests")


@pytest.fixture
def task():
    agent, _ = make_agent()
    return make_task(agent, schedule_kind="event", schedule_expr="x", priority=3)


def test_set_status_to_the_status_it_has_changes_nothing(task):
    audits = AuditEvent.objects.count()
    change = services.task_set_status(task_id=task.id, status="active", actor=ACTOR)
    assert (change.changed, change.old_status, change.dropped) == (False, "active", 0)
    assert AuditEvent.objects.count() == audits


def test_set_status_cancel_reports_the_queued_work_it_dropped(task):
    make_occurrence(task)
    make_occurrence(task)
    leased = make_occurrence(
        task, state="leased", lease_owner="w", leased_until=timezone.now() + timedelta(minutes=1)
    )
    change = services.task_set_status(task_id=task.id, status="canceled", actor=ACTOR)
    assert (change.changed, change.old_status, change.dropped) == (True, "active", 2)
    assert change.task.status == "canceled"
    # The running occurrence finishes; the two queued ones are ledgered as canceled.
    assert list(Occurrence.objects.values_list("id", flat=True)) == [leased.id]
    assert SkippedOccurrence.objects.filter(task=task, reason="canceled").count() == 2
    assert AuditEvent.objects.filter(action="task.canceled").count() == 1


def test_set_status_refuses_a_move_the_task_cannot_make(task):
    services.task_cancel(task_id=task.id, actor=ACTOR)
    with pytest.raises(Conflict, match="resume needs it to be paused"):
        services.task_set_status(task_id=task.id, status="active", actor=ACTOR)


def test_set_status_names_the_field_for_an_unknown_status(task):
    with pytest.raises(InvalidInput) as raised:
        services.task_set_status(task_id=task.id, status="sleeping", actor=ACTOR)
    assert "status" in raised.value.details


def test_update_retargets_queued_but_not_leased_occurrences(task):
    queued = make_occurrence(task)
    leased = make_occurrence(
        task, state="leased", lease_owner="w", leased_until=timezone.now() + timedelta(minutes=1)
    )
    services.task_update(
        task_id=task.id, changes={"priority": 8, "concurrency_key": "mail"}, actor=ACTOR
    )
    queued.refresh_from_db()
    leased.refresh_from_db()
    assert (queued.priority, queued.concurrency_key) == (8, "mail")
    assert (leased.priority, leased.concurrency_key) == (3, None)


def test_run_now_twice_in_one_instant_queues_two_occurrences(task):
    now = timezone.now()
    first = services.task_run_now(task_id=task.id, actor=ACTOR, now=now)
    second = services.task_run_now(task_id=task.id, actor=ACTOR, now=now)
    assert second.scheduled_for - first.scheduled_for == timedelta(microseconds=1)
    assert first.run_at == second.run_at == now
    assert {first.trigger, second.trigger} == {"manual"}


@pytest.mark.parametrize(
    ("execution", "run"),
    [
        ("succeeded", RunStatus.SUCCEEDED),
        ("failed", RunStatus.FAILED),
        ("timed_out", RunStatus.TIMED_OUT),
        ("waiting", RunStatus.WAITING_APPROVAL),
    ],
)
def test_each_execution_status_maps_to_one_run_status(execution, run):
    assert run_status_for(execution) == run


def test_an_unknown_execution_status_is_refused():
    with pytest.raises(ValueError, match="unknown execution status 'parked'"):
        run_status_for("parked")
