"""The MCP client against a real MCP server (tests/mcp_test_server.py) over stdio and HTTP."""

from __future__ import annotations

import io
import os
import signal
import time

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from ordinaut.embedded import free_port
from ordinaut.errors import InvalidInput
from pipelines import mcp_client
from pipelines.executor import execute
from pipelines.models import McpServer
from pipelines.registry import get_tool, list_tools
from pipelines.validation import validate_payload
from tasks.models import Run, RunStatus
from tests.factories import make_agent, make_task
from tests.mcp_fixtures import HttpMcpServer, register_stdio_server
from tests.test_pipeline_executor import finish_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def stdio_server() -> McpServer:
    return register_stdio_server("brief")


@pytest.fixture(scope="module")
def http_server():
    server = HttpMcpServer(free_port()).start()
    yield server
    server.stop()


def run_step(step: dict, *, server: str = "brief"):
    """Execute a one-step pipeline as an agent holding the server's scope; return (run, result)."""
    agent, _ = make_agent(scopes=[f"mcp:{server}"])
    task = make_task(agent, payload={"pipeline": [step]})
    run = Run.objects.create(
        task=task, scheduled_for=timezone.now(), status=RunStatus.RUNNING, correlation_id="c-mcp"
    )
    result = execute(run)
    finish_run(run, result)
    run.refresh_from_db()
    return run, result


def whoami(server: str = "brief") -> int:
    _, result = run_step({"id": "who", "uses": f"mcp.{server}.whoami"}, server=server)
    assert result.status == "succeeded", result.error
    return result.output["steps"]["who"]["pid"]


# -- stdio ------------------------------------------------------------------------------------


def test_stdio_discovery_keeps_input_and_output_schemas(stdio_server):
    tools = {tool["name"]: tool for tool in stdio_server.tools}
    assert {"list_events", "forecast", "notify", "fail", "slow", "crash"} <= set(tools)
    assert tools["forecast"]["input_schema"]["required"] == ["city"]
    assert set(tools["forecast"]["output_schema"]["required"]) == {
        "city", "temperature_c", "summary",
    }  # fmt: skip
    names = [tool.name for tool in list_tools()]
    assert "mcp.brief.forecast" in names
    assert "debug.echo" in names
    spec = get_tool("mcp.brief.forecast")
    assert spec.required_scope == "mcp:brief"


def test_stdio_call_returns_structured_content(stdio_server):
    _, result = run_step({"id": "w", "uses": "mcp.brief.forecast", "with": {"city": "Chisinau"}})
    assert result.status == "succeeded", result.error
    assert result.output["steps"]["w"] == {
        "city": "Chisinau", "temperature_c": 21.5, "summary": "sunny",
    }  # fmt: skip


def test_text_only_result_is_the_text(stdio_server):
    _, result = run_step({"id": "s", "uses": "mcp.brief.shout", "with": {"text": "hi"}})
    assert result.output["steps"]["s"] == "HI"


def test_input_is_checked_against_the_discovered_schema(stdio_server):
    _, result = run_step({"id": "w", "uses": "mcp.brief.forecast", "with": {"town": "X"}})
    assert result.status == "failed"
    assert result.retryable is False
    assert "input does not match mcp.brief.forecast: city: required" in result.error


def test_output_is_checked_against_the_discovered_schema(stdio_server):
    # The stored schema is stricter than what the server now returns (a changed server).
    tools = [dict(tool) for tool in stdio_server.tools]
    for tool in tools:
        if tool["name"] == "forecast":
            tool["output_schema"] = {**tool["output_schema"], "required": ["humidity"]}
    McpServer.objects.filter(pk=stdio_server.pk).update(tools=tools)
    _, result = run_step({"id": "w", "uses": "mcp.brief.forecast", "with": {"city": "X"}})
    assert result.status == "failed"
    assert "output does not match mcp.brief.forecast: humidity: required" in result.error


def test_error_result_fails_the_step_with_the_tools_message(stdio_server):
    step = {"id": "f", "uses": "mcp.brief.fail", "with": {"message": "calendar is down"}}
    run, result = run_step(step)
    assert result.status == "failed"
    assert "step 'f' (mcp.brief.fail) failed: " in result.error
    assert "calendar is down" in result.error
    assert "correlation id c-mcp" in run.steps[0]["error"]


def test_call_timeout_fails_the_step_and_the_connection_survives(stdio_server):
    step = {"id": "s", "uses": "mcp.brief.slow", "with": {"seconds": 5}, "timeout_seconds": 0.5}
    started = time.monotonic()
    _, result = run_step(step)
    assert time.monotonic() - started < 3
    assert result.status == "failed"
    assert "timed out after 0.5s" in result.error
    assert whoami() > 0


def test_stdio_server_is_pooled_not_spawned_per_call(stdio_server):
    assert whoami() == whoami()
    assert mcp_client.connection_count() >= 1


def test_crashed_stdio_server_is_restarted_on_next_use(stdio_server):
    before = whoami()
    _, crashed = run_step({"id": "c", "uses": "mcp.brief.crash"})
    assert crashed.status == "failed"
    assert crashed.retryable is True
    after = whoami()
    assert after != before


def test_stdio_server_killed_while_idle_is_restarted_transparently(stdio_server):
    before = whoami()
    os.kill(before, signal.SIGKILL)
    time.sleep(0.5)
    assert whoami() != before


@pytest.fixture
def fresh_rediscovery():
    """No rediscovery of any server happened in the last minute."""
    from django.core.cache import cache

    from pipelines.registry import REDISCOVERY_KEY

    def clear() -> None:
        for server in McpServer.objects.all():
            cache.delete(f"{REDISCOVERY_KEY}:{server.pk}")

    clear()
    yield clear
    clear()


def test_validating_never_starts_a_stdio_server_the_worker_rediscovers(
    stdio_server, fresh_rediscovery
):
    McpServer.objects.filter(pk=stdio_server.pk).update(tools=[])
    payload = {"pipeline": [{"id": "w", "uses": "mcp.brief.forecast", "with": {"city": "X"}}]}
    with pytest.raises(InvalidInput, match="has no tool 'forecast'"):
        validate_payload(payload)
    assert McpServer.objects.get(pk=stdio_server.pk).tools == []  # nothing was spawned
    # The worker may start it: the step's unknown tool makes it rediscover once.
    _, result = run_step({"id": "w", "uses": "mcp.brief.forecast", "with": {"city": "X"}})
    assert result.status == "succeeded", result.error
    assert "forecast" in McpServer.objects.get(pk=stdio_server.pk).tool_names()


def test_an_unknown_tool_rediscovers_its_server_at_most_once_a_minute(
    stdio_server, fresh_rediscovery
):
    from audit.models import AuditEvent

    McpServer.objects.filter(pk=stdio_server.pk).update(tools=[])
    before = AuditEvent.objects.filter(action="mcp_server.discovered").count()
    for _ in range(5):
        get_tool_or_none("mcp.brief.does_not_exist")
    assert AuditEvent.objects.filter(action="mcp_server.discovered").count() == before + 1


def get_tool_or_none(name: str):
    from pipelines.registry import UnknownTool

    try:
        return get_tool(name)
    except UnknownTool:
        return None


def test_unknown_tool_of_a_known_server_lists_its_tools(stdio_server):
    payload = {"pipeline": [{"id": "w", "uses": "mcp.brief.nope"}]}
    with pytest.raises(Exception, match=r"has no tool 'nope' \(tools: list_events, forecast"):
        validate_payload(payload)


def test_original_style_server_dot_tool_name_resolves(stdio_server):
    _, result = run_step({"id": "w", "uses": "brief.forecast", "with": {"city": "X"}})
    assert result.status == "succeeded", result.error


def test_disabled_server_tools_leave_the_registry(stdio_server):
    McpServer.objects.filter(pk=stdio_server.pk).update(enabled=False)
    assert not any(tool.name.startswith("mcp.brief.") for tool in list_tools())
    _, result = run_step({"id": "w", "uses": "mcp.brief.forecast", "with": {"city": "X"}})
    assert "MCP server 'brief' is disabled" in result.error


def test_addmcpserver_registers_a_stdio_server_and_discovers_it():
    from tests.mcp_fixtures import SERVER_SCRIPT

    out = io.StringIO()
    call_command(
        "addmcpserver", "brief", "--command", os.sys.executable, "--arg", str(SERVER_SCRIPT),
        stdout=out,
    )  # fmt: skip
    server = McpServer.objects.get(name="brief")
    assert server.enabled
    assert server.transport == "stdio"
    assert "mcp.brief.forecast" in out.getvalue()
    assert "forecast" in server.tool_names()


def test_addmcpserver_takes_dashed_args_and_a_command_with_spaces():
    from tests.mcp_fixtures import SERVER_SCRIPT

    call_command(
        "addmcpserver", "dashed", "--command", os.sys.executable, "--arg", "-X", "--arg", "utf8",
        "--arg", str(SERVER_SCRIPT), stdout=io.StringIO(),
    )  # fmt: skip
    call_command(
        "addmcpserver", "spaced", "--command", f"{os.sys.executable} -X utf8",
        "--arg", str(SERVER_SCRIPT), stdout=io.StringIO(),
    )  # fmt: skip

    for name in ("dashed", "spaced"):
        server = McpServer.objects.get(name=name)
        assert server.command == os.sys.executable
        assert server.args == ["-X", "utf8", str(SERVER_SCRIPT)]
        assert "forecast" in server.tool_names()  # it really started with those arguments
    with pytest.raises(CommandError, match="No closing quotation"):
        call_command("addmcpserver", "bad", "--command", "npx 'unbalanced", stdout=io.StringIO())
    assert not McpServer.objects.filter(name="bad").exists()


def test_addmcpserver_disables_a_server_whose_discovery_failed():
    with pytest.raises(CommandError, match="saved DISABLED") as failed:
        call_command("addmcpserver", "broken", "--command", "false", stdout=io.StringIO())

    server = McpServer.objects.get(name="broken")
    assert server.enabled is False
    assert "discovery failed" in str(failed.value)


def test_secrets_in_server_settings_are_resolved_only_when_connecting(monkeypatch):
    from audit.services import Actor
    from pipelines.services import mcp_server_upsert

    monkeypatch.setenv("ORDINAUT_SECRET_MCP_TOKEN", "tok-abcdef")
    server, _ = mcp_server_upsert(
        name="remote",
        actor=Actor.system("tests"),
        url="https://mcp.example.com/mcp",
        headers={"Authorization": "Bearer ${secrets.MCP_TOKEN}"},
    )
    server.refresh_from_db()
    assert server.headers == {"Authorization": "Bearer ${secrets.MCP_TOKEN}"}
    config = mcp_client.ServerConfig.from_server(server)
    assert dict(config.headers) == {"Authorization": "Bearer tok-abcdef"}


# -- streamable HTTP ------------------------------------------------------------------------


def test_http_server_discovery_and_call(http_server):
    out = io.StringIO()
    call_command(
        "addmcpserver", "remote", "--url", http_server.url, "--header", "X-Test=1", stdout=out
    )
    server = McpServer.objects.get(name="remote")
    assert server.transport == "http"
    assert server.headers == {"X-Test": "1"}
    assert "forecast" in server.tool_names()
    step = {"id": "w", "uses": "mcp.remote.forecast", "with": {"city": "Iasi"}}
    _, result = run_step(step, server="remote")
    assert result.status == "succeeded", result.error
    assert result.output["steps"]["w"]["city"] == "Iasi"


def test_http_error_result_and_timeout(http_server):
    call_command("addmcpserver", "remote", "--url", http_server.url, stdout=io.StringIO())
    step = {"id": "f", "uses": "mcp.remote.fail", "with": {"message": "quota exceeded"}}
    _, failed = run_step(step, server="remote")
    assert "(mcp.remote.fail) failed: " in failed.error
    assert "quota exceeded" in failed.error
    slow = {"id": "s", "uses": "mcp.remote.slow", "with": {"seconds": 5}, "timeout_seconds": 0.5}
    _, timed_out = run_step(slow, server="remote")
    assert "timed out after 0.5s" in timed_out.error
    assert whoami("remote") == http_server.process.pid


def test_http_server_crash_and_restart():
    server = HttpMcpServer(free_port()).start()
    try:
        call_command("addmcpserver", "flaky", "--url", server.url, stdout=io.StringIO())
        first = whoami("flaky")
        server.stop()
        _, lost = run_step({"id": "who", "uses": "mcp.flaky.whoami"}, server="flaky")
        assert lost.status == "failed"
        server.start()
        assert whoami("flaky") == server.process.pid != first
    finally:
        server.stop()


# -- who may use and configure a server -------------------------------------------------------


def test_one_tool_can_be_granted_without_the_rest_of_its_server(stdio_server):
    forecast = {"id": "w", "uses": "mcp.brief.forecast", "with": {"city": "X"}}
    notify = {"id": "n", "uses": "mcp.brief.notify", "with": {"message": "hi"}}
    assert validate_payload({"pipeline": [forecast]}, scopes=["mcp:brief:forecast"])
    with pytest.raises(InvalidInput) as refused:
        validate_payload({"pipeline": [notify]}, scopes=["mcp:brief:forecast"])
    reason = refused.value.details["payload.pipeline[0].uses"][0]
    assert "'mcp:brief'" in reason
    assert "'mcp:brief:notify'" in reason
    assert get_tool("mcp.brief.forecast").describe()["tool_scope"] == "mcp:brief:forecast"


def test_a_server_saved_without_a_scope_needs_mcp_name():
    from audit.services import Actor
    from pipelines.services import mcp_server_upsert

    server, _ = mcp_server_upsert(
        name="open", actor=Actor.system("t"), url="http://127.0.0.1:9/mcp", required_scope=""
    )
    assert server.required_scope == "mcp:open"


def test_only_superusers_configure_mcp_servers(client, stdio_server):
    from django.contrib.auth.models import Permission, User

    staff = User.objects.create_user("ops", password="pw-for-tests", is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(content_type__model="mcpserver"))
    client.force_login(staff)
    assert client.get("/admin/pipelines/mcpserver/add/").status_code == 403
    change = client.post(
        f"/admin/pipelines/mcpserver/{stdio_server.pk}/change/", {"command": "rm -rf /"}
    )
    assert change.status_code == 403
    assert McpServer.objects.get(pk=stdio_server.pk).command != "rm -rf /"

    root = User.objects.create_superuser("root", password="pw-for-tests")
    client.force_login(root)
    assert client.get("/admin/pipelines/mcpserver/add/").status_code == 200
