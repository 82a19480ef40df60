"""Real `runscheduler` processes: in parallel, killed with SIGKILL, across a PostgreSQL restart."""

import signal
import subprocess
import sys
import tempfile
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from audit.services import Actor
from tasks import services
from tasks.models import Occurrence, Task
from tests.conftest import ROOT, command_env, run_manage, wait_for
from tests.factories import make_agent

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

PIPELINE = {"pipeline": [{"id": "a", "uses": "debug.echo", "with": {}}]}


def scheduler_env(url, **extra):
    return command_env(
        DEBUG="0", SECRET_KEY="s" * 50, DATABASE_URL=url, REDIS_URL="", LOG_LEVEL="INFO", **extra
    )


def start_scheduler(url, *args, **extra):
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed with the process object)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "runscheduler", *args],
        env=scheduler_env(url, **extra),
        cwd=ROOT,
        # A file, not a pipe: nobody reads a pipe until the end, and a full pipe would
        # block the process on its next log line.
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc.log = log
    return proc


def finished(proc, timeout):
    """Wait for the process to exit; return its output."""
    proc.wait(timeout=timeout)
    proc.log.seek(0)
    return proc.log.read()


def bulk_tasks(count, *, due_at):
    """`count` minutely cron tasks whose first instant is `due_at` (rows written directly)."""
    agent, _ = make_agent()
    Task.objects.bulk_create(
        Task(
            title=f"bulk {i}",
            created_by=agent,
            schedule_kind="cron",
            schedule_expr="* * * * *",
            timezone="UTC",
            payload=PIPELINE,
            next_run_at=due_at,
        )
        for i in range(count)
    )


def assert_contiguous_minutes(first_instant):
    """Every task holds each minute from `first_instant` up to its next_run_at exactly once."""
    duplicates = Occurrence.objects.raw(
        "SELECT 1 AS id FROM tasks_occurrence GROUP BY task_id, scheduled_for HAVING count(*) > 1"
    )
    assert list(duplicates) == []
    for task in Task.objects.all():
        got = list(
            Occurrence.objects.filter(task=task)
            .order_by("scheduled_for")
            .values_list("scheduled_for", flat=True)
        )
        minutes = int((task.next_run_at - first_instant).total_seconds() // 60)
        assert got == [first_instant + timedelta(minutes=m) for m in range(minutes)], task.title


def test_two_schedulers_in_parallel_never_enqueue_twice(test_database_url):
    first = timezone.now().replace(second=0, microsecond=0)
    bulk_tasks(2000, due_at=first)
    # Small batches and a look-ahead of a few minutes make both processes fight over rows.
    args = ["--once", "--batch-size", "50", "--lookahead", "150"]
    procs = [start_scheduler(test_database_url, *args) for _ in range(2)]
    outputs = [finished(proc, 240) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert Occurrence.objects.count() >= 2000 * 3
    assert_contiguous_minutes(first)
    # Both processes did part of the work (otherwise the race was not exercised).
    assert all('"enqueued"' in output for output in outputs), outputs


def test_killed_scheduler_loses_and_duplicates_nothing(test_database_url):
    first = timezone.now().replace(second=0, microsecond=0)
    bulk_tasks(3000, due_at=first)
    args = ["--once", "--batch-size", "25", "--lookahead", "150"]
    victim = start_scheduler(test_database_url, *args)
    wait_for(lambda: Occurrence.objects.exists(), 60, "the scheduler never committed a batch")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    partial = Occurrence.objects.count()
    assert 0 < partial < 3000 * 3, "kill landed outside the tick; make the tick longer"
    result = run_manage("runscheduler", "--once", "--lookahead", "150",
                        env=scheduler_env(test_database_url), timeout=240)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert_contiguous_minutes(first)


def test_scheduler_survives_postgres_restart(test_database_url, servers):
    proc = start_scheduler(test_database_url, "--poll-interval", "0.2", "--lookahead", "0")
    try:
        agent, _ = make_agent()
        now = timezone.now()
        before = services.task_create(
            created_by=agent, actor=Actor.system("tests"), title="before", schedule_kind="once",
            schedule_expr=(now + timedelta(seconds=1)).isoformat(), payload=PIPELINE,
        )  # fmt: skip
        wait_for(lambda: Occurrence.objects.filter(task=before).exists(), 20, "not enqueued")
        connection.close()
        servers.POSTGRES.stop()
        time.sleep(2)
        servers.POSTGRES.start()
        assert proc.poll() is None, "the scheduler died with the database"
        after = services.task_create(
            created_by=agent, actor=Actor.system("tests"), title="after", schedule_kind="once",
            schedule_expr=(timezone.now() + timedelta(seconds=1)).isoformat(), payload=PIPELINE,
        )  # fmt: skip
        wait_for(lambda: Occurrence.objects.filter(task=after).exists(), 30, "not after restart")
        assert Occurrence.objects.filter(task=before).count() == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        output = finished(proc, 30)
    assert proc.returncode == 0, output
    assert "database unavailable, retrying" in output


def test_task_change_wakes_an_idle_scheduler_at_once(test_database_url):
    # A 60 s poll: without NOTIFY the new task would wait up to a minute.
    proc = start_scheduler(test_database_url, "--poll-interval", "60", "--lookahead", "0")
    try:
        from tasks.models import SchedulerHeartbeat

        wait_for(SchedulerHeartbeat.objects.exists, 30, "scheduler did not start")
        time.sleep(0.5)  # let it fall asleep on LISTEN
        agent, _ = make_agent()
        task = services.task_create(
            created_by=agent, actor=Actor.system("tests"), title="soon", schedule_kind="once",
            schedule_expr=(timezone.now() + timedelta(seconds=2)).isoformat(), payload=PIPELINE,
        )  # fmt: skip
        wait_for(lambda: Occurrence.objects.filter(task=task).exists(), 10, "not woken")
        occurrence = Occurrence.objects.get(task=task)
        assert occurrence.created_at - occurrence.scheduled_for < timedelta(seconds=3)
    finally:
        proc.send_signal(signal.SIGTERM)
        output = finished(proc, 30)
    assert proc.returncode == 0, output
