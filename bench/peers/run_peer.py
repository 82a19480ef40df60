"""Benchmark one peer queue (PgQueuer or Procrastinate) on a dedicated, empty database.

    bench/.venv-peers/bin/python bench/peers/run_peer.py --system pgqueuer --dsn DSN \
        --mode drain --jobs 20000 --processes 2
    bench/.venv-peers/bin/python bench/peers/run_peer.py --system procrastinate --dsn DSN \
        --mode pickup --jobs 300 --rate 50

Run with any other interpreter, the script re-executes itself in bench/.venv-peers (creating
it first with `python -m venv` + `pip install -r bench/peers/requirements.txt`; the creating
interpreter must be Python >= 3.10, e.g. the project's 3.12).

drain: install the system's schema, enqueue N no-op jobs with the library's batch enqueue,
    launch P worker processes in the library's own "stop when the queue is empty" mode, and
    time from launching them to the last job's completion as recorded by the library in the
    database (PgQueuer: pgqueuer_log 'successful' rows; Procrastinate: procrastinate_events
    'succeeded' rows). Every job must have completed, or the script exits non-zero.
pickup: one idle worker in the library's default LISTEN/NOTIFY wake-up mode; jobs are enqueued
    one at a time at ~rate/s. Latency = time.time() at the start of the job body minus
    time.time() just after the enqueue call (autocommit) returned, matched by job id; the first
    10 are dropped as warm-up. The job body appends "<job id> <start time>" to a results file.

One JSON line on stdout; worker processes log at WARNING only (no per-job logs).

Settings (library defaults unless noted):
- PgQueuer: asyncpg driver, `PgQueuer.run(mode=drain|continuous)`, batch_size=10 (the default
  of `pgq run`), unlimited concurrent tasks (the default), uvloop as `pgq run` uses it.
- Procrastinate: PsycopgConnector (psycopg pool), `run_worker_async(wait=False|True)`,
  listen_notify=True (default), delete_jobs=never (default), concurrency=8 (the default is 1;
  8 matches the `--concurrency 8` bench/queue.py gives Ordinaut's workers: change it with
  --concurrency).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VENV = ROOT / "bench" / ".venv-peers"
VENV_PYTHON = VENV / "bin" / "python"
REQUIREMENTS = HERE / "requirements.txt"
TASK = "noop"
WARMUP = 10


# --------------------------------------------------------------------------- venv


def ensure_venv() -> None:
    """Re-execute in bench/.venv-peers (created on first use) unless already running there."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    if not VENV_PYTHON.exists():
        print("creating bench/.venv-peers ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [str(VENV_PYTHON), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
            check=True,
            stdout=sys.stderr,
        )
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]])  # noqa: S606


# --------------------------------------------------------------------------- helpers


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of a non-empty list (same as bench/common.py)."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def quiet_logging() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    for name in ("pgqueuer", "procrastinate", "asyncpg", "psycopg"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Procrastinate warns when its App is built in a __main__ module (task names would depend
    # on the import path); the task here has an explicit name, so that warning does not apply.
    logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def spawn_worker(args: argparse.Namespace, role: str, results: str = "") -> subprocess.Popen:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--system",
        args.system,
        "--dsn",
        args.dsn,
        "--worker",
        role,
        "--batch-size",
        str(args.batch_size),
        "--concurrency",
        str(args.concurrency),
    ]
    if results:
        command += ["--results", results]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL)


class Recorder:
    """Job-body side of the pickup measurement: one line per job, flushed at once."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "a", buffering=1) if path else None  # noqa: SIM115

    def record(self, job_id: int) -> None:
        started = time.time()
        if self.file is not None:
            self.file.write(f"{job_id} {started!r}\n")


# --------------------------------------------------------------------------- PgQueuer


class PgQueuerPeer:
    async def install(self, dsn: str) -> None:
        import asyncpg
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        conn = await asyncpg.connect(dsn)
        try:
            await Queries(AsyncpgDriver(conn)).install()
        finally:
            await conn.close()

    async def enqueue_bulk(self, dsn: str, jobs: int) -> None:
        import asyncpg
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        conn = await asyncpg.connect(dsn)
        try:
            queries = Queries(AsyncpgDriver(conn))
            chunk = 5000  # list arguments = one multi-row INSERT per call
            for start in range(0, jobs, chunk):
                k = min(chunk, jobs - start)
                await queries.enqueue([TASK] * k, [None] * k, [0] * k)
        finally:
            await conn.close()

    async def enqueue_paced(self, dsn: str, jobs: int, rate: float) -> dict[int, float]:
        import asyncpg
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        committed: dict[int, float] = {}
        conn = await asyncpg.connect(dsn)
        try:
            queries = Queries(AsyncpgDriver(conn))
            begin = time.time()
            for i in range(jobs):
                await asyncio.sleep(max(0.0, begin + i / rate - time.time()))
                (job_id,) = await queries.enqueue(TASK, None)  # autocommit: committed on return
                committed[int(job_id)] = time.time()
        finally:
            await conn.close()
        return committed

    async def finished(self, dsn: str) -> tuple[int, int, float | None]:
        """(successful jobs, jobs left in the queue, epoch of the last completion)."""
        import asyncpg

        conn = await asyncpg.connect(dsn)
        try:
            done, last = await conn.fetchrow(
                "SELECT count(DISTINCT job_id), EXTRACT(EPOCH FROM max(created))::float8"
                " FROM pgqueuer_log WHERE status = 'successful'"
            )
            left = await conn.fetchval("SELECT count(*) FROM pgqueuer")
        finally:
            await conn.close()
        return done, left, last

    def worker(self, args: argparse.Namespace) -> None:
        import uvloop  # what `pgq run` uses on Linux

        uvloop.run(self._worker(args))

    async def _worker(self, args: argparse.Namespace) -> None:
        import asyncpg
        from pgqueuer import PgQueuer
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.domain.types import QueueExecutionMode
        from pgqueuer.models import Job

        recorder = Recorder(args.results)
        conn = await asyncpg.connect(args.dsn)
        pgq = PgQueuer(AsyncpgDriver(conn))

        @pgq.entrypoint(TASK)
        async def noop(job: Job) -> None:
            recorder.record(int(job.id))

        mode = QueueExecutionMode.drain if args.worker == "drain" else QueueExecutionMode.continuous
        # Defaults of `pgq run`: batch_size=10, dequeue_timeout=30 s, no global task cap.
        await pgq.run(mode=mode, batch_size=args.batch_size)
        await conn.close()


# --------------------------------------------------------------------------- Procrastinate


def procrastinate_app(dsn: str, recorder: Recorder | None = None):
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name=TASK, pass_context=True)
    async def noop(context: procrastinate.JobContext) -> None:
        if recorder is not None:
            recorder.record(int(context.job.id))

    return app, noop


class ProcrastinatePeer:
    async def install(self, dsn: str) -> None:
        app, _ = procrastinate_app(dsn)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()

    async def enqueue_bulk(self, dsn: str, jobs: int) -> None:
        app, noop = procrastinate_app(dsn)
        async with app.open_async():
            chunk = 5000  # batch_defer_async: one multi-row INSERT per call
            for start in range(0, jobs, chunk):
                await noop.batch_defer_async(*({} for _ in range(min(chunk, jobs - start))))

    async def enqueue_paced(self, dsn: str, jobs: int, rate: float) -> dict[int, float]:
        committed: dict[int, float] = {}
        app, noop = procrastinate_app(dsn)
        async with app.open_async():
            begin = time.time()
            for i in range(jobs):
                await asyncio.sleep(max(0.0, begin + i / rate - time.time()))
                job_id = await noop.defer_async()  # pool connection in autocommit
                committed[int(job_id)] = time.time()
        return committed

    async def finished(self, dsn: str) -> tuple[int, int, float | None]:
        import psycopg

        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            cur = await conn.execute(
                "SELECT count(DISTINCT job_id), EXTRACT(EPOCH FROM max(at))::float8"
                " FROM procrastinate_events WHERE type = 'succeeded'"
            )
            done, last = await cur.fetchone()
            cur = await conn.execute(
                "SELECT count(*) FROM procrastinate_jobs WHERE status <> 'succeeded'"
            )
            (left,) = await cur.fetchone()
        return done, left, last

    def worker(self, args: argparse.Namespace) -> None:
        asyncio.run(self._worker(args))  # what the `procrastinate worker` CLI uses

    async def _worker(self, args: argparse.Namespace) -> None:
        app, _ = procrastinate_app(args.dsn, Recorder(args.results))
        async with app.open_async():
            # wait=False: "terminate as soon as it has caught up with the queues".
            await app.run_worker_async(
                wait=args.worker != "drain",
                concurrency=args.concurrency,
                listen_notify=True,
            )


PEERS = {"pgqueuer": PgQueuerPeer, "procrastinate": ProcrastinatePeer}


# --------------------------------------------------------------------------- modes


def drain(args: argparse.Namespace, peer) -> dict:
    asyncio.run(peer.install(args.dsn))
    asyncio.run(peer.enqueue_bulk(args.dsn, args.jobs))
    started = time.time()
    workers = [spawn_worker(args, "drain") for _ in range(args.processes)]
    codes = [w.wait(timeout=1800) for w in workers]
    exited = time.time()
    if any(codes):
        fail(f"{args.system}: worker exit codes {codes}")
    done, left, last = asyncio.run(peer.finished(args.dsn))
    if done != args.jobs or left != 0:
        fail(f"{args.system}: {done} of {args.jobs} jobs completed, {left} left in the queue")
    seconds = last - started
    return {
        "system": args.system,
        "mode": "drain",
        "jobs": args.jobs,
        "processes": args.processes,
        "seconds": seconds,
        "jobs_per_s": args.jobs / seconds,
        "exit_seconds": exited - started,  # until every worker process had exited
    }


def pickup(args: argparse.Namespace, peer) -> dict:
    if args.jobs <= WARMUP:
        fail(f"--jobs must exceed the {WARMUP} warm-up jobs")
    asyncio.run(peer.install(args.dsn))
    results = Path(tempfile.mkdtemp(prefix="run-peer-")) / "starts.txt"
    results.touch()
    worker = spawn_worker(args, "listen", str(results))
    try:
        time.sleep(3)  # let it start and fall asleep on LISTEN
        if worker.poll() is not None:
            fail(f"{args.system}: worker exited early with {worker.returncode}")
        committed = asyncio.run(peer.enqueue_paced(args.dsn, args.jobs, args.rate))
        deadline = time.time() + 30
        while len(results.read_text().splitlines()) < args.jobs:
            if time.time() > deadline or worker.poll() is not None:
                break
            time.sleep(0.2)
        time.sleep(0.5)  # let the worker record the last completions in the database
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    starts = {}
    for line in results.read_text().splitlines():
        job_id, started = line.split()
        starts.setdefault(int(job_id), float(started))
    done, left, _ = asyncio.run(peer.finished(args.dsn))
    if set(starts) != set(committed) or done != args.jobs or left != 0:
        fail(
            f"{args.system}: {len(starts)} of {args.jobs} jobs started, {done} completed,"
            f" {left} left in the queue"
        )
    latencies = [(starts[i] - committed[i]) * 1000 for i in sorted(committed)][WARMUP:]
    if os.environ.get("RUN_PEER_DEBUG"):  # every latency, in enqueue order, on stderr
        print(" ".join(f"{x:.1f}" for x in latencies), file=sys.stderr)
    return {
        "system": args.system,
        "mode": "pickup",
        "jobs": args.jobs,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", choices=sorted(PEERS), required=True)
    parser.add_argument("--dsn", required=True, help="an empty database dedicated to this run")
    parser.add_argument("--mode", choices=("drain", "pickup"), default="drain")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=1, help="drain: worker processes")
    parser.add_argument("--rate", type=float, default=50.0, help="pickup: jobs enqueued per s")
    parser.add_argument("--batch-size", type=int, default=10, help="PgQueuer dequeue batch")
    parser.add_argument("--concurrency", type=int, default=8, help="Procrastinate concurrency")
    parser.add_argument("--worker", choices=("drain", "listen"), help=argparse.SUPPRESS)
    parser.add_argument("--results", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    ensure_venv()
    quiet_logging()
    peer = PEERS[args.system]()
    if args.worker:
        peer.worker(args)
        return
    row = drain(args, peer) if args.mode == "drain" else pickup(args, peer)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
