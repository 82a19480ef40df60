"""'Why didn't it run?': the occurrence ledger over REST (GET /tasks/{id}/ledger) and MCP."""

from __future__ import annotations

from datetime import UTC, timedelta

import pytest
from django.utils import timezone

from tasks.models import Task
from tests.api_support import (  # noqa: F401 (fixtures)
    agent_with_key,
    api_fixture,
    api_key_for,
    assert_error,
    fresh_throttles,
    task_body,
)
from tests.factories import make_agent, make_occurrence
from tests.test_mcp_server import error_text, in_process, structured

pytestmark = pytest.mark.django_db


def paused_task_with_two_skipped_instants(client):
    """A task whose two queued occurrences a pause dropped into the ledger."""
    created = client.post("/tasks", task_body())
    assert created.status_code == 201, created.content
    task_id = created.json()["id"]
    task = Task.objects.get(pk=task_id)
    soon = timezone.now().replace(microsecond=0) + timedelta(minutes=5)
    earlier, later = (
        make_occurrence(task, at=soon),
        make_occurrence(task, at=soon + timedelta(hours=1)),
    )
    assert client.post(f"/tasks/{task_id}/pause").status_code == 200
    return task_id, earlier.scheduled_for, later.scheduled_for


def test_the_ledger_lists_what_a_pause_skipped_newest_first(api):
    _, key = agent_with_key()
    client = api.as_(key)
    task_id, earlier, later = paused_task_with_two_skipped_instants(client)

    response = client.get(f"/tasks/{task_id}/ledger")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["total"] == 2
    assert body["has_more"] is False
    first, second = body["items"]
    assert first["scheduled_for"] == later.astimezone(UTC).isoformat()
    assert second["scheduled_for"] == earlier.astimezone(UTC).isoformat()
    assert {first["reason"], second["reason"]} == {"paused"}
    # Given up before it was due: negative lateness, the later instant more so.
    assert first["lateness_seconds"] < second["lateness_seconds"] < 0
    assert first["recorded_at"]
    assert set(first) == {"scheduled_for", "reason", "lateness_seconds", "details", "recorded_at"}

    paged = client.get(f"/tasks/{task_id}/ledger?limit=1&offset=1").json()
    assert paged["total"] == 2
    assert paged["has_more"] is False
    assert paged["items"] == [second]


def test_the_ledger_is_the_owners_and_needs_tasks_read(api):
    _, key = agent_with_key()
    task_id, _, _ = paused_task_with_two_skipped_instants(api.as_(key))
    _, other_key = agent_with_key()
    _, writer_only = agent_with_key(scopes=["tasks:write"])

    assert_error(api.as_(other_key).get(f"/tasks/{task_id}/ledger"), 404, "not_found")
    assert_error(api.as_(writer_only).get(f"/tasks/{task_id}/ledger"), 403, "forbidden")
    assert_error(api.as_(key).get(f"/tasks/{task_id}/ledger?limit=0"), 422)


def test_the_same_ledger_over_mcp(api):
    agent, key = agent_with_key()
    task_id, _, later = paused_task_with_two_skipped_instants(api.as_(key))
    stranger, _ = make_agent(scopes=["tasks:read"])

    async def scenario(client):
        return structured(
            await client.call_tool("get_task_ledger", {"task_id": task_id, "limit": 1})
        )

    async def peek(client):
        return error_text(await client.call_tool("get_task_ledger", {"task_id": task_id}))

    page = in_process(api_key_for(agent), scenario)
    assert page["total"] == 2
    assert page["has_more"] is True
    assert page["items"][0]["reason"] == "paused"
    assert page["items"][0]["scheduled_for"] == later.astimezone(UTC).isoformat()
    assert in_process(api_key_for(stranger), peek).startswith("404 not_found")
