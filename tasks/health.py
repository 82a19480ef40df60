"""The scheduler's /health check (the worker's arrives with the queue)."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from ordinaut.health import CheckResult, timed_check
from tasks.models import SchedulerHeartbeat, WorkerHeartbeat


def _scheduler_probe() -> str:
    fresh_after = timezone.now() - timedelta(seconds=settings.SCHEDULER_HEARTBEAT_STALE_SECONDS)
    latest = SchedulerHeartbeat.objects.order_by("-last_seen").first()
    if latest is None:
        raise RuntimeError("no scheduler has ever reported; start `manage.py runscheduler`")
    age = (timezone.now() - latest.last_seen).total_seconds()
    if latest.last_seen < fresh_after:
        raise RuntimeError(f"stale: the latest scheduler heartbeat is {age:.0f}s old")
    running = SchedulerHeartbeat.objects.filter(last_seen__gte=fresh_after).count()
    return f"{running} scheduler(s) running; last tick {age:.1f}s ago"


def check_scheduler() -> CheckResult:
    return timed_check("scheduler", False, _scheduler_probe)


def worker_fresh_seconds() -> float:
    """How recent a worker's heartbeat must be for it to count as alive (/health, /metrics and
    the console alike): a lease's length, but never under 30 s."""
    return max(30.0, float(settings.WORKER_LEASE_SECONDS))


def _workers_probe() -> str:
    fresh_after = timezone.now() - timedelta(seconds=worker_fresh_seconds())
    fresh = WorkerHeartbeat.objects.filter(last_seen__gte=fresh_after)
    count = fresh.count()
    if not count:
        raise RuntimeError("no worker heartbeat recently; start `manage.py runworker`")
    threads = sum(fresh.values_list("concurrency", flat=True))
    return f"{count} worker(s) running, {threads} pipeline thread(s)"


def check_workers() -> CheckResult:
    return timed_check("workers", False, _workers_probe)
