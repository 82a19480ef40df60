"""API latency benchmark: gunicorn serving the agent API on a real PostgreSQL.

Measures p50/p95/p99 and requests/s for POST /tasks, GET /tasks/{id}, GET /tasks?status=active
(with 10,000 tasks stored) and GET /runs?limit=10, at 1 and 16 concurrent keep-alive clients,
authenticated with a JWT and with an API key; /health/live and /health as a baseline. Clients
are threads of this process, so the figures include the client's share of the machine.

    python bench/api.py [requests-per-client-count]   (default 800 at 16 clients)

Server: gunicorn gthread, 4 workers x 4 threads (the setting README recommends for 2 cores),
persistent database connections (DB_CONN_MAX_AGE), rate limits raised out of the way.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time

from common import ROOT, percentile, setup_django, start_database

from ordinaut.embedded import free_port

GUNICORN = ["--workers", "4", "--worker-class", "gthread", "--threads", "4"]
TASKS_STORED = 10_000
RUNS_STORED = 2_000
TASK_BODY = {
    "title": "bench",
    "schedule_kind": "cron",
    "schedule_expr": "*/5 * * * *",
    "payload": {"pipeline": [{"id": "hello", "uses": "debug.echo", "with": {"x": 1}}]},
}


def hammer(port, method, path, headers, body, clients, count):
    latencies: list[float] = []
    failures: list[int] = []
    lock = threading.Lock()
    payload = json.dumps(body).encode() if body is not None else None

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        for _ in range(n):
            start = time.perf_counter()
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            response.read()
            mine.append(time.perf_counter() - start)
            if response.status >= 300:
                with lock:
                    failures.append(response.status)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(count // clients,)) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{method} {path} answered {sorted(set(failures))}")
    return latencies, time.perf_counter() - started


def seed():
    """An agent with 10,000 active tasks and 2,000 runs; returns (jwt, api_key, a task id)."""
    from django.utils import timezone

    from agents.services import agent_create, credential_issue_api_key, token_exchange
    from audit.services import Actor
    from tasks.models import Run, RunStatus, Task

    actor = Actor.system("bench")
    agent, secret = agent_create(
        name="bench", scopes=["tasks:read", "tasks:write", "runs:read"], actor=actor
    )
    now = timezone.now()
    tasks = Task.objects.bulk_create(
        Task(
            title=f"bench {i}", created_by=agent, schedule_kind="cron",
            schedule_expr="*/5 * * * *", payload=TASK_BODY["payload"],
            status="active" if i % 10 else "paused",
        )
        for i in range(TASKS_STORED)
    )  # fmt: skip
    Run.objects.bulk_create(
        Run(
            task=tasks[i % len(tasks)], scheduled_for=now, attempt=1,
            status=RunStatus.SUCCEEDED, started_at=now, finished_at=now, output={"i": i},
        )
        for i in range(RUNS_STORED)
    )  # fmt: skip
    _, pair = token_exchange(agent_id=str(agent.id), agent_secret=secret)
    _, key = credential_issue_api_key(agent=agent, actor=actor)
    return pair.access, key, str(tasks[0].id)


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 800
    server, url = start_database()
    port = free_port()
    try:
        env = setup_django(url)
        env.update(
            RATE_LIMIT_TASKS="1000000/min", RATE_LIMIT_READS="1000000/min", DB_CONN_MAX_AGE="600"
        )
        access, key, task_id = seed()
        web = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "ordinaut.wsgi", "-b", f"127.0.0.1:{port}",
             *GUNICORN, "--log-level", "warning"],
            env=env, cwd=ROOT,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        endpoints = [
            ("GET", "/health/live", None),
            ("GET", "/health", None),
            ("POST", "/tasks", TASK_BODY),
            ("GET", f"/tasks/{task_id}", None),
            ("GET", "/tasks?status=active", None),
            ("GET", "/runs?limit=10", None),
        ]
        print(f"{'auth':<8} {'endpoint':<26} {'clients':>7} {'req/s':>8} {'p50 ms':>8} "
              f"{'p95 ms':>8} {'p99 ms':>8}")  # fmt: skip
        for auth_name, token in (("jwt", access), ("api_key", key)):
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            for method, path, body in endpoints:
                if path.startswith("/health") and auth_name != "jwt":
                    continue
                label = f"{method} {path.replace(task_id, '{id}')}"
                for clients in (1, 16):
                    requests = max(count // (4 if clients == 1 else 1), clients)
                    hammer(port, method, path, headers, body, clients, min(requests, 100))
                    latencies, elapsed = hammer(
                        port, method, path, headers, body, clients, requests
                    )
                    ms = [value * 1000 for value in latencies]
                    print(
                        f"{auth_name:<8} {label:<26} {clients:>7} {len(ms) / elapsed:>8.0f} "
                        f"{percentile(ms, 50):>8.2f} {percentile(ms, 95):>8.2f} "
                        f"{percentile(ms, 99):>8.2f}",
                        flush=True,
                    )
        web.terminate()
        web.wait(timeout=30)
    finally:
        server.destroy()


if __name__ == "__main__":
    main()
