"""Events benchmark: POST /events with a 100-task fan-out, and event → run-start latency.

1. Throughput. gunicorn (as bench/api.py: 4 workers x 4 threads, persistent connections,
   rate limits out of the way) with 100 active `event` tasks matching `bench.load`; 1 and 16
   keep-alive clients POST /events. Each 202 means the event and its 100 occurrences
   committed in one transaction. No worker runs meanwhile.
2. Latency. One `runworker` (--concurrency 8), events POSTed one at a time at a steady rate:
   a) a topic one task listens to: run start - event published_at;
   b) a topic 100 tasks listen to (one event at a time): the same for every one of its 100
      runs, so queueing behind its siblings is included.

    python bench/events.py [events-per-throughput-row] [latency-events]   (default 400 100)
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time

from common import ROOT, Report, percentile, setup_django, start_database

from ordinaut.embedded import free_port

GUNICORN = ["--workers", "4", "--worker-class", "gthread", "--threads", "4"]
WORKER_ARGS = ["--concurrency", "8"]
PIPELINE = {"pipeline": [{"id": "hello", "uses": "debug.echo", "with": {"x": 1}}]}
FAN_OUT = 100


def make_tasks(agent, pattern: str, count: int) -> list:
    from tasks.models import Task

    return Task.objects.bulk_create(
        Task(
            title=f"on {pattern} {i}", created_by=agent, schedule_kind="event",
            schedule_expr=pattern, payload=PIPELINE,
        )
        for i in range(count)
    )  # fmt: skip


def post_events(port, headers, topic, clients, count):
    """POST `count` events from `clients` keep-alive connections; (latencies, seconds)."""
    latencies: list[float] = []
    failures: list[int] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        for i in range(n):
            body = json.dumps({"topic": topic, "payload": {"n": i}})
            start = time.perf_counter()
            conn.request("POST", "/events", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            mine.append(time.perf_counter() - start)
            if response.status != 202:
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
        raise RuntimeError(f"POST /events answered {sorted(set(failures))}")
    return latencies, time.perf_counter() - started


def wait_for_runs(tasks, expected: int, timeout: float = 120) -> list[float]:
    """Wait until `expected` event runs of `tasks` succeeded; their start lags in ms."""
    from tasks.models import Run

    runs = Run.objects.filter(task__in=tasks, trigger="event")
    deadline = time.monotonic() + timeout
    while runs.filter(status="succeeded").count() < expected:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {runs.count()} of {expected} runs after {timeout:.0f}s")
        time.sleep(0.2)
    # An event occurrence's scheduled_for is its event's published_at.
    return [
        (started - scheduled).total_seconds() * 1000
        for scheduled, started in runs.order_by("scheduled_for").values_list(
            "scheduled_for", "started_at"
        )
    ]


def wait_for_server(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/")
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


REPORT = Report(
    "events",
    [("measure", "measure", 34, ""), ("clients", "clients", 7, "d"), ("per_s", "per s", 9, ".0f"),
     ("p50_ms", "p50 ms", 8, ".2f"), ("p99_ms", "p99 ms", 8, ".2f"), ("n", "n", 6, "d")],
)  # fmt: skip


def row(label: str, clients: int, per_s: float, ms: list[float]) -> None:
    """One figure: `per_s` events posted per second, `ms` the latencies measured."""
    REPORT.add(
        measure=label, clients=clients, per_s=per_s, p50_ms=percentile(ms, 50),
        p99_ms=percentile(ms, 99), n=len(ms),
    )  # fmt: skip


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    latency_events = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    server, url = start_database()
    port = free_port()
    web = worker = None
    try:
        env = setup_django(url)
        env.update(RATE_LIMIT_EVENTS="1000000/min", DB_CONN_MAX_AGE="600")
        from agents.services import agent_create, credential_issue_api_key
        from audit.services import Actor
        from tasks.models import Occurrence, Task
        from tasks.queue import drop_queued

        actor = Actor.system("bench")
        agent, _ = agent_create(
            name="bench", scopes=["events:publish", "tasks:read", "tasks:write"], actor=actor
        )
        _, key = credential_issue_api_key(agent=agent, actor=actor)
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        load_tasks = make_tasks(agent, "bench.load", FAN_OUT)
        web = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "ordinaut.wsgi", "-b", f"127.0.0.1:{port}",
             *GUNICORN, "--log-level", "warning"],
            env=env, cwd=ROOT,
        )  # fmt: skip
        wait_for_server(port)
        for clients in (1, 16):
            post_events(port, headers, "bench.load", clients, max(clients, 32))  # warm-up
            latencies, seconds = post_events(port, headers, "bench.load", clients, count)
            row(
                f"POST /events ({FAN_OUT} tasks match)", clients,
                len(latencies) / seconds, [v * 1000 for v in latencies],
            )  # fmt: skip
        queued = Occurrence.objects.filter(task__in=load_tasks).count()
        print(f"  ({queued} occurrences queued by those events)", flush=True)
        # Out of the latency runs' way: the worker must not drain this backlog first.
        for task in load_tasks:
            drop_queued(task.pk)
        Task.objects.filter(pk__in=[t.pk for t in load_tasks]).update(status="paused")

        one = make_tasks(agent, "bench.one", 1)
        fan = make_tasks(agent, "bench.fan", FAN_OUT)
        worker = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "runworker", *WORKER_ARGS],
            env={**env, "LOG_LEVEL": "WARNING"}, cwd=ROOT,
        )  # fmt: skip
        time.sleep(3)  # let it start and fall asleep on LISTEN
        started = time.perf_counter()
        for _ in range(latency_events):
            post_events(port, headers, "bench.one", 1, 1)
            time.sleep(0.1)
        rate = latency_events / (time.perf_counter() - started)
        lags = wait_for_runs(one, latency_events)
        row("event -> run start (1 task)", 1, rate, lags[5:])  # 5 warm-up
        fan_events = max(2, latency_events // 10)
        started = time.perf_counter()
        for n in range(fan_events):
            post_events(port, headers, "bench.fan", 1, 1)
            wait_for_runs(fan, FAN_OUT * (n + 1))
        rate = fan_events / (time.perf_counter() - started)
        lags = wait_for_runs(fan, FAN_OUT * fan_events)
        row(f"event -> run start ({FAN_OUT} tasks)", 1, rate, lags)
        REPORT.table()
    finally:
        for process in (worker, web):
            if process is not None:
                process.terminate()
                process.wait(timeout=60)
        server.destroy()


if __name__ == "__main__":
    main()
