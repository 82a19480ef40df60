"""Scheduler benchmark: N tasks all due every minute, one `runscheduler` process.

Creates N active tasks (60% cron, 40% RRULE with distinct DTSTARTs, in five timezones, all
due at the top of every minute), runs `manage.py runscheduler` through three minute
boundaries, and prints occurrences/s (enqueue throughput while busy), the enqueue lag of
every occurrence (commit time minus scheduled instant; negative means enqueued ahead, via
the look-ahead) at p50/p95/p99, and the scheduler's peak RSS. The first boundary is at
least 20 s after the scheduler starts cold with all N tasks inside its look-ahead;
`steady p99` leaves that first minute out.

    python bench/scheduler.py              # N = 10,000 and 100,000
    python bench/scheduler.py 5000         # custom sizes
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from common import ROOT, percentile, setup_django, start_database

ZONES = [
    "UTC",
    "Europe/Chisinau",
    "America/New_York",
    "Asia/Kolkata",
    "America/Argentina/Buenos_Aires",
]


def create_tasks(n: int) -> datetime:
    """Create n tasks due every minute; return their first instant (at least 20 s away)."""
    from django.db import connection

    from agents.services import agent_create
    from audit.services import Actor
    from tasks.models import SchedulerHeartbeat, Task

    # Deleting the tasks deletes their occurrences and ledger rows with them (CASCADE).
    SchedulerHeartbeat.objects.all().delete()
    Task.objects.all().delete()
    agent, _ = agent_create(name=f"bench-{n}-{time.time()}", scopes=[], actor=Actor.system("bench"))
    base = datetime.now(UTC).replace(second=0, microsecond=0)
    rows = []
    for i in range(n):
        zone = ZONES[i % len(ZONES)]
        if i % 5 < 3:
            kind, expr = "cron", "* * * * *"
        else:
            # Distinct DTSTARTs, as tasks created at different times have: no shared cache entry.
            start = (base - timedelta(minutes=i)).astimezone(ZoneInfo(zone))
            kind, expr = "rrule", f"DTSTART;TZID={zone}:{start:%Y%m%dT%H%M00}\nRRULE:FREQ=MINUTELY"
        rows.append(
            Task(
                title=f"bench {i}",
                created_by=agent,
                schedule_kind=kind,
                schedule_expr=expr,
                timezone=zone,
                payload={"pipeline": [{"id": "a", "uses": "debug.echo", "with": {"i": i}}]},
                next_run_at=base + timedelta(days=1),  # set below, once all exist
            )
        )
    Task.objects.bulk_create(rows, batch_size=5000)
    # Creating 100k rows takes a while: pick the first instant only now, so it is ahead.
    now = datetime.now(UTC)
    first = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    if (first - now).total_seconds() < 20:
        first += timedelta(minutes=1)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE tasks_task SET next_run_at = %s", [first])
    return first


MINUTES = 3  # instants measured: first, first + 1 min, first + 2 min


def run(n: int, env: dict[str, str]) -> dict:
    from django.db import connection

    first = create_tasks(n)
    end = first + timedelta(minutes=MINUTES - 1, seconds=10)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "runscheduler"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak_rss_kb = 0
    while datetime.now(UTC) < end:
        time.sleep(1)
        with open(f"/proc/{proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    peak_rss_kb = int(line.split()[1])
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXTRACT(EPOCH FROM created_at - scheduled_for), "
            "EXTRACT(EPOCH FROM created_at), scheduled_for > %s FROM tasks_occurrence "
            "WHERE scheduled_for < %s",
            [first, first + timedelta(minutes=MINUTES)],
        )
        rows = cursor.fetchall()
        cursor.execute("SELECT count(*) FROM tasks_occurrence")
        (everything,) = cursor.fetchone()
        cursor.execute("SELECT last_tick, ticks FROM tasks_schedulerheartbeat")
        beats = cursor.fetchall()
    lags = [float(r[0]) for r in rows]
    steady = [float(r[0]) for r in rows if r[2]]
    # Throughput: every occurrence the process enqueued over its busy time (commit bursts).
    with connection.cursor() as cursor:
        cursor.execute("SELECT EXTRACT(EPOCH FROM created_at) FROM tasks_occurrence")
        created = sorted(float(r[0]) for r in cursor.fetchall())
    bursts, start = [], created[0]
    for previous, current in itertools.pairwise(created):
        if current - previous > 5:
            bursts.append(previous - start)
            start = current
    bursts.append(created[-1] - start)
    busy = sum(bursts) or 1e-9
    return {
        "tasks": n,
        "occurrences": len(rows),
        "expected": MINUTES * n,
        "occurrences_per_s": everything / busy,
        "lag_p50": percentile(lags, 50),
        "lag_p95": percentile(lags, 95),
        "lag_p99": percentile(lags, 99),
        "lag_max": max(lags),
        "steady_lag_p99": percentile(steady, 99),
        "peak_rss_mb": peak_rss_kb / 1024,
        "ticks": beats[0][1] if beats else 0,
    }


def main() -> None:
    sizes = [int(arg) for arg in sys.argv[1:]] or [10_000, 100_000]
    server, url = start_database()
    try:
        env = setup_django(url)
        print(
            f"{'tasks':>8} {'occurrences':>12} {'occ/s':>9} {'lag p50':>9} {'lag p95':>9} "
            f"{'lag p99':>9} {'lag max':>9} {'steady p99':>11} {'peak RSS':>9}"
        )
        for n in sizes:
            r = run(n, env)
            print(
                f"{r['tasks']:>8} {r['occurrences']:>6}/{r['expected']:<6}"
                f"{r['occurrences_per_s']:>9.0f} {r['lag_p50']:>8.3f}s {r['lag_p95']:>8.3f}s "
                f"{r['lag_p99']:>8.3f}s {r['lag_max']:>8.3f}s {r['steady_lag_p99']:>10.3f}s "
                f"{r['peak_rss_mb']:>7.1f}MB",
                flush=True,
            )
            print("  " + json.dumps(r), flush=True)
    finally:
        server.destroy()


if __name__ == "__main__":
    main()
