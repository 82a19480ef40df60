"""API benchmark: gunicorn serving the agent API on PostgreSQL, optionally beside the original.

    python bench/api.py --wrk [--duration 20] [--warmup 5] [--rounds 3] [--connections 16]
                              [--threads 2] [--no-original]
    python bench/api.py [request-count] [gunicorn options...]   (default 1600 at 16 clients)

Both modes store the same data: one agent with 10,000 active tasks (plus 1,000 paused) and
3,000 finished runs. Server: what README recommends — gunicorn with GUNICORN's options unless
given, Redis for the throttles, persistent database connections (DB_CONN_MAX_AGE=600) — with
the rate limits raised out of the way. Everything listens on 127.0.0.1 and is stopped on exit.

--wrk (side by side): Ordinaut and the original FastAPI project (bench/original/, its own venv
and database on the same PostgreSQL server, uvicorn with as many workers as gunicorn has) are
both started; for GET /tasks?status=active, GET /runs?limit=10, GET /tasks/{id} and POST
/tasks (last: it adds tasks), each server gets a `--warmup` s wrk run, then `--rounds` rounds
of `--duration` s alternating between the two servers, so drift of the shared machine hits
both. wrk runs `--threads` threads over `--connections` keep-alive connections (gunicorn's
sync workers close each connection after one response, so wrk reconnects, as a proxy would
for them) with bench/api_wrk.lua, whose done() hook reports the requests and latency p50/p99.
Figures are the median round's req/s (and that round's p50/p99); one JSON line per
(endpoint, system) and a table with the ratio ours / original. JWT auth on both (the
original's also accepts a bare agent id as the bearer token; see bench/original/README.md).

Without --wrk: p50/p95/p99 and requests/s of POST /tasks, GET /tasks/{id}, GET
/tasks?status=active and GET /runs?limit=10 at 1 and 16 concurrent keep-alive clients,
authenticated with a JWT and with an API key; /health/live and /health as a baseline.
Clients run on the same machine: 16 clients are 4 processes of 4 threads each (one
process's GIL would otherwise queue them), so the figures include the clients' share of the
2 cores.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import ROOT, percentile, setup_django, start_database

from ordinaut.embedded import EmbeddedRedis, free_port

GUNICORN = ["--workers", "5"]  # README: sync workers, 2 x cores + 1, behind a proxy
CLIENT_PROCESSES = 4
ACTIVE_TASKS = 10_000  # plus a tenth as many paused ones
RUNS_STORED = 3_000
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


def seed() -> tuple[str, str, str, str]:
    """An agent with 10,000 active tasks, 1,000 paused and 3,000 runs.

    Returns (jwt, api_key, a task id, the agent id).
    """
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
            status="paused" if i % 11 == 0 else "active",
        )
        for i in range(1, ACTIVE_TASKS + ACTIVE_TASKS // 10 + 1)
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
    return pair.access, key, str(tasks[0].id), str(agent.id)


def clients_mode(argv: list[str]) -> None:
    """The original mode: Python clients, 1 and 16 of them, JWT and API key."""
    count = int(argv[0]) if argv else 1600
    options = argv[1:] or GUNICORN
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
        access, key, task_id, _ = seed()
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


# -- wrk mode: Ordinaut and the original side by side ----------------------------------------

WRK = "/usr/bin/wrk"
WRK_SCRIPT = ROOT / "bench" / "api_wrk.lua"
ORIGINAL_RUNNER = ROOT / "bench" / "original" / "run_original.py"
# The original answers 400 to a request without a User-Agent (api/security.py); wrk sends
# none unless told, so api_wrk.lua sets this one for both systems.
USER_AGENT = "wrk"


@dataclass
class System:
    """One server under test: where it listens, its bearer token and its paths."""

    name: str
    port: int
    token: str
    task_id: str
    agent_id: str
    slash: str  # the original's routers answer /tasks/ (and redirect /tasks with a 307)

    def target(self, endpoint: str) -> tuple[str, str, str]:
        """(method, path, body) of `endpoint` ("GET /tasks?status=active", ...) here."""
        method, path = endpoint.split(" ", 1)
        base, _, query = path.partition("?")
        base = base.replace("{id}", self.task_id)
        if base in ("/tasks", "/runs"):
            base += self.slash
        body = ""
        if method == "POST":
            body = json.dumps({**TASK_BODY, "description": "bench", "created_by": self.agent_id})
        return method, base + ("?" + query if query else ""), body


WRK_ENDPOINTS = [
    "GET /tasks?status=active",
    "GET /runs?limit=10",
    "GET /tasks/{id}",
    "POST /tasks",  # last: it adds tasks, which the list above counts
]


def run_wrk(system: System, endpoint: str, seconds: int, threads: int, connections: int) -> dict:
    """One wrk run; its done() figures plus req/s. Raises on any socket or HTTP error."""
    method, path, body = system.target(endpoint)
    env = {
        **os.environ,
        "WRK_METHOD": method,
        "WRK_BODY": body,
        "WRK_AUTHORIZATION": f"Bearer {system.token}",
    }
    out = subprocess.run(
        [WRK, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
         "-s", str(WRK_SCRIPT), f"http://127.0.0.1:{system.port}{path}"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    line = next(text for text in out.splitlines() if text.startswith("WRK_RESULT "))
    result = json.loads(line.removeprefix("WRK_RESULT "))
    if result["socket_errors"] or result["non_2xx_3xx"]:
        raise RuntimeError(f"{system.name} {endpoint}: {result}\n{out}")
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def check_responses(systems: list[System]) -> None:
    """Each endpoint answers 2xx on every system, and the lists count what was stored."""
    expected = {"GET /tasks?status=active": ACTIVE_TASKS, "GET /runs?limit=10": RUNS_STORED}
    for system in systems:
        for endpoint in WRK_ENDPOINTS[:-1]:
            method, path, _ = system.target(endpoint)
            conn = http.client.HTTPConnection("127.0.0.1", system.port, timeout=30)
            headers = {"Authorization": f"Bearer {system.token}", "User-Agent": USER_AGENT}
            conn.request(method, path, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            if response.status != 200:
                raise RuntimeError(f"{system.name} {method} {path}: {response.status} {raw!r}")
            data = json.loads(raw)
            if endpoint in expected and data["total"] != expected[endpoint]:
                raise RuntimeError(f"{system.name} {path}: total {data['total']}")


def start_original(server, redis_url: str, workers: int, log: Path) -> tuple[System, Any]:
    """Seed the original in its own database on `server`; start its uvicorn; (system, proc)."""
    server.create_database("original")
    dsn = server.tcp_url("original")
    seeded = json.loads(
        subprocess.run(
            [sys.executable, str(ORIGINAL_RUNNER), "seed", "--dsn", dsn,
             "--tasks", str(ACTIVE_TASKS), "--runs", str(RUNS_STORED)],
            check=True, stdout=subprocess.PIPE, text=True,
        ).stdout.splitlines()[-1]
    )  # fmt: skip
    port = free_port()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, str(ORIGINAL_RUNNER), "serve", "--dsn", dsn, "--port", str(port),
             "--workers", str(workers), "--redis-url", redis_url],
            stdout=subprocess.DEVNULL, stderr=sink, start_new_session=True,
        )  # fmt: skip
    system = System(
        "original", port, seeded["token"], seeded["task_id"], seeded["agent_id"], slash="/"
    )
    return system, process


def wait_listening(port: int, seconds: float = 60) -> None:
    """Return once something answers HTTP on 127.0.0.1:`port`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health", headers={"User-Agent": USER_AGENT})
            conn.getresponse().read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group `process` leads; SIGKILL what is left after 20 s."""
    for sig, seconds in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            process.poll()  # reap the leader, or the empty group never disappears
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def measure(systems: list[System], args: argparse.Namespace) -> list[dict]:
    """Warm-up, then alternating rounds per endpoint; one summary dict per (endpoint, system)."""
    rows = []
    for endpoint in WRK_ENDPOINTS:
        rounds: dict[str, list[dict]] = {system.name: [] for system in systems}
        for system in systems:
            run_wrk(system, endpoint, args.warmup, args.threads, args.connections)
        for _ in range(args.rounds):
            for system in systems:
                result = run_wrk(system, endpoint, args.duration, args.threads, args.connections)
                rounds[system.name].append(result)
        for system in systems:
            results = sorted(rounds[system.name], key=lambda result: result["rps"])
            middle = results[len(results) // 2]
            row = {
                "bench": "api_wrk", "endpoint": endpoint, "system": system.name,
                "connections": args.connections, "threads": args.threads,
                "duration_s": args.duration,
                "rounds": [round(result["rps"], 1) for result in rounds[system.name]],
                "rps": round(statistics.median(r["rps"] for r in results), 1),
                "p50_ms": round(middle["p50_us"] / 1000, 2),
                "p99_ms": round(middle["p99_us"] / 1000, 2),
            }  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    """Ours, the original and the ratio of their median req/s, one line per endpoint."""
    by = {(row["endpoint"], row["system"]): row for row in rows}
    print(f"\n{'endpoint':<26} {'ours req/s':>10} {'p50':>7} {'p99':>7} "
          f"{'orig req/s':>10} {'p50':>7} {'p99':>7} {'ratio':>6}")  # fmt: skip
    for endpoint in WRK_ENDPOINTS:
        ours = by[(endpoint, "ordinaut")]
        other = by.get((endpoint, "original"))
        line = f"{endpoint:<26} {ours['rps']:>10.1f} {ours['p50_ms']:>7.1f} {ours['p99_ms']:>7.1f}"
        if other:
            line += (f" {other['rps']:>10.1f} {other['p50_ms']:>7.1f} {other['p99_ms']:>7.1f}"
                     f" {ours['rps'] / other['rps']:>6.2f}")  # fmt: skip
        print(line)
    print("(latencies in ms, from the median round; ratio = ours / original)")


def wrk_mode(argv: list[str]) -> None:
    """Ordinaut and the original under wrk on one PostgreSQL server; see the docstring."""
    parser = argparse.ArgumentParser(prog="bench/api.py --wrk")
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-original", action="store_true", help="measure Ordinaut alone")
    args = parser.parse_args(argv)
    server, url = start_database()
    scratch = Path(tempfile.mkdtemp(prefix="ordinaut-bench-api-"))
    redis = EmbeddedRedis(scratch / "redis", port=free_port())
    redis.start()
    processes: list[subprocess.Popen] = []
    try:
        env = setup_django(url)
        env.update(
            RATE_LIMIT_TASKS="1000000/min", RATE_LIMIT_READS="1000000/min",
            DB_CONN_MAX_AGE="600", REDIS_URL=redis.url(),
        )  # fmt: skip
        access, _, task_id, agent_id = seed()
        port = free_port()
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "ordinaut.wsgi", "-b", f"127.0.0.1:{port}",
                 *GUNICORN, "--log-level", "warning"],
                env=env, cwd=ROOT, start_new_session=True,
            )
        )  # fmt: skip
        systems = [System("ordinaut", port, access, task_id, agent_id, slash="")]
        workers = int(GUNICORN[GUNICORN.index("--workers") + 1])
        if not args.no_original:
            # A different Redis database: the original's rate limiter is off, but keep apart.
            original, process = start_original(
                server, redis.url().rsplit("/", 1)[0] + "/1", workers, scratch / "original.log"
            )
            processes.append(process)
            systems.append(original)
        for system in systems:
            wait_listening(system.port)
        check_responses(systems)
        print(f"wrk -t{args.threads} -c{args.connections}, {args.warmup} s warm-up, "
              f"{args.rounds} x {args.duration} s; ordinaut: gunicorn {' '.join(GUNICORN)}; "
              f"original: uvicorn --workers {workers}", flush=True)  # fmt: skip
        print_table(measure(systems, args))
    finally:
        for process in processes:
            stop_group(process)
        redis.destroy()
        server.destroy()


def main() -> None:
    if sys.argv[1:2] == ["--wrk"]:
        wrk_mode(sys.argv[2:])
    else:
        clients_mode(sys.argv[1:])


if __name__ == "__main__":
    main()
