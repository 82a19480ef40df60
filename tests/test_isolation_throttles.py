"""Throttles that cannot be turned against an agent: one rule for the client address, no
lockout by others' failures, and MCP tool calls counted like REST requests."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from mcp import Client

from agents.mcp_server import build_server
from agents.throttles import AgentRateThrottle, breaker
from audit.models import AuditEvent
from tests.api_support import (  # noqa: F401 (fixtures)
    agent_with_key,
    api_fixture,
    assert_error,
    fresh_throttles,
    task_body,
)
from tests.factories import make_agent
from tests.test_api_platform import FakeClock, rates

pytestmark = pytest.mark.django_db


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(AgentRateThrottle, "clock", fake)
    # A Redis outage tested elsewhere may have opened the breaker on another clock.
    monkeypatch.setattr(breaker, "_open_until", 0.0)
    return fake


def exchange(api, agent_id, secret, *, address="127.0.0.1", forwarded=None):
    headers = {"REMOTE_ADDR": address}
    if forwarded:
        headers["HTTP_X_FORWARDED_FOR"] = forwarded
    body = {"agent_id": str(agent_id), "agent_secret": secret}
    return api.post("/agents/auth/token", body, **headers)


def test_x_forwarded_for_is_ignored_unless_trusted(api, clock, settings):
    agent, _ = make_agent()
    with rates(auth="2/min"):
        for address in ("198.51.100.1", "198.51.100.2"):
            exchange(api, agent.id, "wrong", forwarded=address)
        # A new X-Forwarded-For does not buy a new window: the socket's address counts.
        assert_error(exchange(api, agent.id, "wrong", forwarded="198.51.100.3"), 429)

        clock.now += 60
        settings.TRUST_X_FORWARDED_FOR = True
        codes = [
            exchange(api, agent.id, "wrong", forwarded=f"198.51.100.{n}").status_code
            for n in range(4, 8)
        ]
        assert codes == [401, 401, 401, 401]  # each forwarded address has its own window


@pytest.mark.parametrize(("trusted", "recorded"), [(False, "127.0.0.9"), (True, "203.0.113.5")])
def test_the_audit_log_records_the_address_the_throttle_counts(api, settings, trusted, recorded):
    settings.TRUST_X_FORWARDED_FOR = trusted
    agent, secret = make_agent()
    exchange(api, agent.id, secret, address="127.0.0.9", forwarded="203.0.113.5")
    event = AuditEvent.objects.filter(action="agent.authenticated").latest("at")
    assert event.details["ip"] == recorded


def test_others_failures_never_lock_out_the_correct_secret(api, clock):
    agent, secret = make_agent()
    with rates(auth="100/min", auth_failures="3/min"):
        codes = [
            exchange(api, agent.id, "wrong", address=f"127.0.0.{n}").status_code
            for n in range(10, 16)
        ]
        # Past three refusals a wrong secret is 429 from any address ...
        assert codes == [401, 401, 401, 429, 429, 429]
        # ... and the agent's own, correct secret still works.
        good = exchange(api, agent.id, secret, address="127.0.0.99")
        assert good.status_code == 200, good.content


def test_a_correct_secret_does_not_use_up_the_failure_budget(api, clock):
    agent, secret = make_agent()
    with rates(auth="100/min", auth_failures="1/min"):
        assert [exchange(api, agent.id, secret).status_code for _ in range(3)] == [200] * 3
        assert exchange(api, agent.id, "wrong").status_code == 401


def mcp_calls(key, calls):
    async def scenario():
        async with Client(build_server(stdio_token=key)) as client:
            return [await client.call_tool(tool, arguments) for tool, arguments in calls]

    return async_to_sync(scenario)()


def test_mcp_tool_calls_pass_the_same_throttle_and_say_when_to_retry(api, clock):
    _, key = agent_with_key()
    with rates(reads="2/min", tasks="1/min"):
        results = mcp_calls(key, [("list_tasks", {})] * 3)
        assert [r.is_error for r in results] == [False, False, True]
        text = results[2].content[0].text
        assert "429 throttled" in text
        assert "retry_after" in text
        # REST and MCP share the window: the agent is over its reads limit for both.
        assert_error(api.as_(key).get("/tasks"), 429)

        created = mcp_calls(
            key,
            [("create_task", {"title": "t", "schedule_kind": "once",
                              "schedule_expr": "2099-01-01T00:00:00Z",
                              "payload": task_body()["payload"]})] * 2,
        )  # fmt: skip
        assert [r.is_error for r in created] == [False, True]
        # Another agent is not affected.
        _, other_key = agent_with_key()
        assert not mcp_calls(other_key, [("list_tasks", {})])[0].is_error
