"""API latency benchmark: gunicorn serving the agent API on a real PostgreSQL.

Measures p50/p95/p99 and requests/s for POST /tasks, GET /tasks/{id}, GET /tasks?status=active
(with 10,000 tasks stored) and GET /runs?limit=10, at 1 and 16 concurrent keep-alive clients,
authenticated with a JWT and with an API key; /health/live and /health as a baseline.

    python bench/api.py [request-count] [gunicorn options...]   (default 1600 at 16 clients)

Server: what README recommends — gunicorn with GUNICORN's options unless given, Redis for
the throttles, persistent database connections (DB_CONN_MAX_AGE=600) — with the rate limits
raised out of the way. Clients run on the same machine: 16 clients are 4 processes of 4
threads each (one process's GIL would otherwise queue them), so the figures include the
clients' share of the 2 cores.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import ROOT, percentile, setup_django, start_database

from ordinaut.embedded import EmbeddedRedis, free_port

GUNICORN = ["--workers", "5"]  # README: sync workers, 2 x cores + 1, behind a proxy
CLIENT_PROCESSES = 4
TASKS_STORED = 10_000
RUNS_STORED = 2_000
TASK_BODY = {
    "title": "bench",
    "schedule_kind": "cron",
    "schedule_expr": "*/5 * * * *",
    "payload": {"pipeline": [{"id": "hello", "uses": "debug.echo", "with": {"x": 1}}]},
}


def _client_process(args):
    """One client process: `threads` keep-alive connections; (latencies, start, end, errors)."""
    port, method, path, headers, body, threads, count = args
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

    workers = [threading.Thread(target=client, args=(count // threads,)) for _ in range(threads)]
    started = time.monotonic()  # CLOCK_MONOTONIC: comparable across processes
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return latencies, started, time.monotonic(), failures


def hammer(port, method, path, headers, body, clients, count):
    """`count` requests from `clients` concurrent connections; (latencies, elapsed seconds)."""
    processes = min(clients, CLIENT_PROCESSES)
    jobs = [
        (port, method, path, headers, body, clients // processes, count // processes)
        for _ in range(processes)
    ]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        results = pool.map(_client_process, jobs)
    failures = sorted({status for result in results for status in result[3]})
    if failures:
        raise RuntimeError(f"{method} {path} answered {failures}")
    latencies = [value for result in results for value in result[0]]
    elapsed = max(result[2] for result in results) - min(result[1] for result in results)
    return latencies, elapsed


def seed():
    """An agent with 10,000 active tasks and 2,000 runs; returns (jwt, api_key, a task id)."""
    from django.db import connection
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
    # Statistics and visibility maps as autovacuum keeps them on a running system.
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    _, pair = token_exchange(agent_id=str(agent.id), agent_secret=secret)
    _, key = credential_issue_api_key(agent=agent, actor=actor)
    return pair.access, key, str(tasks[0].id)


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1600
    options = sys.argv[2:] or GUNICORN
    server, url = start_database()
    redis = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="ordinaut-bench-redis-")), port=free_port())
    redis.start()
    port = free_port()
    try:
        env = setup_django(url)
        env.update(
            RATE_LIMIT_TASKS="1000000/min",
            RATE_LIMIT_READS="1000000/min",
            DB_CONN_MAX_AGE="600",
            REDIS_URL=redis.url(),
        )
        access, key, task_id = seed()
        print(f"gunicorn {' '.join(options)}; Redis throttles; {CLIENT_PROCESSES} client processes")
        web = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "ordinaut.wsgi", "-b", f"127.0.0.1:{port}",
             *options, "--log-level", "warning"],
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
        redis.destroy()
        server.destroy()


if __name__ == "__main__":
    main()
