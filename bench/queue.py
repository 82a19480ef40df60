"""Queue benchmark: drain throughput and pickup latency, side by side with PgQueuer and
Procrastinate on the same PostgreSQL.

    python bench/queue.py [--jobs 20000] [--no-peers]

Ours: N occurrences of a one-step pipeline (`debug.echo`, run logging off) drained by 1 and
2 `runworker --burst` processes; a Run row is recorded for every execution. Time runs from
launching the worker processes to the last Run finishing. Pickup: one idle worker, one
occurrence made due at a time at ~50/s; latency = Run start - commit of the insert.
Peers run through bench/peers/run_peer.py in their own venv (bench/.venv-peers), each in a
fresh database on the same server, with the same job counts. Every phase starts after a
VACUUM ANALYZE of its database and a CHECKPOINT (`settle`), so none measures the clean-up of
the one before.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, percentile, setup_django, start_database

PEERS_VENV = ROOT / "bench" / ".venv-peers"
PEER_SCRIPT = ROOT / "bench" / "peers" / "run_peer.py"
WORKER_ARGS = ["--concurrency", "8"]


def fresh_database(server, name: str) -> str:
    import psycopg

    with psycopg.connect(server.socket_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.tcp_url(name)


def settle(server, dbname: str) -> None:
    """Start every phase from the same quiet server: vacuum what earlier phases left in
    `dbname` (ours reuses one database; a peer's is fresh, so this finds nothing), then
    checkpoint, so no autovacuum or checkpoint from a drain lands on the next measurement."""
    import psycopg

    with psycopg.connect(server.socket_url(dbname), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")


def make_task():
    from agents.services import agent_create
    from audit.services import Actor
    from tasks.models import Task

    agent, _ = agent_create(name=f"bench-{time.time()}", scopes=[], actor=Actor.system("bench"))
    return Task.objects.create(
        title="noop",
        created_by=agent,
        schedule_kind="event",
        schedule_expr="bench",
        payload={"pipeline": [{"id": "noop", "uses": "debug.echo", "with": {"ok": True}}]},
    )


def enqueue_bulk(task, jobs: int) -> None:
    """Queue `jobs` occurrences due now, through the queue's own batch insert."""
    from datetime import UTC, datetime, timedelta

    from tasks.queue import enqueue_scheduled

    now = datetime.now(UTC)
    rows = [
        {
            "task_id": str(task.id),
            "scheduled_for": (now - timedelta(microseconds=n)).isoformat(),
            "run_at": now.isoformat(),
            "priority": 5,
            "concurrency_key": None,
            "agent_id": str(task.created_by_id),
        }
        for n in range(1, jobs + 1)
    ]
    enqueue_scheduled(rows)


def drain_ours(env: dict, jobs: int, processes: int) -> dict:
    from django.db import connection

    from tasks.models import Run

    task = make_task()
    enqueue_bulk(task, jobs)
    started = time.time()
    workers = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "runworker", "--burst", *WORKER_ARGS],
            env={**env, "LOG_LEVEL": "WARNING"},
            cwd=ROOT,
        )
        for _ in range(processes)
    ]
    for worker in workers:
        worker.wait(timeout=900)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), EXTRACT(EPOCH FROM max(finished_at)), "
            "EXTRACT(EPOCH FROM max(finished_at) - min(started_at)) "
            "FROM tasks_run WHERE task_id = %s AND status = 'succeeded'",
            [task.id],
        )
        done, last_finish, busy = cursor.fetchone()
    if done != jobs:
        raise SystemExit(f"ours: only {done} of {jobs} runs succeeded")
    seconds = float(last_finish) - started
    Run.objects.filter(task=task).delete()
    return {
        "system": "ordinaut",
        "mode": "drain",
        "jobs": jobs,
        "processes": processes,
        "seconds": seconds,
        "jobs_per_s": jobs / seconds,
        "busy_jobs_per_s": jobs / float(busy),
    }


def pickup_ours(env: dict, jobs: int, rate: float) -> dict:
    from datetime import UTC, datetime

    from tasks.models import Run
    from tasks.queue import enqueue_manual

    task = make_task()
    worker = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "runworker", *WORKER_ARGS],
        env={**env, "LOG_LEVEL": "WARNING", "WORKER_POLL_INTERVAL": "5"},
        cwd=ROOT,
    )
    time.sleep(3)  # let it start and fall asleep on LISTEN
    committed: dict[int, float] = {}
    for _ in range(jobs):
        # Autocommit: the occurrence is committed when enqueue_manual returns.
        occurrence = enqueue_manual(task, now=datetime.now(UTC))
        committed[occurrence.id] = time.time()
        time.sleep(max(0.0, 1 / rate - 0.001))
    deadline = time.time() + 30
    while Run.objects.filter(task=task, status="succeeded").count() < jobs:
        if time.time() > deadline:
            raise SystemExit("ours: pickup runs did not all finish")
        time.sleep(0.2)
    worker.terminate()
    worker.wait(timeout=60)
    runs = Run.objects.filter(task=task).values_list("occurrence_id", "started_at")
    # In insertion order, dropping the first ten as warm-up.
    latencies = [(started.timestamp() - committed[oid]) * 1000 for oid, started in sorted(runs)]
    latencies = latencies[10:]
    return {
        "system": "ordinaut",
        "mode": "pickup",
        "jobs": jobs,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
    }


def ensure_peers_venv() -> Path | None:
    python = PEERS_VENV / "bin" / "python"
    if python.exists():
        return python
    if not PEER_SCRIPT.exists():
        return None
    print("creating bench/.venv-peers (PgQueuer, Procrastinate) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "-r",
            str(PEER_SCRIPT.parent / "requirements.txt"),
        ],
        check=True,
    )
    return python


def run_peer(python: Path, system: str, dsn: str, *args: str) -> dict:
    result = subprocess.run(
        [str(python), str(PEER_SCRIPT), "--system", system, "--dsn", dsn, *args],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode != 0:
        raise SystemExit(f"{system} failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--pickup-jobs", type=int, default=300)
    parser.add_argument("--no-peers", action="store_true")
    options = parser.parse_args()
    server, url = start_database()
    rows: list[dict] = []
    try:
        env = setup_django(url)
        for processes in (1, 2):
            settle(server, "ordinaut")
            rows.append(drain_ours(env, options.jobs, processes))
            print(json.dumps(rows[-1]), flush=True)
        settle(server, "ordinaut")
        rows.append(pickup_ours(env, options.pickup_jobs, 50))
        print(json.dumps(rows[-1]), flush=True)
        python = None if options.no_peers else ensure_peers_venv()
        if python is not None:
            for system in ("pgqueuer", "procrastinate"):
                for processes in (1, 2):
                    dsn = fresh_database(server, f"peer_{system}_{processes}")
                    settle(server, f"peer_{system}_{processes}")
                    rows.append(
                        run_peer(
                            python,
                            system,
                            dsn,
                            "--mode",
                            "drain",
                            "--jobs",
                            str(options.jobs),
                            "--processes",
                            str(processes),
                        )
                    )
                    print(json.dumps(rows[-1]), flush=True)
                dsn = fresh_database(server, f"peer_{system}_pickup")
                settle(server, f"peer_{system}_pickup")
                rows.append(
                    run_peer(
                        python,
                        system,
                        dsn,
                        "--mode",
                        "pickup",
                        "--jobs",
                        str(options.pickup_jobs),
                        "--rate",
                        "50",
                    )
                )
                print(json.dumps(rows[-1]), flush=True)
        print_table(rows)
    finally:
        server.destroy()


def print_table(rows: list[dict]) -> None:
    drains = {(r["system"], r["processes"]): r["jobs_per_s"] for r in rows if r["mode"] == "drain"}
    pickups = {r["system"]: r for r in rows if r["mode"] == "pickup"}
    print(
        f"\n{'system':<14} {'drain 1p':>10} {'drain 2p':>10} {'pickup p50':>11} "
        f"{'p95':>8} {'p99':>8}  (jobs/s; ms)"
    )
    for system in ("ordinaut", "pgqueuer", "procrastinate"):
        if (system, 1) not in drains:
            continue
        p = pickups.get(system, {})
        print(
            f"{system:<14} {drains[(system, 1)]:>10.0f} {drains.get((system, 2), 0):>10.0f} "
            f"{p.get('p50_ms', 0):>11.2f} {p.get('p95_ms', 0):>8.2f} {p.get('p99_ms', 0):>8.2f}"
        )
    for peer in ("pgqueuer", "procrastinate"):
        if (peer, 1) in drains:
            ratios = [
                drains[("ordinaut", p)] / drains[(peer, p)] for p in (1, 2) if (peer, p) in drains
            ]
            ours_p99, their_p99 = pickups["ordinaut"]["p99_ms"], pickups[peer]["p99_ms"]
            print(
                f"ordinaut / {peer}: drain x{' / x'.join(f'{r:.2f}' for r in ratios)} (1p / 2p); "
                f"pickup p99 {ours_p99:.2f} vs {their_p99:.2f} ms"
            )


if __name__ == "__main__":
    main()
