"""Pipeline benchmark: executor steps/s, and MCP tool calls over stdio and streamable HTTP.

1. A 10-step pipeline of `transform.jmespath` steps (each reading the previous step's
   output), executed R times through `pipelines.executor.execute` against PostgreSQL with
   the run's steps written after every step: steps/s and per-run p50/p99.
2. `forecast` calls on tests/mcp_test_server.py through the pooled MCP client, over stdio
   and over streamable HTTP on a loopback port: sequential calls/s with p50/p99 latency,
   then calls/s with 8 threads sharing the one pooled connection.

    python bench/pipeline.py            # R = 200 runs, C = 1000 calls per transport
    python bench/pipeline.py 500 2000
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/queue.py would shadow the standard library's `queue` (needed by concurrent.futures
# and psycopg) while this script's directory leads sys.path: move it to the end.
_BENCH_DIR = str(Path(__file__).resolve().parent)
sys.path[:] = [entry for entry in sys.path if entry != _BENCH_DIR] + [_BENCH_DIR]

import threading  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

from common import Report, percentile, setup_django, start_database  # noqa: E402

THREADS = 8
REPORT = Report(
    "pipeline",
    [("measure", "measure", 40, ""), ("per_s", "per s", 9, ".0f"),
     ("p50_ms", "p50 ms", 8, ".2f"), ("p99_ms", "p99 ms", 8, ".2f")],
)  # fmt: skip


def transform_pipeline(steps: int = 10) -> dict:
    pipeline = [
        {
            "id": "s0",
            "uses": "transform.jmespath",
            "with": {"data": "${params.items}", "expression": "[?v > `2`]"},
        }
    ]
    for index in range(1, steps):
        pipeline.append(
            {
                "id": f"s{index}",
                "uses": "transform.jmespath",
                "with": {"data": f"${{steps.s{index - 1}}}", "expression": "[*]"},
            }
        )
    return {
        "params": {"items": [{"v": i, "name": f"n{i}"} for i in range(20)]},
        "pipeline": pipeline,
    }


def bench_executor(runs: int) -> None:
    from django.utils import timezone

    from agents.services import agent_create
    from audit.services import Actor
    from pipelines.executor import execute
    from tasks.models import Run, RunStatus
    from tasks.services import task_create

    agent, _ = agent_create(
        name=f"bench-pipeline-{time.time_ns()}", scopes=[], actor=Actor.system("bench")
    )
    task = task_create(
        created_by=agent,
        actor=Actor.system("bench"),
        title="bench",
        schedule_kind="event",
        schedule_expr="bench",
        payload=transform_pipeline(),
    )
    latencies = []
    started = time.perf_counter()
    for index in range(runs):
        run = Run.objects.create(
            task=task,
            occurrence_id=index + 1,
            scheduled_for=timezone.now(),
            status=RunStatus.RUNNING,
        )
        t0 = time.perf_counter()
        result = execute(run)
        latencies.append(time.perf_counter() - t0)
        assert result.status == "succeeded", result.error
        Run.objects.filter(pk=run.pk).update(status=result.status, finished_at=timezone.now())
    elapsed = time.perf_counter() - started
    report("executor 10-step transform.jmespath, runs", runs / elapsed, latencies,
           steps_per_s=runs * 10 / elapsed)  # fmt: skip


def report(measure: str, per_s: float, latencies: list[float], **more: float) -> None:
    """One figure: `per_s` a rate, `latencies` in seconds (reported in ms)."""
    REPORT.add(
        measure=measure, per_s=per_s, p50_ms=percentile(latencies, 50) * 1000,
        p99_ms=percentile(latencies, 99) * 1000, **more,
    )  # fmt: skip


def bench_mcp(label: str, config, calls: int) -> None:
    from pipelines import mcp_client

    def one() -> float:
        t0 = time.perf_counter()
        result = mcp_client.call_tool(config, "forecast", {"city": "Chisinau"}, timeout=30)
        assert result["city"] == "Chisinau"
        return time.perf_counter() - t0

    one()  # connect (and start the stdio server) outside the measurement
    started = time.perf_counter()
    latencies = [one() for _ in range(calls)]
    elapsed = time.perf_counter() - started
    report(f"mcp {label} sequential calls", calls / elapsed, latencies)
    lock = threading.Lock()
    parallel: list[float] = []

    def timed(_: int) -> None:
        latency = one()
        with lock:
            parallel.append(latency)

    started = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(timed, range(calls)))
    elapsed = time.perf_counter() - started
    report(f"mcp {label} calls, {THREADS} threads", calls / elapsed, parallel)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    calls = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    server, url = start_database()
    http_server = None
    try:
        setup_django(url)
        from ordinaut.embedded import free_port
        from pipelines import mcp_client
        from tests.mcp_fixtures import SERVER_SCRIPT, HttpMcpServer

        bench_executor(runs)
        stdio = mcp_client.ServerConfig(
            name="bench-stdio",
            transport="stdio",
            command=sys.executable,
            args=(str(SERVER_SCRIPT),),
        )
        bench_mcp("stdio", stdio, calls)
        http_server = HttpMcpServer(free_port()).start()
        http = mcp_client.ServerConfig(name="bench-http", transport="http", url=http_server.url)
        bench_mcp("http", http, calls)
        mcp_client.close_all()
        REPORT.table()
    finally:
        if http_server is not None:
            http_server.stop()
        server.destroy()


if __name__ == "__main__":
    main()
