"""The database itself refuses rows that break the model's invariants."""

from datetime import timedelta

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from tasks.models import Run, Task
from tests.factories import make_agent, make_occurrence, make_task

pytestmark = pytest.mark.django_db


@pytest.fixture
def agent():
    return make_agent()[0]


@pytest.fixture
def task(agent):
    return make_task(agent)


def assert_refused(constraint: str, func) -> None:
    with pytest.raises(IntegrityError) as info, transaction.atomic():
        func()
    assert constraint in str(info.value)


@pytest.mark.parametrize("priority", [0, 10, -1])
def test_task_priority_outside_1_to_9_is_refused(agent, priority):
    assert_refused("task_priority_1_9", lambda: make_task(agent, priority=priority))


@pytest.mark.parametrize("priority", [1, 9])
def test_task_priority_bounds_are_accepted(agent, priority):
    assert make_task(agent, priority=priority).priority == priority


def test_task_unknown_status_is_refused(agent):
    assert_refused("task_status_valid", lambda: make_task(agent, status="running"))


def test_task_unknown_schedule_kind_is_refused(agent):
    assert_refused("task_kind_valid", lambda: make_task(agent, schedule_kind="weekly"))


def test_task_negative_max_retries_is_refused(agent):
    assert_refused("task_retries_nonneg", lambda: make_task(agent, max_retries=-1))


def test_task_negative_dedupe_window_is_refused(agent):
    assert_refused("task_dedupe_window_nonneg", lambda: make_task(agent, dedupe_window_seconds=-5))


def test_cron_task_without_expression_is_refused(agent):
    assert_refused("task_time_kind_has_expr", lambda: make_task(agent, schedule_expr=""))


def test_event_task_may_have_no_expression(agent):
    assert make_task(agent, schedule_kind="event", schedule_expr=None).schedule_expr is None


def test_paused_task_cannot_have_next_run_at(agent):
    assert_refused(
        "task_next_run_only_when_scheduled",
        lambda: make_task(agent, status="paused", next_run_at=timezone.now()),
    )


def test_raw_sql_cannot_bypass_task_constraints(task):
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE tasks_task SET priority = 42 WHERE id = %s", [task.id])
    task.refresh_from_db()
    assert task.priority == 5


def test_same_task_and_instant_cannot_be_queued_twice(task):
    at = timezone.now().replace(microsecond=0)
    make_occurrence(task, at=at)
    assert_refused("occurrence_once", lambda: make_occurrence(task, at=at))


def test_leased_occurrence_without_lease_owner_is_refused(task):
    assert_refused(
        "occurrence_lease_iff_leased",
        lambda: make_occurrence(task, state="leased", leased_until=timezone.now()),
    )


def test_queued_occurrence_with_lease_columns_is_refused(task):
    assert_refused(
        "occurrence_lease_iff_leased",
        lambda: make_occurrence(
            task, state="queued", lease_owner="w1", leased_until=timezone.now()
        ),
    )


def test_leased_occurrence_with_both_lease_columns_is_accepted(task):
    occurrence = make_occurrence(
        task, state="leased", lease_owner="w1", leased_until=timezone.now()
    )
    assert occurrence.state == "leased"


def test_one_agents_leased_occurrences_cannot_share_a_concurrency_key(agent):
    first, second = make_task(agent), make_task(agent)
    lease = {"state": "leased", "lease_owner": "w1", "leased_until": timezone.now()}
    make_occurrence(first, concurrency_key="mailbox", **lease)
    make_occurrence(second, concurrency_key="mailbox", state="queued")
    # Another agent's key of the same name is another key.
    make_occurrence(make_task(make_agent()[0]), concurrency_key="mailbox", **lease)
    assert_refused(
        "occurrence_one_leased_per_agent_key",
        lambda: make_occurrence(second, concurrency_key="mailbox", **lease),
    )


def test_occurrence_priority_and_state_are_checked(task):
    assert_refused("occurrence_priority_1_9", lambda: make_occurrence(task, priority=0))
    assert_refused("occurrence_state_valid", lambda: make_occurrence(task, state="done"))


def test_finished_run_needs_a_finish_time(task):
    now = timezone.now()
    run = {"task": task, "scheduled_for": now, "started_at": now}
    assert_refused(
        "run_finished_iff_not_running",
        lambda: Run.objects.create(status="succeeded", **run),
    )
    assert_refused(
        "run_finished_iff_not_running",
        lambda: Run.objects.create(status="running", finished_at=now, **run),
    )
    assert_refused(
        "run_finish_after_start",
        lambda: Run.objects.create(status="failed", finished_at=now - timedelta(1), **run),
    )


def test_run_attempt_must_be_positive_and_unique_per_occurrence(task):
    now = timezone.now()
    run = {"task": task, "scheduled_for": now, "occurrence_id": 7}
    assert_refused("run_attempt_positive", lambda: Run.objects.create(attempt=0, **run))
    Run.objects.create(attempt=1, **run)
    assert_refused("run_one_per_attempt", lambda: Run.objects.create(attempt=1, **run))
    assert Run.objects.create(attempt=2, **run).success is None


def test_agent_names_are_unique(agent):
    from agents.models import Agent

    assert_refused("agents_agent_name_key", lambda: Agent.objects.create(name=agent.name))


def test_task_defaults_come_from_settings(agent, settings):
    task = Task.objects.create(
        title="t", created_by=agent, schedule_kind="once", schedule_expr="2030-01-01T00:00:00Z"
    )
    assert task.timezone == "Europe/Chisinau"
    assert task.max_retries == settings.WORKER_MAX_RETRIES == 3
    assert (task.priority, task.status, task.misfire_policy) == (5, "active", "coalesce")
