"""The container smoke test (run by ops/containers/test.sh, i.e. `make test-containers`).

Against a Compose stack that test.sh brought up with host networking on loopback ports:
healthy; an agent made with `docker compose exec web python manage.py createagent`; a task
created over the API runs and its run is read back; the worker containers are restarted
while a run is in flight and that run still completes exactly once; `down` then `up` keeps
the data; the image's user is not root. Prints each step; exits non-zero on the first
failure. Standard library only: it runs with any Python 3.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

COMPOSE = shlex.split(os.environ["COMPOSE"])  # the compose command with -p/-f/--env-file
BASE = f"http://127.0.0.1:{os.environ['WEB_PORT']}"
IMAGE = os.environ["APP_IMAGE"]
SLOW = {"pipeline": [
    {"id": "wait", "uses": "debug.sleep", "with": {"seconds": 6}},
    {"id": "done", "uses": "debug.echo", "with": {"finished": True}},
]}  # fmt: skip


def step(message: str) -> None:
    print(f"smoke: {message}", flush=True)


def compose(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([*COMPOSE, *args], capture_output=True, text=True, timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


def call(method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(BASE + path, data=data, method=method)  # noqa: S310 (http://127.0.0.1)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:  # noqa: S310 (loopback)
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")
    except OSError as error:
        return 0, str(error)


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def healthy() -> bool:
    status, body = call("GET", "/health")
    return status == 200 and isinstance(body, dict) and body.get("status") == "healthy"


def runs_of(task_id: str, token: str) -> list[dict]:
    status, body = call("GET", f"/runs?task_id={task_id}&include_errors=true", token=token)
    assert status == 200, body
    return body["items"]


def main() -> None:
    step("waiting for /health to be healthy")
    wait_for("a healthy stack", healthy)

    step("the image's user is not root")
    user = subprocess.run(["docker", "image", "inspect", "-f", "{{.Config.User}}", IMAGE],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert user, "the image sets no user"
    assert not user.startswith(("0", "root")), f"image user is {user!r}"
    uid = compose("exec", "-T", "web", "id", "-u").stdout.strip()
    assert uid == "10001", f"web runs as uid {uid}"

    step("createagent inside the web container")
    made = compose("exec", "-T", "web", "python", "manage.py", "createagent", "smoke",
                   "--scopes", "tasks:read,tasks:write,runs:read", "--json")  # fmt: skip
    agent = json.loads(made.stdout)
    status, pair = call("POST", "/agents/auth/token",
                        {"agent_id": agent["id"], "agent_secret": agent["secret"]})  # fmt: skip
    assert status == 200, pair
    token = pair["access_token"]

    step("a task created over the API runs and its run is read back")
    body = {"title": "smoke", "schedule_kind": "cron", "schedule_expr": "0 0 1 1 *",
            "timezone": "UTC", "payload": SLOW}  # fmt: skip
    status, task = call("POST", "/tasks", body, token)
    assert status == 201, task
    status, _ = call("POST", f"/tasks/{task['id']}/run_now", {}, token)
    assert status in (200, 201, 202), status

    step("restarting the workers while the run is in flight")

    def running() -> bool:
        return any(r["status"] == "running" for r in runs_of(task["id"], token))

    wait_for("the run to start", running, 60)
    compose("restart", "worker")
    finished = wait_for(
        "the run to succeed",
        lambda: [r for r in runs_of(task["id"], token) if r["status"] == "succeeded"],
        120,
    )
    time.sleep(3)  # a duplicate, if the queue had one, would show up by now
    runs = runs_of(task["id"], token)
    succeeded = [r for r in runs if r["status"] == "succeeded"]
    assert len(succeeded) == 1, f"expected exactly one succeeded run, got {runs}"
    status, run = call("GET", f"/runs/{finished[0]['id']}", token=token)
    assert status == 200, run
    assert run["output"], run
    step(f"  {len(runs)} attempt(s), one succeeded: {[r['status'] for r in runs]}")

    step("down, then up: the data is still there")
    compose("down")
    compose("up", "-d", "--wait", "--scale", "worker=2")
    wait_for("a healthy stack after up", healthy)
    status, again = call("GET", f"/tasks/{task['id']}", token=token)
    assert status == 200, again
    assert again["title"] == "smoke"
    assert len(runs_of(task["id"], token)) == len(runs)
    step("all checks passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as failure:
        print(f"smoke: FAILED: {failure}", file=sys.stderr)
        sys.exit(1)
