"""Several agents against a running stack — gunicorn, runscheduler and runworker processes
on the test PostgreSQL and Redis — over plain HTTP, as an operator would check that no
agent can harm another."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from django.conf import settings

from ordinaut.embedded import free_port
from tests.conftest import ROOT, command_env, processes, run_manage, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

BASE_SCOPES = "tasks:read,tasks:write,runs:read,events:publish"
ECHO = {"pipeline": [{"id": "echo", "uses": "debug.echo", "with": {"got": "${event.topic}"}}]}


class Http:
    """JSON over HTTP to the stack, as an agent holding `token`."""

    def __init__(self, base: str, token: str | None = None) -> None:
        self.base, self.token = base, token

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        # Bytes go as they are: JSON that Python would not write (1e400) is tested too.
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)  # noqa: S310 (http to loopback)
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback)
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.call(method, path, body)
        assert 200 <= status < 300, (method, path, status, answer)
        return answer


@pytest.fixture
def stack(test_database_url):
    port = free_port()
    env = command_env(
        DEBUG="0", SECRET_KEY=settings.SECRET_KEY, DATABASE_URL=test_database_url,
        REDIS_URL=settings.REDIS_URL, LOG_LEVEL="WARNING", SCHEDULER_POLL_INTERVAL="0.2",
    )  # fmt: skip
    commands = [
        [sys.executable, "-m", "gunicorn", "ordinaut.wsgi", "-b", f"127.0.0.1:{port}",
         "--workers", "1", "--threads", "4"],
        [sys.executable, str(ROOT / "manage.py"), "runscheduler"],
        [sys.executable, str(ROOT / "manage.py"), "runworker", "--concurrency", "4"],
        [sys.executable, str(ROOT / "manage.py"), "runworker", "--concurrency", "4"],
    ]  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def agent(name: str, scopes: str) -> tuple[dict, Http]:
        done = run_manage("createagent", name, "--scopes", scopes, "--json", env=env)
        assert done.returncode == 0, done.stderr
        made = json.loads(done.stdout)
        pair = Http(base).ok(
            "POST", "/agents/auth/token", {"agent_id": made["id"], "agent_secret": made["secret"]}
        )
        return made, Http(base, pair["access_token"])

    with processes(commands, env) as running:
        wait_for(lambda: _up(base), 30, f"web did not come up\n{running.output()}")
        yield agent, running.started, running.output


def _up(base: str) -> bool:
    try:
        return Http(base).call("GET", "/health/live")[0] == 200
    except urllib.error.URLError:
        return False


def runs_of(client: Http, task_id: str) -> list[dict]:
    return client.ok("GET", f"/runs?task_id={task_id}&limit=50")["items"]


def eventually(predicate, message: str, timeout: float = 20) -> None:
    wait_for(predicate, timeout, message)


def test_agents_cannot_harm_each_other_on_a_running_stack(stack):
    agent, started, server_log = stack
    _, alice_api = agent("alice", BASE_SCOPES)
    bob, bob_api = agent("bob", "tasks:read,tasks:write,runs:read")
    _, admin = agent("operator", "admin")
    _, approver = agent("approver", "approvals:decide")

    # 1. Another agent's event triggers nothing until bob subscribes.
    bobs = bob_api.ok("POST", "/tasks", {
        "title": "on paid", "schedule_kind": "event", "schedule_expr": "orders.*",
        "payload": ECHO})["id"]  # fmt: skip
    alice_api.ok("POST", "/events", {"topic": "orders.paid", "payload": {}})
    time.sleep(2)  # the workers poll every half second: time enough to run it if queued
    assert runs_of(bob_api, bobs) == []
    admin.ok(
        "PATCH",
        f"/agents/{bob['id']}",
        {"scopes": ["tasks:read", "tasks:write", "runs:read", "events:subscribe:orders.*"]},
    )
    alice_api.ok("POST", "/events", {"topic": "orders.paid", "payload": {}})
    eventually(lambda: [r["status"] for r in runs_of(bob_api, bobs)] == ["succeeded"],
               f"bob's task did not run once subscribed\n{server_log()}")  # fmt: skip

    # 2. A secret without its scope is a 422.
    status, answer = alice_api.call("POST", "/tasks", {
        "title": "leak", "schedule_kind": "event", "schedule_expr": "x",
        "payload": {"pipeline": [{"id": "a", "uses": "debug.echo",
                                  "with": {"t": "${secrets.SLACK_TOKEN}"}}]}})  # fmt: skip
    assert status == 422, answer
    assert "secrets:slack_token" in json.dumps(answer)

    # 3. expires_in_seconds 1e400 is a 422, and the workers stay up.
    status, answer = alice_api.call("POST", "/tasks", (
        b'{"title": "t", "schedule_kind": "event", "schedule_expr": "y", "payload": '
        b'{"pipeline": [{"id": "ask", "uses": "approval.request", "with": '
        b'{"prompt": "ok?", "expires_in_seconds": 1e400}}]}}'))  # fmt: skip
    assert status == 422, answer
    assert all(process.poll() is None for process in started), server_log()

    # 4. Two agents' tasks with the same concurrency_key run at the same time.
    sleepy = {"pipeline": [{"id": "hold", "uses": "debug.sleep", "with": {"seconds": 2}}]}
    pair = []
    for client in (alice_api, bob_api):
        task = client.ok("POST", "/tasks", {
            "title": "mail", "schedule_kind": "event", "schedule_expr": "never.*",
            "concurrency_key": "email", "payload": sleepy})["id"]  # fmt: skip
        pair.append((client, task))
    for client, task in pair:
        client.ok("POST", f"/tasks/{task}/run_now")
    eventually(
        lambda: all([r["status"] for r in runs_of(c, t)] == ["succeeded"] for c, t in pair),
        f"the email tasks did not both finish\n{server_log()}",
    )
    (first,), (second,) = (runs_of(c, t) for c, t in pair)
    assert first["started_at"] < second["finished_at"]
    assert second["started_at"] < first["finished_at"]

    # 5. With max_active_tasks 2 the third create is a 403 budget_exceeded.
    carol, carol_api = agent("carol", BASE_SCOPES)
    carol_id = carol["id"]
    admin.ok("PATCH", f"/agents/{carol_id}", {"budgets": {"max_active_tasks": 2}})
    minutely = {"title": "m", "schedule_kind": "cron", "schedule_expr": "* * * * *",
                "payload": ECHO}  # fmt: skip
    carols = [carol_api.ok("POST", "/tasks", minutely)["id"] for _ in range(2)]
    status, answer = carol_api.call("POST", "/tasks", minutely)
    assert status == 403, answer
    assert answer["error"]["code"] == "budget_exceeded"

    # 6. Pausing carol stops her every-minute task; resuming starts it again.
    assert admin.ok("POST", f"/agents/{carol_id}/pause")["status"] == "paused"
    assert carol_api.ok("GET", f"/tasks/{carols[0]}")["next_run_at"] is None
    assert admin.ok("POST", f"/agents/{carol_id}/resume")["status"] == "active"
    assert carol_api.ok("GET", f"/tasks/{carols[0]}")["next_run_at"] is not None

    # 7. A deactivated agent's token is refused and its task stops.
    admin.ok("DELETE", f"/agents/{bob['id']}")
    assert bob_api.call("GET", "/tasks")[0] == 401
    alice_api.ok("POST", "/events", {"topic": "orders.shipped", "payload": {}})
    time.sleep(2)
    assert len(admin.ok("GET", f"/runs?task_id={bobs}&limit=50")["items"]) == 1

    # 8. An agent holding only approvals:decide cannot see or decide another agent's
    #    approval that names no approvers.
    gated = alice_api.ok("POST", "/tasks", {
        "title": "gate", "schedule_kind": "event", "schedule_expr": "gate",
        "payload": {"pipeline": [{"id": "ask", "uses": "approval.request",
                                  "with": {"prompt": "ok?"}}]}})["id"]  # fmt: skip
    alice_api.ok("POST", f"/tasks/{gated}/run_now")
    eventually(lambda: admin.ok("GET", "/approvals?status=pending")["items"],
               f"the approval was never requested\n{server_log()}")  # fmt: skip
    approval = admin.ok("GET", "/approvals?status=pending")["items"][0]
    assert approver.ok("GET", "/approvals?status=pending")["items"] == []
    assert approver.call("POST", f"/approvals/{approval['id']}/approve", {})[0] == 404
    assert all(process.poll() is None for process in started), server_log()
