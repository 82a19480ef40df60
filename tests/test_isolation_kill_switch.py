"""The kill switch and fair queues: real agents over REST and MCP, the real scheduler, queue
and worker.

Pausing an agent holds all of its work (nothing queued, nothing claimed, running runs stop
at the next step) and touches no other agent's; resuming restores it, the missed instants
following each task's misfire policy. Deactivation does the same and refuses credentials.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.db import connections
from django.utils import timezone
from mcp import Client

from agents import services as agent_services
from agents.mcp_server import build_server
from audit.models import AuditEvent
from audit.services import Actor
from tasks import queue
from tasks.models import (
    Occurrence,
    OccurrenceState,
    Run,
    RunStatus,
    SkippedOccurrence,
    Task,
)
from tasks.scheduler import Scheduler
from tasks.worker import Worker
from tests.api_support import (  # noqa: F401 (fixtures)
    agent_with_key,
    api_fixture,
    assert_error,
    fresh_throttles,
    task_body,
)
from tests.conftest import pipeline_threads_gone, wait_for

pytestmark = pytest.mark.django_db

BASE = ["tasks:read", "tasks:write", "runs:read", "events:publish"]
ACTOR = Actor.system("tests")
EVERY_MINUTE = {"schedule_kind": "cron", "schedule_expr": "* * * * *", "timezone": "UTC"}


@pytest.fixture
def agents(api):
    """(agent, client) for two ordinary agents, and an admin client."""
    alice, alice_key = agent_with_key(BASE)
    bob, bob_key = agent_with_key(BASE)
    _, admin_key = agent_with_key(["admin"])
    return (alice, api.as_(alice_key)), (bob, api.as_(bob_key)), api.as_(admin_key)


def create(client, **fields) -> Task:
    response = client.post("/tasks", task_body(**{**EVERY_MINUTE, **fields}))
    assert response.status_code == 201, response.content
    return Task.objects.get(pk=response.json()["id"])


def tick_at(instant):
    return Scheduler(clock=lambda: instant, lookahead=0).tick()


def test_pausing_an_agent_stops_its_every_minute_task_and_resuming_starts_it(agents):
    (alice, alice_api), (_, bob_api), admin = agents
    hers, his = create(alice_api), create(bob_api)

    paused = admin.post(f"/agents/{alice.id}/pause")
    assert paused.status_code == 200, paused.content
    assert paused.json()["status"] == "paused"
    assert admin.get(f"/agents/{alice.id}").json()["status"] == "paused"

    tick_at(timezone.now() + timedelta(minutes=3))
    assert not Occurrence.objects.filter(task=hers).exists()
    assert Occurrence.objects.filter(task=his).exists()  # the other agent's work goes on
    hers.refresh_from_db()
    assert (hers.status, hers.next_run_at) == ("active", None)

    resumed = admin.post(f"/agents/{alice.id}/resume")
    assert resumed.json()["status"] == "active"
    hers.refresh_from_db()
    assert hers.next_run_at is not None
    tick_at(hers.next_run_at)
    assert Occurrence.objects.filter(task=hers).exists()
    assert {"agent.paused", "agent.resumed"} <= set(
        AuditEvent.objects.filter(subject_id=str(alice.id)).values_list("action", flat=True)
    )


@pytest.mark.parametrize(
    ("policy", "queued", "ledgered"),
    [("coalesce", 1, 9), ("skip", 0, 10), ("catch_up", 10, 0)],
)
def test_resuming_applies_each_tasks_misfire_policy_to_the_missed_instants(
    agents, policy, queued, ledgered
):
    (alice, alice_api), _, _ = agents
    task = create(alice_api, misfire_policy=policy)
    start = task.next_run_at  # a whole minute
    agent_services.agent_pause(agent_id=alice.id, actor=ACTOR, now=start - timedelta(seconds=1))
    resumed_at = start + timedelta(minutes=9, seconds=30)  # 10 instants fell due meanwhile
    agent_services.agent_resume(agent_id=alice.id, actor=ACTOR, now=resumed_at)

    assert Occurrence.objects.filter(task=task).count() == queued
    ledger = SkippedOccurrence.objects.filter(task=task)
    assert ledger.count() == ledgered
    assert set(ledger.values_list("reason", flat=True)) <= {"agent_paused"}
    if policy == "coalesce":
        assert Occurrence.objects.get(task=task).scheduled_for == start + timedelta(minutes=9)
    task.refresh_from_db()
    assert task.next_run_at == start + timedelta(minutes=10)


def test_queued_work_waits_while_paused_and_others_are_claimed(agents):
    (alice, alice_api), (_, bob_api), admin = agents
    hers, his = create(alice_api), create(bob_api)
    alice_api.post(f"/tasks/{hers.id}/run_now")
    bob_api.post(f"/tasks/{his.id}/run_now")
    admin.post(f"/agents/{alice.id}/pause")

    claimed = queue.claim("w1", 10)
    assert [c.task_id for c in claimed] == [his.id]
    assert Occurrence.objects.get(task=hers).state == OccurrenceState.QUEUED

    admin.post(f"/agents/{alice.id}/resume")
    assert [c.task_id for c in queue.claim("w1", 10)] == [hers.id]


def test_a_paused_agents_event_task_is_ledgered_not_queued(agents):
    (alice, alice_api), _, admin = agents
    task = create(alice_api, schedule_kind="event", schedule_expr="orders.*")
    admin.post(f"/agents/{alice.id}/pause")
    response = alice_api.post("/events", {"topic": "orders.paid", "payload": {}})
    assert response.status_code == 202
    assert not Occurrence.objects.filter(task=task).exists()
    assert SkippedOccurrence.objects.get(task=task).reason == "agent_paused"


def test_a_task_that_turns_up_due_for_a_paused_agent_is_held_by_the_scheduler(agents):
    """A task created or resumed while the pause commits still finds the scheduler's guard."""
    (alice, alice_api), _, _ = agents
    task = create(alice_api)
    alice.paused_at = timezone.now()
    alice.save(update_fields=["paused_at"])  # as if the pause missed this task
    tick_at(task.next_run_at + timedelta(seconds=1))
    task.refresh_from_db()
    assert task.next_run_at is None
    assert not Occurrence.objects.filter(task=task).exists()


def test_pausing_twice_or_resuming_an_active_agent_is_409_and_changes_nothing(agents):
    (alice, _), _, admin = agents
    assert_error(admin.post(f"/agents/{alice.id}/resume"), 409, "conflict")
    admin.post(f"/agents/{alice.id}/pause")
    paused_at = type(alice).objects.get(pk=alice.pk).paused_at
    assert_error(admin.post(f"/agents/{alice.id}/pause"), 409, "conflict")
    assert type(alice).objects.get(pk=alice.pk).paused_at == paused_at


def test_only_admin_may_pause(agents):
    (alice, alice_api), (bob, _), _ = agents
    assert_error(alice_api.post(f"/agents/{bob.id}/pause"), 403)
    assert_error(alice_api.post(f"/agents/{alice.id}/pause"), 403)


def test_deactivating_refuses_its_token_and_stops_its_tasks_reactivating_restores(agents):
    (alice, alice_api), _, admin = agents
    task = create(alice_api)
    assert admin.delete(f"/agents/{alice.id}").status_code == 200
    assert_error(alice_api.get("/tasks"), 401)
    assert admin.get(f"/agents/{alice.id}").json()["status"] == "inactive"
    task.refresh_from_db()
    assert task.next_run_at is None
    tick_at(timezone.now() + timedelta(minutes=2))
    assert not Occurrence.objects.filter(task=task).exists()

    back = admin.patch(f"/agents/{alice.id}", {"is_active": True})
    assert back.json()["status"] == "active"
    task.refresh_from_db()
    assert task.next_run_at is not None


def mcp_call(key, tool, arguments):
    async def scenario():
        async with Client(build_server(stdio_token=key)) as client:
            return await client.call_tool(tool, arguments)

    return async_to_sync(scenario)()


def test_over_mcp_an_admin_pauses_and_resumes_and_others_cannot():
    alice, alice_key = agent_with_key(BASE)
    _, admin_key = agent_with_key(["admin"])
    refused = mcp_call(alice_key, "pause_agent", {"agent_id": str(alice.id)})
    assert refused.is_error
    assert "admin" in refused.content[0].text
    paused = mcp_call(admin_key, "pause_agent", {"agent_id": str(alice.id)})
    assert not paused.is_error, paused.content
    assert paused.structured_content["status"] == "paused"
    again = mcp_call(admin_key, "pause_agent", {"agent_id": str(alice.id)})
    assert again.is_error
    assert "409" in again.content[0].text
    resumed = mcp_call(admin_key, "resume_agent", {"agent_id": str(alice.id)})
    assert resumed.structured_content["status"] == "active"


TWO_STEPS = {
    "pipeline": [
        {"id": "slow", "uses": "debug.sleep", "with": {"seconds": 1.5}},
        {"id": "after", "uses": "debug.echo", "with": {"done": True}},
    ]
}


@pytest.mark.django_db(transaction=True)
def test_a_running_run_stops_at_the_next_step_and_is_not_a_retry(agents):
    (alice, alice_api), _, admin = agents
    task = create(alice_api, payload=TWO_STEPS, max_retries=0)
    alice_api.post(f"/tasks/{task.id}/run_now")
    stop = threading.Event()

    def work() -> None:
        try:
            Worker(concurrency=1, poll_interval=0.1).run(stop)
        finally:
            connections.close_all()  # this thread's own connection

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        wait_for(lambda: Run.objects.filter(task=task).exists(), 15, "the run never started")
        admin.post(f"/agents/{alice.id}/pause")
        wait_for(
            lambda: Run.objects.filter(task=task, status=RunStatus.CANCELED).exists(),
            15, "the run did not stop at the step boundary",
        )  # fmt: skip
        stopped = Run.objects.get(task=task)
        assert "paused" in stopped.error
        assert [step["id"] for step in stopped.steps] == ["slow"]
        occurrence = Occurrence.objects.get(task=task)
        # max_retries is 0, yet the occurrence waits for the resume instead of dying.
        assert occurrence.state == OccurrenceState.QUEUED
        assert occurrence.waits == 1

        admin.post(f"/agents/{alice.id}/resume")
        wait_for(
            lambda: Run.objects.filter(task=task, status=RunStatus.SUCCEEDED).exists(),
            15, "the run did not go on after the resume",
        )  # fmt: skip
    finally:
        stop.set()
        worker.join(timeout=30)
        pipeline_threads_gone()
    finished = Run.objects.get(task=task, status=RunStatus.SUCCEEDED)
    assert finished.attempt == 2
    assert [step["status"] for step in finished.steps] == ["reused", "succeeded"]


SLEEPY = {"pipeline": [{"id": "hold", "uses": "debug.sleep", "with": {"seconds": 1.0}}]}


@pytest.mark.django_db(transaction=True)
def test_two_agents_with_the_same_concurrency_key_run_at_the_same_time(agents):
    (_, alice_api), (_, bob_api), _ = agents
    tasks = [
        create(client, payload=SLEEPY, concurrency_key="email")
        for client in (alice_api, alice_api, bob_api)
    ]
    for task, client in zip(tasks, (alice_api, alice_api, bob_api), strict=True):
        client.post(f"/tasks/{task.id}/run_now")

    Worker(concurrency=3, burst=True, poll_interval=0.1).run(threading.Event())

    runs = {task.id: Run.objects.get(task=task) for task in tasks}
    alices_first, alices_second, bobs = (runs[task.id] for task in tasks)
    overlaps = lambda a, b: a.started_at < b.finished_at and b.started_at < a.finished_at  # noqa: E731
    # Alice's two share her key: one after the other. Bob's "email" is his own.
    assert not overlaps(alices_first, alices_second)
    assert overlaps(bobs, alices_first) or overlaps(bobs, alices_second)


@pytest.mark.django_db(transaction=True)
def test_a_pause_in_progress_does_not_block_work_that_references_the_agent():
    from django.db import transaction

    from ordinaut.database import raw_connection
    from tests.factories import make_agent, make_task

    agent, _ = make_agent()
    task = make_task(agent)
    with transaction.atomic():
        agent_services._locked_agent(agent.id)  # as a pause holds it until it commits
        # A scheduler tick inserting an occurrence checks its agent_id foreign key (KEY
        # SHARE on the agent): it must not wait for the pause, which itself waits for the
        # tick's task locks: that wait was a deadlock.
        with raw_connection() as tick:
            tick.execute("SET lock_timeout = '2s'")
            tick.execute(
                "INSERT INTO tasks_occurrence (task_id, scheduled_for, run_at, priority,"
                " agent_id, state, attempt, trigger, last_error, correlation_id, waits,"
                " created_at) VALUES (%s, now(), now(), 5, %s, 'queued', 0, 'schedule', '',"
                " 'c', 0, now())",
                [task.id, agent.id],
            )
    assert Occurrence.objects.filter(task=task).count() == 1
