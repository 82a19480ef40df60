"""Ordinaut's MCP server, driven by the official `mcp` SDK client: in-process, stdio and HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from agents.mcp_server import build_server
from audit.models import AuditEvent
from ordinaut.embedded import free_port
from tasks.models import Run, Task
from tests.api_support import api_key_for, task_body
from tests.conftest import ROOT, command_env
from tests.factories import make_agent, make_task

SCOPES = ["tasks:read", "tasks:write", "runs:read", "tools:read"]
EXPECTED_TOOLS = {
    "create_task", "list_tasks", "get_task", "update_task", "pause_task", "resume_task",
    "cancel_task", "run_task_now", "preview_schedule", "list_runs", "get_run",
    "publish_event", "list_tools", "decide_approval", "list_approvals", "snooze_task",
    "get_task_ledger", "get_latest_run", "get_task_stats", "get_runs_summary",
}  # fmt: skip


def structured(result):
    assert not result.is_error, result.content
    if result.structured_content is not None:
        payload = result.structured_content
        return payload.get("result", payload) if set(payload) == {"result"} else payload
    return json.loads(result.content[0].text)


def error_text(result):
    """The tool error's own message, without the SDK's "Error executing tool X: " prefix."""
    assert result.is_error
    text = result.content[0].text
    return text.split(": ", 1)[1] if text.startswith("Error executing tool") else text


def in_process(token, scenario):
    """Run `scenario(client)` against an in-process server (same DB connection as the test)."""

    async def main():
        async with Client(build_server(stdio_token=token)) as client:
            return await scenario(client)

    return async_to_sync(main)()


@pytest.mark.django_db
def test_tools_have_input_schemas_and_cover_the_api():
    agent, _ = make_agent(scopes=SCOPES)

    async def scenario(client):
        return (await client.list_tools()).tools

    tools = {tool.name: tool for tool in in_process(api_key_for(agent), scenario)}
    assert set(tools) >= EXPECTED_TOOLS
    schema = tools["create_task"].input_schema
    assert {"title", "schedule_kind", "payload"} <= set(schema["required"])
    assert tools["create_task"].output_schema is not None


@pytest.mark.django_db
def test_create_list_pause_and_audit_through_mcp():
    agent, _ = make_agent(scopes=SCOPES)
    key = api_key_for(agent)
    body = task_body()

    async def scenario(client):
        created = structured(await client.call_tool("create_task", body))
        listed = structured(await client.call_tool("list_tasks", {"status": "active"}))
        paused = structured(
            await client.call_tool("pause_task", {"task_id": created["task"]["id"]})
        )
        return created, listed, paused

    created, listed, paused = in_process(key, scenario)
    assert created["created"] is True
    assert created["task"]["created_by"] == str(agent.id)
    assert listed["total"] == 1
    assert paused["status"] == "paused"
    task_id = created["task"]["id"]
    actions = set(AuditEvent.objects.filter(subject_id=task_id).values_list("action", flat=True))
    assert {"task.created", "task.paused"} <= actions
    event = AuditEvent.objects.get(action="task.created", subject_id=task_id)
    assert event.actor_id == str(agent.id)
    assert event.correlation_id


@pytest.mark.django_db
def test_mcp_enforces_scopes_ownership_and_validation():
    reader, _ = make_agent(scopes=["tasks:read"])
    owner, _ = make_agent(scopes=SCOPES)
    task = make_task(owner)

    async def scenario(client):
        return (
            error_text(await client.call_tool("create_task", task_body())),
            error_text(await client.call_tool("get_task", {"task_id": str(task.id)})),
            error_text(
                await client.call_tool(
                    "preview_schedule", {"schedule_kind": "cron", "schedule_expr": "nope"}
                )
            ),
        )

    missing_scope, other_task, invalid = in_process(api_key_for(reader), scenario)
    assert missing_scope.startswith("403 forbidden")
    assert other_task.startswith("404 not_found")
    assert invalid.startswith("422 validation_error")
    assert Task.objects.count() == 1


@pytest.mark.django_db
def test_bad_token_is_refused():
    async def scenario(client):
        return error_text(await client.call_tool("list_tasks", {}))

    assert in_process("ord_k_0000000000000000_nope", scenario).startswith("401")
    assert in_process(None, scenario).startswith("401")


@pytest.mark.django_db
def test_preview_resources_and_prompt():
    agent, _ = make_agent(scopes=SCOPES)
    task = make_task(agent)
    run = Run.objects.create(
        task=task, scheduled_for=task.created_at, attempt=1, status="succeeded",
        finished_at=task.created_at, started_at=task.created_at, output={"answer": 42},
    )  # fmt: skip

    async def scenario(client):
        preview = structured(
            await client.call_tool(
                "preview_schedule",
                {
                    "schedule_kind": "cron",
                    "schedule_expr": "0 9 * * *",
                    "n": 3,
                    "timezone": "Europe/Chisinau",
                },
            )
        )
        task_doc = await client.read_resource(f"ordinaut://tasks/{task.id}")
        run_doc = await client.read_resource(f"ordinaut://runs/{run.id}")
        got_run = structured(await client.call_tool("get_run", {"run_id": str(run.id)}))
        prompt = await client.get_prompt(
            "schedule_recurring_task", {"goal": "send a digest", "schedule": "weekdays at 8"}
        )
        return preview, task_doc, run_doc, got_run, prompt

    preview, task_doc, run_doc, got_run, prompt = in_process(api_key_for(agent), scenario)
    assert len(preview["occurrences"]) == 3
    assert preview["occurrences"][0]["local"][11:16] == "09:00"
    assert json.loads(task_doc.contents[0].text)["id"] == str(task.id)
    assert json.loads(run_doc.contents[0].text)["output"] == {"answer": 42}
    assert got_run["output"] == {"answer": 42}
    assert "preview_schedule" in prompt.messages[0].content.text


def mcp_env(url, **extra):
    return command_env(
        DEBUG="0", SECRET_KEY=settings.SECRET_KEY, DATABASE_URL=url, REDIS_URL="",
        LOG_LEVEL="WARNING", **extra,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_stdio_transport_with_token_from_environment(test_database_url):
    agent, _ = make_agent(scopes=SCOPES)
    key = api_key_for(agent)
    params = StdioServerParameters(
        command=sys.executable,
        args=[str(ROOT / "manage.py"), "runmcp", "--transport", "stdio"],
        env=mcp_env(test_database_url, ORDINAUT_TOKEN=key),
        cwd=str(ROOT),
    )

    async def main():
        async with Client(params, read_timeout_seconds=60) as client:
            created = structured(await client.call_tool("create_task", task_body()))
            got = structured(await client.call_tool("get_task", {"task_id": created["task"]["id"]}))
            return created, got

    created, got = async_to_sync(main)()
    assert got["id"] == created["task"]["id"]
    assert Task.objects.get(pk=got["id"]).created_by_id == agent.id


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_streamable_http_transport_with_bearer_header(test_database_url):
    agent, secret = make_agent(scopes=SCOPES)
    from tests.api_support import jwt_for

    access, _ = jwt_for(agent, secret)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "runmcp", "--transport", "http",
         "--port", str(port)],
        env=mcp_env(test_database_url), cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/mcp"

    async def call(token, tool, arguments):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = streamable_http_client(url, http_client=create_mcp_http_client(headers=headers))
        async with Client(transport) as client:
            return await client.call_tool(tool, arguments)

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                created = async_to_sync(call)(access, "create_task", task_body())
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.3)
        task = structured(created)["task"]
        listed = structured(async_to_sync(call)(access, "list_tasks", {}))
        accepted = initialize(url, access)
        refused = initialize(url, None)
        agent_id_token = initialize(url, str(agent.id))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert listed["items"][0]["id"] == task["id"]
    assert accepted.status_code == 200
    # Refused at `initialize`, before any session exists, in REST's error envelope.
    for response in (refused, agent_id_token):
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["error"]["code"] == "authentication_failed"
    assert "Authorization: Bearer" in refused.json()["error"]["message"]


def initialize(url: str, token: str | None) -> httpx.Response:
    """The MCP `initialize` request as a client's first POST."""
    headers = {"Accept": "application/json, text/event-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = {
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "test", "version": "1"}},
    }  # fmt: skip
    return httpx.post(url, json=body, headers=headers, timeout=10)


# -- parity with REST (#24) ----------------------------------------------------------------


@pytest.mark.django_db
def test_create_task_takes_every_rest_field_and_refuses_unknown_arguments():
    agent, _ = make_agent(scopes=SCOPES)
    body = task_body(
        misfire_policy="skip", timeout_seconds=90, backoff_strategy="fixed",
        concurrency_key="mail", dedupe_key="d-1", dedupe_window_seconds=60, max_retries=2,
        priority=7, description="every field", timezone="Europe/Chisinau",
    )  # fmt: skip

    async def scenario(client):
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        created = structured(await client.call_tool("create_task", body))
        typo = await client.call_tool("create_task", {**task_body(), "misfire_polcy": "skip"})
        bad_change = await client.call_tool(
            "update_task", {"task_id": created["task"]["id"], "changes": {"colour": "red"}}
        )
        return tools, created, typo, bad_change

    tools, created, typo, bad_change = in_process(api_key_for(agent), scenario)
    schema = tools["create_task"].input_schema
    assert {"misfire_policy", "timeout_seconds", "backoff_strategy", "created_by"} <= set(
        schema["properties"]
    )
    assert schema["additionalProperties"] is False
    task = created["task"]
    for field in ("misfire_policy", "timeout_seconds", "backoff_strategy", "concurrency_key",
                  "dedupe_key", "max_retries", "priority", "description", "timezone"):  # fmt: skip
        assert task[field] == body[field], field
    assert typo.is_error
    assert "misfire_polcy" in typo.content[0].text
    assert error_text(bad_change).startswith("422 validation_error")
    assert "colour" in error_text(bad_change)
    assert Task.objects.count() == 1


@pytest.mark.django_db
def test_omitted_create_fields_get_rests_defaults():
    agent, _ = make_agent(scopes=SCOPES)

    async def scenario(client):
        return structured(await client.call_tool("create_task", task_body()))["task"]

    task = in_process(api_key_for(agent), scenario)
    assert task["misfire_policy"] == "coalesce"
    assert task["backoff_strategy"] == "exponential_jitter"
    assert task["priority"] == 5
    assert task["timezone"] == settings.TIME_ZONE


@pytest.mark.django_db
def test_preview_schedule_takes_after_and_flags_dst():
    agent, _ = make_agent(scopes=SCOPES)
    arguments = {"schedule_kind": "cron", "schedule_expr": "30 2 * * *", "n": 3,
                 "timezone": "America/New_York", "after": "2025-03-07T12:00:00Z"}  # fmt: skip

    async def scenario(client):
        return structured(await client.call_tool("preview_schedule", arguments))

    preview = in_process(api_key_for(agent), scenario)
    occurrences = preview["occurrences"]
    assert [o["dst_shifted"] for o in occurrences] == [False, True, False]
    assert occurrences[1]["local"] == "2025-03-09T03:00:00-04:00"


@pytest.mark.django_db
def test_snooze_latest_run_and_stats_tools():
    agent, _ = make_agent(scopes=SCOPES)
    task = make_task(agent)

    async def before_any_run(client):
        latest = structured(await client.call_tool("get_latest_run", {"task_id": str(task.id)}))
        snoozed = structured(
            await client.call_tool(
                "snooze_task", {"task_id": str(task.id), "delay_seconds": 600, "reason": "meeting"}
            )
        )
        too_long = await client.call_tool(
            "snooze_task", {"task_id": str(task.id), "delay_seconds": 10**7}
        )
        return latest, snoozed, too_long

    latest, snoozed, too_long = in_process(api_key_for(agent), before_any_run)
    assert latest == {"run": None}
    assert snoozed["task_id"] == str(task.id)
    assert snoozed["delay_seconds"] == 600
    assert snoozed["snoozed_until"]
    assert error_text(too_long).startswith('422 validation_error: {"delay_seconds": ["Ensure')
    assert AuditEvent.objects.filter(action="task.snoozed", subject_id=str(task.id)).exists()

    finished = task.created_at
    Run.objects.create(
        task=task, scheduled_for=finished, attempt=1, status="failed",
        started_at=finished, finished_at=finished, error="boom",
    )  # fmt: skip

    async def after_a_run(client):
        return (
            structured(await client.call_tool("get_latest_run", {"task_id": str(task.id)})),
            structured(await client.call_tool("get_task_stats", {"task_id": str(task.id)})),
            structured(await client.call_tool("get_runs_summary", {"days": 1})),
            await client.call_tool("get_runs_summary", {"days": 0}),
        )

    latest, stats, summary, bad_days = in_process(api_key_for(agent), after_a_run)
    assert latest["run"]["error"] == "boom"
    assert stats["task_id"] == str(task.id)
    assert stats["total_runs"] == 1
    assert stats["failed_runs"] == 1
    assert summary["total_runs"] == 1
    assert error_text(bad_days).startswith("422 validation_error")
