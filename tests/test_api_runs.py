"""/runs: the original's TaskRunResponse, filters, latest, statistics, and ownership."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from tasks.models import Run, RunStatus
from tests.api_support import (  # noqa: F401 (fixtures)
    agent_with_key,
    api_fixture,
    assert_error,
    fresh_throttles,
)
from tests.factories import make_task

pytestmark = pytest.mark.django_db

RUN_FIELDS = {
    "id", "task_id", "lease_owner", "leased_until", "started_at", "finished_at", "success",
    "error", "attempt", "output", "created_at",
}  # fmt: skip


def make_run(task, *, status=RunStatus.SUCCEEDED, ago=60, seconds=2, **fields):
    started = timezone.now() - timedelta(seconds=ago)
    values = {
        "task": task,
        "scheduled_for": started,
        "attempt": 1,
        "status": status,
        "started_at": started,
        "finished_at": None
        if status == RunStatus.RUNNING
        else started + timedelta(seconds=seconds),
        "output": {"ok": status == RunStatus.SUCCEEDED},
    }
    values.update(fields)
    return Run.objects.create(**values)


@pytest.fixture
def owned(api):
    agent, key = agent_with_key()
    task = make_task(agent)
    return task, api.as_(key)


def test_list_runs_in_original_envelope_most_recent_first(owned):
    task, client = owned
    old = make_run(task, ago=300)
    new = make_run(task, ago=10, status=RunStatus.FAILED, error="boom")
    body = client.get("/runs").json()
    assert body["total"] == 2
    assert body["has_more"] is False
    assert [item["id"] for item in body["items"]] == [str(new.id), str(old.id)]
    assert set(body["items"][0]) >= RUN_FIELDS
    assert body["items"][0]["success"] is False
    assert body["items"][0]["error"] == "[Error details hidden - use include_errors=true]"
    assert body["items"][1]["output"] == {"ok": True}


def test_include_errors_shows_error_text(owned):
    task, client = owned
    make_run(task, status=RunStatus.FAILED, error="boom")
    assert client.get("/runs?include_errors=true").json()["items"][0]["error"] == "boom"


def test_filters_task_success_and_time_range(owned):
    task, client = owned
    other_task = make_task(task.created_by)
    make_run(task, ago=3600)
    make_run(task, ago=60, status=RunStatus.FAILED)
    make_run(other_task, ago=60)
    running = make_run(task, ago=5, status=RunStatus.RUNNING)
    assert client.get(f"/runs?task_id={task.id}").json()["total"] == 3
    assert client.get("/runs?success=true").json()["total"] == 2
    assert client.get("/runs?success=false").json()["total"] == 1
    since = (timezone.now() - timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    recent = client.get(f"/runs?start_time={since}").json()
    assert recent["total"] == 3
    until = (timezone.now() - timedelta(minutes=30)).isoformat().replace("+00:00", "Z")
    assert client.get(f"/runs?end_time={until}").json()["total"] == 1
    detail = client.get(f"/runs/{running.id}").json()
    assert detail["success"] is None
    assert detail["status"] == "running"
    assert client.get("/runs?limit=1").json()["has_more"] is True


def test_bad_run_filters_are_422(owned):
    _, client = owned
    assert "task_id" in assert_error(client.get("/runs?task_id=nope"), 422)["details"]
    assert "start_time" in assert_error(client.get("/runs?start_time=yesterday"), 422)["details"]
    assert "limit" in assert_error(client.get("/runs?limit=0"), 422)["details"]


def test_get_run_includes_output_and_steps(owned):
    task, client = owned
    run = make_run(task, steps=[{"id": "hello", "status": "succeeded", "output": {"x": 1}}])
    body = client.get(f"/runs/{run.id}/").json()
    assert body["output"] == {"ok": True}
    assert body["steps"][0]["id"] == "hello"
    assert_error(client.get(f"/runs/{uuid.uuid4()}"), 404)


def test_latest_is_null_before_first_run_then_the_newest(owned):
    task, client = owned
    response = client.get(f"/runs/task/{task.id}/latest")
    assert response.status_code == 200
    assert response.json() is None
    make_run(task, ago=100)
    newest = make_run(task, ago=1)
    assert client.get(f"/runs/task/{task.id}/latest").json()["id"] == str(newest.id)
    assert_error(client.get(f"/runs/task/{uuid.uuid4()}/latest"), 404)


def test_task_stats(owned):
    task, client = owned
    make_run(task, ago=100, seconds=2)
    make_run(task, ago=50, seconds=4)
    make_run(task, ago=10, seconds=6, status=RunStatus.FAILED)
    make_run(task, ago=40 * 86400)
    body = client.get(f"/runs/task/{task.id}/stats").json()
    assert body["task_id"] == str(task.id)
    assert body["period_days"] == 30
    assert body["total_runs"] == 3
    assert body["successful_runs"] == 2
    assert body["failed_runs"] == 1
    assert body["success_rate"] == 0.667
    assert body["avg_execution_time_seconds"] == 4.0
    assert body["last_failure"] is not None
    assert client.get(f"/runs/task/{task.id}/stats?days=60").json()["total_runs"] == 4
    assert_error(client.get(f"/runs/task/{task.id}/stats?days=0"), 422)


def test_stats_summary_counts_only_own_runs(owned, api):
    task, client = owned
    make_run(task)
    make_run(task, status=RunStatus.FAILED)
    _, other_key = agent_with_key()
    body = client.get("/runs/stats/summary").json()
    assert body["period_days"] == 7
    assert body["total_runs"] == 2
    assert body["total_tasks_executed"] == 1
    assert body["runs_per_day"] == 0.3
    assert api.as_(other_key).get("/runs/stats/summary").json()["total_runs"] == 0


def test_another_agents_runs_are_invisible(owned, api):
    task, _ = owned
    run = make_run(task)
    _, other_key = agent_with_key()
    other = api.as_(other_key)
    assert other.get("/runs").json()["total"] == 0
    assert_error(other.get(f"/runs/{run.id}"), 404)
    assert_error(other.get(f"/runs/task/{task.id}/latest"), 404)
    assert_error(other.get(f"/runs/task/{task.id}/stats"), 404)


def test_runs_need_runs_read_scope(api):
    _, key = agent_with_key(scopes=["tasks:read"])
    assert_error(api.as_(key).get("/runs"), 403)
    assert_error(api.as_(None).get("/runs"), 401)
