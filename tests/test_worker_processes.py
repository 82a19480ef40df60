"""Real `runworker` processes: drain, kill -9, PostgreSQL restart, concurrency keys, SIGTERM."""

import itertools
import signal
import subprocess
import sys
import tempfile
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import Count
from django.utils import timezone

from tasks.models import Occurrence, Run, Task, WorkerHeartbeat
from tests.conftest import ROOT, command_env, wait_for
from tests.factories import make_agent

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ECHO = {"pipeline": [{"id": "echo", "uses": "debug.echo", "with": {"n": "${params.n}"}}],
        "params": {"n": 1}}  # fmt: skip


def sleeping(seconds):
    return {"pipeline": [{"id": "nap", "uses": "debug.sleep", "with": {"seconds": seconds}}]}


def worker_env(url, **extra):
    return command_env(
        DEBUG="0", SECRET_KEY="s" * 50, DATABASE_URL=url, REDIS_URL="", LOG_LEVEL="INFO", **extra
    )


def start_worker(url, *args):
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed with the process object)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "runworker", *args],
        env=worker_env(url),
        cwd=ROOT,
        # A file, not a pipe: nobody reads a pipe until the end, and a full pipe would
        # block the process on its next log line.
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc.log = log
    return proc


def output_of(proc):
    proc.log.seek(0)
    return proc.log.read()


def stop(proc, timeout=60):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=timeout)
    return proc.returncode, output_of(proc)


def drained(proc, timeout=600):
    """Wait for a --burst worker to empty the queue and exit on its own."""
    proc.wait(timeout=timeout)
    return proc.returncode, output_of(proc)


def enqueue(task, count, *, key=None):
    now = timezone.now()
    Occurrence.objects.bulk_create(
        Occurrence(
            task=task,
            scheduled_for=now - timedelta(microseconds=i),
            run_at=now,
            priority=task.priority,
            concurrency_key=key,
            agent_id=task.created_by_id,
        )
        for i in range(count)
    )


def make(payload, **fields):
    agent, _ = make_agent()
    return Task.objects.create(
        title="w", created_by=agent, schedule_kind="event", schedule_expr="x", payload=payload,
        **fields,
    )  # fmt: skip


def test_four_workers_drain_10000_each_exactly_once(test_database_url):
    task = make(ECHO)
    enqueue(task, 10_000)
    workers = [start_worker(test_database_url, "--burst", "--concurrency", "4") for _ in range(4)]
    results = [drained(proc) for proc in workers]
    assert [code for code, _ in results] == [0, 0, 0, 0], results
    assert not Occurrence.objects.exists()
    runs = Run.objects.filter(task=task)
    not_ok = list(runs.exclude(status="succeeded").values_list("status", "error")[:5])
    warnings = [line[:300] for _, out in results for line in out.splitlines()
                if "WARNING" in line or "ERROR" in line][:10]  # fmt: skip
    assert not_ok == [], warnings
    assert runs.count() == 10_000
    per_occurrence = runs.values("occurrence_id").annotate(n=Count("id")).filter(n__gt=1)
    assert not per_occurrence.exists()
    assert runs.values("occurrence_id").distinct().count() == 10_000
    # The work was shared (each process recorded runs).
    assert len(set(runs.values_list("lease_owner", flat=True))) == 4


def test_killed_worker_lease_is_reclaimed_as_next_attempt(test_database_url):
    task = make(sleeping(3), max_retries=2)
    enqueue(task, 1)
    victim = start_worker(test_database_url, "--lease-seconds", "2", "--concurrency", "1")
    wait_for(lambda: Run.objects.filter(task=task).exists(), 30, "victim never started")
    time.sleep(0.5)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    rescuer = start_worker(test_database_url, "--lease-seconds", "2", "--concurrency", "1")
    try:
        wait_for(
            lambda: Run.objects.filter(task=task, status="succeeded").exists(), 30, "not rerun"
        )
    finally:
        code, output = stop(rescuer)
    assert code == 0, output
    runs = list(Run.objects.filter(task=task).order_by("attempt"))
    assert [(r.attempt, r.status) for r in runs] == [(1, "lost"), (2, "succeeded")]
    assert "lost its lease" in runs[0].error
    assert runs[0].lease_owner != runs[1].lease_owner
    assert not Occurrence.objects.exists()


def test_work_completes_across_a_postgres_restart(test_database_url, servers):
    task = make(sleeping(0.01))
    enqueue(task, 1500)
    workers = [start_worker(test_database_url, "--concurrency", "4") for _ in range(2)]
    unfinished = Occurrence.objects.filter(state__in=["queued", "leased"])
    try:
        wait_for(lambda: Run.objects.count() > 200, 60, "workers did not start")
        connection.close()
        servers.POSTGRES.stop()
        time.sleep(2)
        servers.POSTGRES.start()
        assert all(proc.poll() is None for proc in workers), "a worker died with the database"
        deadline = time.monotonic() + 120
        while unfinished.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = list(unfinished.values_list("state", "lease_owner", "leased_until")[:5])
    finally:
        results = [stop(proc) for proc in workers]
    warnings = [line[:300] for _, out in results for line in out.splitlines()
                if "WARNING" in line or "ERROR" in line][-10:]  # fmt: skip
    assert left == [], warnings
    assert [code for code, _ in results] == [0, 0], results
    succeeded = Run.objects.filter(task=task, status="succeeded")
    assert succeeded.values("occurrence_id").distinct().count() == 1500
    assert not Occurrence.objects.filter(state="dead").exists()
    assert any("database unavailable" in output for _, output in results)


def test_concurrency_key_never_runs_two_at_once(test_database_url):
    task = make(sleeping(0.2), concurrency_key="mailbox")
    enqueue(task, 12, key="mailbox")
    workers = [start_worker(test_database_url, "--burst", "--concurrency", "4") for _ in range(2)]
    results = [drained(proc, timeout=120) for proc in workers]
    assert [code for code, _ in results] == [0, 0], results
    intervals = sorted(Run.objects.filter(task=task).values_list("started_at", "finished_at"))
    assert len(intervals) == 12
    for (_, previous_end), (next_start, _) in itertools.pairwise(intervals):
        assert next_start >= previous_end, "two runs of one concurrency key overlapped"


def test_sigterm_lets_running_pipeline_finish_and_releases_the_rest(test_database_url):
    task = make(sleeping(2))
    enqueue(task, 3)
    proc = start_worker(test_database_url, "--concurrency", "1", "--shutdown-grace", "20")
    wait_for(lambda: Run.objects.filter(task=task).exists(), 30, "never started")
    time.sleep(0.3)
    code, output = stop(proc)
    assert code == 0, output
    runs = Run.objects.filter(task=task)
    assert list(runs.values_list("status", flat=True)) == ["succeeded"]
    # The two it had prefetched but not started are back in the queue, attempts uncounted.
    assert list(Occurrence.objects.values_list("state", "attempt")) == [("queued", 0)] * 2


def test_draining_worker_is_marked_stopping_then_removed(test_database_url):
    task = make(sleeping(3))
    enqueue(task, 1)
    proc = start_worker(test_database_url, "--concurrency", "1", "--shutdown-grace", "20")
    wait_for(lambda: Run.objects.filter(task=task).exists(), 30, "never started")
    assert WorkerHeartbeat.objects.filter(stopping=False).count() == 1
    proc.send_signal(signal.SIGTERM)
    # While its pipeline finishes, the worker is there and says it is stopping.
    wait_for(lambda: WorkerHeartbeat.objects.filter(stopping=True).exists(), 10, "not stopping")
    code, output = stop(proc)
    assert code == 0, output
    assert not WorkerHeartbeat.objects.exists()
    assert Run.objects.get(task=task).status == "succeeded"


def test_sigterm_past_grace_requeues_the_running_attempt(test_database_url):
    task = make(sleeping(30))
    enqueue(task, 1)
    proc = start_worker(test_database_url, "--concurrency", "1", "--shutdown-grace", "1")
    wait_for(lambda: Run.objects.filter(task=task).exists(), 30, "never started")
    started = time.monotonic()
    code, output = stop(proc)
    assert code == 0, output
    assert time.monotonic() - started < 15
    run = Run.objects.get(task=task)
    assert run.status == "canceled"
    assert "grace" in run.error
    assert list(Occurrence.objects.values_list("state", "attempt")) == [("queued", 1)]


def test_run_timeout_is_recorded_as_timed_out(test_database_url):
    task = make(sleeping(20), timeout_seconds=1, max_retries=0)
    enqueue(task, 1)
    proc = start_worker(test_database_url, "--burst", "--concurrency", "1")
    code, output = drained(proc, timeout=60)
    assert code == 0, output
    run = Run.objects.get(task=task)
    assert run.status == "timed_out"
    assert Occurrence.objects.get().state == "dead"
    assert (run.finished_at - run.started_at).total_seconds() < 10


def test_each_run_logs_one_json_line(test_database_url):
    import json

    task = make(ECHO)
    enqueue(task, 3)
    proc = start_worker(test_database_url, "--burst")
    code, output = drained(proc)
    assert code == 0, output
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    runs = [line for line in lines if line["logger"] == "ordinaut.runs"]
    assert len(runs) == 3
    assert {r["outcome"] for r in runs} == {"succeeded"}
    assert all(r["correlation_id"] and r["duration_ms"] >= 0 for r in runs)


def test_idle_worker_starts_future_work_at_its_run_at_not_at_the_next_poll(test_database_url):
    # A 30 s poll: only the run_at timer (or a wake-up) can start the run in time.
    proc = start_worker(test_database_url, "--poll-interval", "30")
    try:
        from tasks.models import WorkerHeartbeat

        wait_for(WorkerHeartbeat.objects.exists, 30, "worker did not start")
        time.sleep(0.5)  # asleep now
        task = make(ECHO)
        run_at = timezone.now() + timedelta(seconds=2)
        Occurrence.objects.create(
            task=task, scheduled_for=run_at, run_at=run_at, priority=5,
            agent_id=task.created_by_id,
        )  # fmt: skip
        wait_for(lambda: Run.objects.filter(task=task).exists(), 15, "never started")
        started = Run.objects.get(task=task).started_at
        assert run_at <= started < run_at + timedelta(seconds=5)
    finally:
        code, output = stop(proc)
    assert code == 0, output


def test_idle_worker_is_woken_by_due_work_not_the_poll(test_database_url):
    proc = start_worker(test_database_url, "--poll-interval", "30")
    try:
        from tasks.models import WorkerHeartbeat

        wait_for(WorkerHeartbeat.objects.exists, 30, "worker did not start")
        time.sleep(0.5)
        task = make(ECHO)
        enqueue(task, 1)  # due now: the insert trigger NOTIFYs
        created = timezone.now()
        wait_for(lambda: Run.objects.filter(task=task).exists(), 15, "never woken")
        assert Run.objects.get(task=task).started_at - created < timedelta(seconds=5)
    finally:
        code, output = stop(proc)
    assert code == 0, output
