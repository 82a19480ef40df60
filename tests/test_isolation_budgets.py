"""Per-agent budgets, set over REST and enforced where the work starts: active tasks at
create and resume, concurrent runs at claim, runs per hour at enqueue, LLM tokens per day
at the llm step."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone
from mcp import Client

from agents.mcp_server import build_server
from agents.models import Agent
from audit.services import Actor
from tasks import queue, services
from tasks.models import Occurrence, Run, RunStatus, SkippedOccurrence, Task
from tasks.scheduler import Scheduler
from tasks.worker import Worker
from tests.api_support import (  # noqa: F401 (fixtures)
    agent_with_key,
    api_fixture,
    assert_error,
    fresh_throttles,
    task_body,
)
from tests.conftest import pipeline_threads_gone
from tests.factories import make_occurrence, make_task
from tests.test_pipeline_executor import fake_server, local_http  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db

BASE = ["tasks:read", "tasks:write", "runs:read", "events:publish"]
ACTOR = Actor.system("tests")


@pytest.fixture
def admin(api):
    _, key = agent_with_key(["admin"])
    return api.as_(key)


@pytest.fixture
def agent(api):
    agent, key = agent_with_key(BASE)
    return agent, api.as_(key)


def set_budgets(admin, agent, **budgets):
    response = admin.patch(f"/agents/{agent.id}", {"budgets": budgets})
    assert response.status_code == 200, response.content
    return response.json()["budgets"]


def test_budgets_are_set_by_patch_and_shown_in_the_agent(admin, agent):
    target, _ = agent
    assert admin.get(f"/agents/{target.id}").json()["budgets"] == {
        "max_active_tasks": None, "max_runs_per_hour": None, "max_concurrent_runs": None,
        "max_llm_tokens_per_day": None,
    }  # fmt: skip
    shown = set_budgets(admin, target, max_active_tasks=2, max_llm_tokens_per_day=1000)
    assert shown["max_active_tasks"] == 2
    assert shown["max_llm_tokens_per_day"] == 1000
    # Partial: another PATCH leaves the others alone; null is unlimited again.
    shown = set_budgets(admin, target, max_active_tasks=None)
    assert (shown["max_active_tasks"], shown["max_llm_tokens_per_day"]) == (None, 1000)


@pytest.mark.parametrize(
    ("budgets", "field"),
    [
        ({"max_active_tasks": -1}, "budgets.max_active_tasks"),
        ({"max_active_tasks": "2"}, "budgets.max_active_tasks"),
        ({"max_active_tasks": 1.5}, "budgets.max_active_tasks"),
        ({"max_active_tasks": True}, "budgets.max_active_tasks"),
        ({"max_tasks": 3}, "budgets.max_tasks"),
        ([1, 2], "budgets"),
    ],
)
def test_a_bad_budget_is_a_422_naming_it_and_nothing_changes(admin, agent, budgets, field):
    target, _ = agent
    body = {"description": "changed", "budgets": budgets}
    error = assert_error(admin.patch(f"/agents/{target.id}", body), 422, "validation_error")
    assert field in error["details"], error
    target.refresh_from_db()
    assert (target.description, target.max_active_tasks) == ("", None)


def test_only_admin_sets_budgets(agent):
    target, client = agent
    assert_error(client.patch(f"/agents/{target.id}", {"budgets": {"max_active_tasks": 9}}), 403)


def test_new_agents_get_the_default_budgets(settings, api):
    settings.AGENT_DEFAULT_MAX_ACTIVE_TASKS = 5
    settings.AGENT_DEFAULT_MAX_CONCURRENT_RUNS = 2
    created, _ = agent_with_key(BASE)
    assert created.budgets["max_active_tasks"] == 5
    assert created.budgets["max_concurrent_runs"] == 2
    assert created.budgets["max_runs_per_hour"] is None


def test_the_third_create_past_max_active_tasks_2_is_403_budget_exceeded(admin, agent):
    target, client = agent
    set_budgets(admin, target, max_active_tasks=2)
    first = client.post("/tasks", task_body()).json()
    client.post("/tasks", task_body())
    error = assert_error(client.post("/tasks", task_body()), 403, "budget_exceeded")
    assert error["details"] == {"budget": "max_active_tasks", "limit": 2, "usage": 2}
    assert Task.objects.filter(created_by=target).count() == 2

    # A paused task frees its place; resuming it when the place is taken again is refused.
    client.post(f"/tasks/{first['id']}/pause")
    assert client.post("/tasks", task_body()).status_code == 201
    assert_error(client.post(f"/tasks/{first['id']}/resume"), 403, "budget_exceeded")
    assert Task.objects.get(pk=first["id"]).status == "paused"
    assert_error(client.patch(f"/tasks/{first['id']}", {"status": "active"}), 403)


def test_over_mcp_create_task_past_the_budget_is_a_tool_error(admin, agent, api):
    target, _ = agent
    set_budgets(admin, target, max_active_tasks=0)
    from tests.api_support import api_key_for

    key = api_key_for(target)

    async def scenario():
        async with Client(build_server(stdio_token=key)) as client:
            return await client.call_tool(
                "create_task", {"title": "t", "schedule_kind": "once",
                                "schedule_expr": "2099-01-01T00:00:00Z",
                                "payload": task_body()["payload"]},
            )  # fmt: skip

    # The key is made outside the event loop; the MCP call runs in it.
    result = async_to_sync(scenario)()
    assert result.is_error
    assert "403 budget_exceeded" in result.content[0].text
    assert not Task.objects.filter(created_by=target).exists()


def due(task, n):
    at = timezone.now() - timedelta(seconds=30)
    return [make_occurrence(task, at=at - timedelta(seconds=i)) for i in range(n)]


def test_past_max_concurrent_runs_the_agents_work_waits_and_others_go_on(admin, agent, api):
    capped, _ = agent
    other, _ = agent_with_key(BASE)
    set_budgets(admin, capped, max_concurrent_runs=1)
    due(make_task(capped), 3)
    due(make_task(other), 2)

    claimed = queue.claim("w1", 10)
    by_agent = [Task.objects.get(pk=c.task_id).created_by_id for c in claimed]
    assert by_agent.count(capped.pk) == 1
    assert by_agent.count(other.pk) == 2
    assert queue.claim("w2", 10) == []  # the capped agent is at its budget

    queue.finish("w1", [queue.Outcome(claimed=c, status="succeeded") for c in claimed])
    [next_one] = queue.claim("w2", 10)
    assert Task.objects.get(pk=next_one.task_id).created_by_id == capped.pk


def test_past_max_runs_per_hour_occurrences_are_ledgered_not_queued(admin, agent):
    target, _ = agent
    set_budgets(admin, target, max_runs_per_hour=2)
    at = timezone.now().replace(second=0, microsecond=0) + timedelta(minutes=1)
    tasks = [
        services.task_create(
            created_by=target,
            actor=ACTOR,
            title=f"t{i}",
            schedule_kind="once",
            schedule_expr=at.isoformat(),
            payload=task_body()["payload"],
        )
        for i in range(3)
    ]
    Scheduler(clock=lambda: at, lookahead=0).tick()
    assert Occurrence.objects.filter(task__in=tasks).count() == 2
    [ledgered] = SkippedOccurrence.objects.filter(task__in=tasks)
    assert (ledgered.reason, ledgered.scheduled_for) == ("budget_exceeded", at)


def test_run_now_past_max_runs_per_hour_is_403(admin, agent):
    target, client = agent
    set_budgets(admin, target, max_runs_per_hour=1)
    task = client.post("/tasks", task_body()).json()
    assert client.post(f"/tasks/{task['id']}/run_now").status_code == 200
    error = assert_error(client.post(f"/tasks/{task['id']}/run_now"), 403, "budget_exceeded")
    assert error["details"] == {"budget": "max_runs_per_hour", "limit": 1, "usage": 1}
    assert Occurrence.objects.filter(task_id=task["id"]).count() == 1


def test_events_respect_max_runs_per_hour_too(admin, agent):
    target, client = agent
    set_budgets(admin, target, max_runs_per_hour=1)
    for _ in range(2):
        client.post("/tasks", task_body(schedule_kind="event", schedule_expr="orders.*"))
    response = client.post("/events", {"topic": "orders.paid", "payload": {}})
    assert response.json()["details"]["triggered_tasks"] == 1
    assert SkippedOccurrence.objects.get(task__created_by=target).reason == "budget_exceeded"


LLM = {
    "pipeline": [
        {"id": "ask", "uses": "llm.chat",
         "with": {"messages": [{"role": "user", "content": "hello"}]}}
    ]
}  # fmt: skip


@pytest.mark.django_db(transaction=True)
def test_llm_tokens_are_counted_and_a_step_past_the_daily_budget_fails(api, local_http):  # noqa: F811
    target, key = agent_with_key([*BASE, "llm"])
    _, admin_key = agent_with_key(["admin"])
    set_budgets(api.as_(admin_key), target, max_llm_tokens_per_day=20)
    client = api.as_(key)
    task = client.post("/tasks", task_body(payload=LLM, max_retries=3)).json()

    def run_once():
        client.post(f"/tasks/{task['id']}/run_now")
        Worker(concurrency=1, burst=True, poll_interval=0.1).run(threading.Event())
        pipeline_threads_gone()

    run_once()  # 15 tokens (the fake endpoint's usage): under 20
    run_once()  # 30: this run starts under budget, so it still calls the endpoint
    run_once()  # past the budget: refused before calling
    runs = list(Run.objects.filter(task_id=task["id"]).order_by("started_at"))
    assert [r.status for r in runs] == [RunStatus.SUCCEEDED] * 2 + [RunStatus.FAILED]
    assert "budget_exceeded" in runs[2].error
    assert len([r for r in local_http.requests if r["path"].endswith("/completions")]) == 2
    usage = client.get(f"/agents/{target.id}/usage").json()["budgets"]
    assert usage["max_llm_tokens_per_day"] == {"limit": 20, "usage": 30}


def test_usage_is_for_the_agent_itself_or_admin(admin, agent, api):
    target, client = agent
    set_budgets(admin, target, max_active_tasks=3)
    client.post("/tasks", task_body())
    mine = client.get(f"/agents/{target.id}/usage")
    assert mine.status_code == 200, mine.content
    assert mine.json()["budgets"]["max_active_tasks"] == {"limit": 3, "usage": 1}
    assert mine.json()["budgets"]["max_concurrent_runs"] == {"limit": None, "usage": 0}
    assert admin.get(f"/agents/{target.id}/usage").status_code == 200
    _, stranger_key = agent_with_key(BASE)
    assert_error(api.as_(stranger_key).get(f"/agents/{target.id}/usage"), 404)
    assert Agent.objects.get(pk=target.pk).max_active_tasks == 3
