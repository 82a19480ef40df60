"""What the operator console shows: the dashboard on the admin index, the task page and
the run page (templates/admin/console/).

Read-only selectors; the tiles' definitions are documented in docs/console.md. The pages'
buttons post to the admin views in tasks/admin.py, which call the same services as the API.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import connection
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from ordinaut.errors import InvalidInput
from ordinaut.health import queue_stats
from tasks.health import worker_fresh_seconds
from tasks.models import (
    Approval,
    ApprovalStatus,
    Occurrence,
    OccurrenceState,
    Run,
    RunStatus,
    SchedulerHeartbeat,
    WebhookDelivery,
    WebhookStatus,
    WorkerHeartbeat,
)

FAILED_STATUSES = (RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.LOST)
LIST_LENGTH = 10


@dataclass(frozen=True)
class Tile:
    metric: str  # the data-metric name
    label: str
    value: float | int
    shown: str  # the value as the tile prints it
    url: str
    alarm: bool  # drawn as a warning (and says so in words)
    hint: str


def console_zone() -> ZoneInfo:
    """The zone every time in the console is shown in (setting CONSOLE_TIME_ZONE)."""
    return ZoneInfo(settings.CONSOLE_TIME_ZONE)


def _changelist(model: str, **query: str) -> str:
    url = reverse(f"admin:tasks_{model}_changelist")
    return f"{url}?{urlencode(query)}" if query else url


def seconds_in_words(seconds: float) -> str:
    """12 s, 3 min 5 s, 2 h 10 min, 3 d 4 h: how long, for people."""
    seconds = abs(seconds)
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def lateness_in_words(due: datetime, now: datetime | None = None) -> str:
    """ "12 s late" for a past instant, "in 40 s" for a future one."""
    delta = ((now or timezone.now()) - due).total_seconds()
    if abs(delta) < 0.5:
        return "due now"
    return f"{seconds_in_words(delta)} late" if delta > 0 else f"in {seconds_in_words(delta)}"


def tiles(now: datetime | None = None) -> list[Tile]:
    """The seven figures at the top of the dashboard, each linking to the rows behind it."""
    now = now or timezone.now()
    queue = queue_stats()
    lag = queue["oldest_due_lag_seconds"] or 0.0
    hour_ago = now - timedelta(hours=1)
    running = Run.objects.filter(status=RunStatus.RUNNING).count()
    failed = Run.objects.filter(status__in=FAILED_STATUSES, finished_at__gte=hour_ago).count()
    waiting = Approval.objects.filter(status=ApprovalStatus.PENDING).count()
    failing = WebhookDelivery.objects.filter(
        Q(status=WebhookStatus.FAILED, created_at__gte=now - timedelta(days=1))
        | Q(status=WebhookStatus.PENDING, attempts__gt=0)
    ).count()
    return [
        Tile("queued", "Queued", queue["queued"], str(queue["queued"]),
             _changelist("occurrence", state__exact="queued"), False,
             "occurrences waiting for their time or a free worker"),
        Tile("running", "Running", running, str(running),
             _changelist("run", status__exact="running"), False, "runs executing now"),
        Tile("oldest_due_lag_seconds", "Oldest due lag", round(lag, 1),
             seconds_in_words(lag) if lag else "none due", _changelist(
                 "occurrence", state__exact="queued", o="4"), lag > 60,
             "how late the oldest due occurrence is"),
        Tile("failed_1h", "Failed, last hour", failed, str(failed),
             _changelist("run", status__in=",".join(FAILED_STATUSES),
                         finished_at__gte=hour_ago.isoformat()), failed > 0,
             "runs failed, timed out or lost in the last hour"),
        Tile("dead", "Dead", queue["dead"], str(queue["dead"]),
             _changelist("occurrence", state__exact="dead"), queue["dead"] > 0,
             "occurrences out of retries, waiting for an operator"),
        Tile("approvals_waiting", "Approvals waiting", waiting, str(waiting),
             _changelist("approval", status__exact="pending"), False,
             "steps waiting for a person's decision"),
        Tile("webhooks_failing", "Webhooks failing", failing, str(failing),
             _changelist("webhookdelivery", status__exact="failed"), failing > 0,
             "deliveries being retried, or given up in the last 24 h"),
    ]  # fmt: skip


def processes(now: datetime | None = None) -> list[dict[str, Any]]:
    """Workers and schedulers with their last heartbeat; stale ones are flagged."""
    now = now or timezone.now()
    worker_fresh = timedelta(seconds=worker_fresh_seconds())
    scheduler_fresh = timedelta(seconds=settings.SCHEDULER_HEARTBEAT_STALE_SECONDS)

    def seen(row: Any) -> str:
        return f"{seconds_in_words((now - row.last_seen).total_seconds())} ago"

    found = [
        {"kind": "worker", "row": row, "stale": now - row.last_seen > worker_fresh,
         "concurrency": row.concurrency, "running": row.running, "seen": seen(row)}
        for row in WorkerHeartbeat.objects.order_by("-last_seen")[:50]
    ]  # fmt: skip
    found += [
        {"kind": "scheduler", "row": row, "stale": now - row.last_seen > scheduler_fresh,
         "concurrency": None, "running": None, "seen": seen(row)}
        for row in SchedulerHeartbeat.objects.order_by("-last_seen")[:10]
    ]  # fmt: skip
    return found


RUNS_PER_MINUTE = """
SELECT date_trunc('minute', finished_at) AS minute,
       count(*) FILTER (WHERE status = 'succeeded'),
       count(*) FILTER (WHERE status = ANY(%(failed)s))
FROM tasks_run
WHERE finished_at >= %(since)s
GROUP BY 1
"""


def runs_per_minute(now: datetime | None = None) -> dict[str, Any]:
    """Sixty one-minute buckets of finished runs (succeeded, failed), oldest first, with the
    geometry of the inline SVG bar chart."""
    now = (now or timezone.now()).replace(second=0, microsecond=0)
    start = now - timedelta(minutes=59)
    with connection.cursor() as cursor:
        cursor.execute(RUNS_PER_MINUTE, {"since": start, "failed": list(FAILED_STATUSES)})
        counts = {minute: (ok, bad) for minute, ok, bad in cursor.fetchall()}
    buckets = []
    for n in range(60):
        minute = start + timedelta(minutes=n)
        ok, bad = counts.get(minute, (0, 0))
        buckets.append({"minute": minute, "succeeded": ok, "failed": bad})
    peak = max([b["succeeded"] + b["failed"] for b in buckets] + [1])
    height, width = 120.0, 8.0
    for index, bucket in enumerate(buckets):
        ok_h = height * bucket["succeeded"] / peak
        bad_h = height * bucket["failed"] / peak
        bucket.update(x=index * (width + 2), w=width, ok_y=height - ok_h, ok_h=ok_h,
                      bad_y=height - ok_h - bad_h, bad_h=bad_h,
                      label=minute_label(bucket["minute"]))  # fmt: skip
    return {
        "buckets": buckets,
        "peak": peak,
        "succeeded": sum(b["succeeded"] for b in buckets),
        "failed": sum(b["failed"] for b in buckets),
        "height": height,
        "width": 60 * (width + 2),
    }


def minute_label(instant: datetime) -> str:
    return instant.astimezone(console_zone()).strftime("%H:%M")


def latest_failures() -> list[Run]:
    runs = (
        Run.objects.filter(status__in=FAILED_STATUSES)
        .select_related("task", "task__created_by")
        .order_by("-finished_at")[:LIST_LENGTH]
    )
    for run in runs:
        run.first_line = (run.error or "").strip().splitlines()[0][:200] if run.error else ""
    return list(runs)


def dead_occurrences() -> list[Occurrence]:
    return list(
        Occurrence.objects.filter(state=OccurrenceState.DEAD)
        .select_related("task")
        .order_by("-run_at")[:LIST_LENGTH]
    )


def approvals_waiting(now: datetime | None = None) -> list[Approval]:
    now = now or timezone.now()
    found = list(
        Approval.objects.filter(status=ApprovalStatus.PENDING)
        .select_related("task")
        .order_by("created_at")[:LIST_LENGTH]
    )
    for approval in found:
        approval.waited = seconds_in_words((now - approval.created_at).total_seconds())
    return found


def due_next_hour(now: datetime | None = None) -> list[Occurrence]:
    now = now or timezone.now()
    found = list(
        Occurrence.objects.filter(
            state=OccurrenceState.QUEUED, run_at__lte=now + timedelta(hours=1)
        )
        .select_related("task")
        .order_by("run_at")[:LIST_LENGTH]
    )
    for occurrence in found:
        occurrence.when = lateness_in_words(occurrence.run_at, now)
    return found


def dashboard(now: datetime | None = None) -> dict[str, Any]:
    """Everything the dashboard template needs."""
    now = now or timezone.now()
    return {
        "tiles": tiles(now),
        "processes": processes(now),
        "chart": runs_per_minute(now),
        "failures": latest_failures(),
        "dead": dead_occurrences(),
        "approvals": approvals_waiting(now),
        "due": due_next_hour(now),
        "zone": settings.CONSOLE_TIME_ZONE,
        "now": now.astimezone(console_zone()),
    }


# -- the task page ----------------------------------------------------------------------------


def schedule_in_words(task: Any) -> str:
    """The schedule as a sentence (the expression itself is beside it)."""
    kind, expr, zone = task.schedule_kind, task.schedule_expr or "", task.timezone
    if kind == "cron":
        return f"cron “{expr}” in {zone}"
    if kind == "rrule":
        return f"recurrence rule “{expr}” in {zone}"
    if kind == "once":
        return f"once, at {expr} ({zone})"
    if kind == "event":
        return f"whenever an event on topic “{expr}” is published"
    return f"{kind} {expr}".strip()


def task_controls(task: Any) -> list[dict[str, str]]:
    """The buttons the task's state allows: (action, label, confirm text or "")."""
    status = task.status
    controls = []
    if status == "active":
        controls.append({"action": "pause", "label": "Pause", "confirm": ""})
    if status == "paused":
        controls.append({"action": "resume", "label": "Resume", "confirm": ""})
    if status in ("active", "paused"):
        controls.append({"action": "run_now", "label": "Run now", "confirm": ""})
        confirm = f"Cancel “{task.title}” for good? This cannot be undone."
        controls.append({"action": "cancel", "label": "Cancel task", "confirm": confirm})
    return controls


def task_page(task: Any) -> dict[str, Any]:
    """What the task's page shows above its fields."""
    from tasks.models import SkippedOccurrence
    from tasks.selectors import schedule_preview

    upcoming: list[dict[str, Any]] = []
    preview_error = ""
    if task.status == "active" and task.schedule_kind in ("cron", "rrule", "once"):
        try:
            upcoming = schedule_preview(kind=task.schedule_kind, expr=task.schedule_expr,
                                        timezone_name=task.timezone, after=timezone.now(),
                                        n=10)  # fmt: skip
        except InvalidInput as exc:  # an invalid stored schedule is shown, not raised
            preview_error = exc.message
    runs = list(Run.objects.filter(task=task).order_by("-started_at")[:10])
    for run in runs:
        run.seconds = (
            (run.finished_at - run.started_at).total_seconds() if run.finished_at else None
        )
    agent = task.created_by
    budgets = dict(agent.budgets) if agent else {}
    return {
        "console_task": task,
        "controls": task_controls(task),
        "can_snooze": task.status == "active",
        "schedule_words": schedule_in_words(task),
        "upcoming": upcoming,
        "preview_error": preview_error,
        "recent_runs": runs,
        "ledger": list(SkippedOccurrence.objects.filter(task=task).order_by("-scheduled_for")[:10]),
        "agent": agent,
        "budgets": {k: v for k, v in budgets.items() if v is not None},
        "zone": settings.CONSOLE_TIME_ZONE,
    }


# -- the run page -----------------------------------------------------------------------------


def run_page(run: Run) -> dict[str, Any]:
    """The run's header, one timeline row per step, its output, and its relatives."""
    from audit.models import AuditEvent

    steps = []
    for record in run.steps or []:
        seconds = record.get("duration_ms")
        steps.append({**record, "seconds": seconds / 1000 if seconds is not None else None})
    occurrence = (
        Occurrence.objects.filter(pk=run.occurrence_id).first() if run.occurrence_id else None
    )
    queued = occurrence.created_at if occurrence else None
    attempts = (
        list(Run.objects.filter(occurrence_id=run.occurrence_id).exclude(pk=run.pk)
             .order_by("attempt"))
        if run.occurrence_id else []
    )  # fmt: skip
    audit = (
        AuditEvent.objects.filter(correlation_id=run.correlation_id).count()
        if run.correlation_id else 0
    )  # fmt: skip
    return {
        "run": run,
        "steps": steps,
        "queued_at": queued,
        "wait_seconds": (run.started_at - queued).total_seconds() if queued else None,
        "run_seconds": (run.finished_at - run.started_at).total_seconds()
        if run.finished_at
        else None,
        "attempts": attempts,
        "audit_count": audit,
        "audit_url": reverse("admin:audit_auditevent_changelist")
        + f"?{urlencode({'correlation_id': run.correlation_id})}",
        "waited": run.status == RunStatus.WAITING_APPROVAL
        and Approval.objects.filter(run=run).exclude(status=ApprovalStatus.PENDING).exists(),
        "can_rerun": run.status in FAILED_STATUSES
        and occurrence is not None
        and occurrence.state == OccurrenceState.DEAD,
        "ok": run.status == RunStatus.SUCCEEDED,
        "zone": settings.CONSOLE_TIME_ZONE,
    }
