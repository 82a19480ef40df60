"""Use cases that change tasks: create, update, pause, resume, cancel, snooze, run now.

Each is one transaction that locks the task row (so it serialises with the scheduler, which
skips locked tasks), recomputes `next_run_at` at once, drops or moves what is queued, writes
its audit event, and NOTIFYs the scheduler so the change takes effect without waiting for
a poll. REST views, MCP tools and admin actions all call these.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from agents.models import Agent
from audit import record
from audit.services import Actor
from ordinaut.errors import Conflict, Forbidden, InvalidInput, NotFound
from tasks import schedules
from tasks.models import (
    TIME_KINDS,
    Approval,
    ApprovalStatus,
    BackoffStrategy,
    Event,
    MisfirePolicy,
    Occurrence,
    OccurrenceState,
    ScheduleKind,
    SkippedOccurrence,
    SkipReason,
    Task,
    TaskStatus,
    Trigger,
)
from tasks.outbox import outbox_add

# LISTEN/NOTIFY channels. NOTIFY inside a transaction is delivered at commit, never before.
SCHEDULER_CHANNEL = "ordinaut_scheduler"
WORKER_CHANNEL = "ordinaut_occurrences"
# The ledger records at most this many instants per pause or snooze (a minutely task paused
# for a month must not write 43,200 rows); the audit event carries the true count.
LEDGER_LIMIT = 1000
# Fields an update may change (the rest are identity or maintained by the scheduler).
UPDATABLE_FIELDS = {
    "title", "description", "schedule_kind", "schedule_expr", "timezone", "payload",
    "priority", "status", "dedupe_key", "dedupe_window_seconds", "max_retries",
    "backoff_strategy", "concurrency_key", "misfire_policy", "timeout_seconds",
}  # fmt: skip
_SCHEDULE_FIELDS = {"schedule_kind", "schedule_expr", "timezone"}


def notify(channel: str, payload: str = "") -> None:
    """NOTIFY `channel` in the current transaction (delivered when it commits)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [channel, payload])


# -- validation -----------------------------------------------------------------------------


def _choice(field: str, value: Any, choices: Iterable[str]) -> str:
    allowed = list(choices)
    if value not in allowed:
        raise InvalidInput(
            f"{field}: must be one of {', '.join(allowed)}",
            details={field: [f"must be one of {', '.join(allowed)}"]},
        )
    return value


def _int_in(field: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{field}: must be an integer", details={field: ["must be an integer"]})
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise InvalidInput(f"{field}: must be {bound}", details={field: [f"must be {bound}"]})
    return value


def _text(field: str, value: Any, *, max_length: int, required: bool) -> str | None:
    if value is None or value == "":
        if required:
            raise InvalidInput(f"{field}: required", details={field: ["required"]})
        return None if value is None else ""
    if not isinstance(value, str) or len(value) > max_length:
        reason = f"must be a string of at most {max_length} characters"
        raise InvalidInput(f"{field}: {reason}", details={field: [reason]})
    return value


def validate_payload(payload: Any, *, scopes: list[str] | None = None) -> dict:
    """The whole pipeline payload: schema, step ids, tools, templates, the agent's scopes.

    Raises InvalidInput listing every problem with its path (`payload.pipeline[2].with.url`).
    """
    from pipelines.validation import validate_payload as validate_pipeline

    return validate_pipeline(payload, scopes=scopes)


def _validated_schedule(kind: str, expr: str | None, tz: str, now: datetime) -> str | None:
    """Validate the schedule; return the expression to store (rrules get their DTSTART)."""
    _choice("schedule_kind", kind, ScheduleKind.values)
    try:
        schedules.validate(kind, expr, tz, now)
    except schedules.ScheduleError as exc:
        field = "timezone" if str(exc).startswith("unknown timezone") else "schedule_expr"
        raise InvalidInput(f"{field}: {exc}", details={field: [str(exc)]}) from exc
    if kind == ScheduleKind.RRULE:
        # Anchor the rule at creation so INTERVAL=2 keeps its phase across restarts.
        return schedules.with_dtstart(expr, tz, now)
    return expr


def first_run_at(task: Task, after: datetime) -> datetime | None:
    """The task's first schedule instant strictly after `after`, or None (nothing left)."""
    if task.status != TaskStatus.ACTIVE or task.schedule_kind not in TIME_KINDS:
        return None
    found = schedules.next_occurrences(
        task.schedule_kind, task.schedule_expr, task.timezone, after, 1
    )
    return found[0] if found else None


def instants_between(task: Task, start: datetime, end: datetime, limit: int) -> list[datetime]:
    """Schedule instants in (start, end], at most `limit`."""
    if task.schedule_kind not in TIME_KINDS:
        return []
    found = schedules.next_occurrences(
        task.schedule_kind, task.schedule_expr, task.timezone, start, limit
    )
    return [instant for instant in found if instant <= end]


# -- ledger ---------------------------------------------------------------------------------


def record_skipped(
    task_id: Any,
    instants: Iterable[datetime],
    *,
    reason: str,
    now: datetime,
    details: dict | None = None,
) -> int:
    """Write one ledger row per instant; return how many."""
    rows = [
        SkippedOccurrence(
            task_id=task_id,
            scheduled_for=instant,
            reason=reason,
            lateness_seconds=(now - instant).total_seconds(),
            details=details or {},
            recorded_at=now,
        )
        for instant in instants
    ]
    SkippedOccurrence.objects.bulk_create(rows)
    return len(rows)


def _drop_queued(task: Task, *, reason: str, now: datetime) -> int:
    """Delete the task's queued occurrences (running ones finish) and ledger them."""
    dropped = list(
        Occurrence.objects.filter(task=task, state=OccurrenceState.QUEUED)
        .values_list("scheduled_for", flat=True)
        .order_by("scheduled_for")
    )
    Occurrence.objects.filter(task=task, state=OccurrenceState.QUEUED).delete()
    record_skipped(task.id, dropped, reason=reason, now=now)
    return len(dropped)


def _locked(task_id: Any) -> Task:
    """Lock the task row for the rest of the transaction; raise NotFound."""
    try:
        return Task.objects.select_for_update().get(pk=task_id)
    except (Task.DoesNotExist, ValueError, TypeError) as exc:
        raise NotFound(f"task {task_id} not found") from exc


# -- use cases --------------------------------------------------------------------------------


def task_create(
    *,
    created_by: Agent,
    actor: Actor,
    title: str,
    schedule_kind: str,
    payload: dict,
    schedule_expr: str | None = None,
    description: str = "",
    timezone_name: str | None = None,
    priority: int = 5,
    dedupe_key: str | None = None,
    dedupe_window_seconds: int = 0,
    max_retries: int | None = None,
    backoff_strategy: str = BackoffStrategy.EXPONENTIAL_JITTER,
    concurrency_key: str | None = None,
    misfire_policy: str = MisfirePolicy.COALESCE,
    timeout_seconds: int | None = None,
    now: datetime | None = None,
) -> Task:
    """Validate and create a task; its first occurrence is scheduled at once.

    Raises InvalidInput naming the field (schedule errors included); nothing is written then.
    """
    now = now or timezone.now()
    tz = timezone_name or settings.TIME_ZONE
    task = Task(
        created_by=created_by,
        title=_text("title", title, max_length=200, required=True),
        description=_text("description", description, max_length=2000, required=False) or "",
        schedule_kind=schedule_kind,
        schedule_expr=_validated_schedule(schedule_kind, schedule_expr, tz, now),
        timezone=tz,
        payload=validate_payload(payload, scopes=created_by.scopes),
        priority=_int_in("priority", priority, 1, 9),
        dedupe_key=_text("dedupe_key", dedupe_key, max_length=100, required=False),
        dedupe_window_seconds=_int_in("dedupe_window_seconds", dedupe_window_seconds, 0),
        max_retries=_int_in(
            "max_retries",
            settings.WORKER_MAX_RETRIES if max_retries is None else max_retries,
            0,
            100,
        ),
        backoff_strategy=_choice("backoff_strategy", backoff_strategy, BackoffStrategy.values),
        concurrency_key=_text("concurrency_key", concurrency_key, max_length=100, required=False),
        misfire_policy=_choice("misfire_policy", misfire_policy, MisfirePolicy.values),
        timeout_seconds=(
            None if timeout_seconds is None else _int_in("timeout_seconds", timeout_seconds, 1)
        ),
        created_at=now,
    )
    task.next_run_at = first_run_at(task, now)
    with transaction.atomic():
        task.save(force_insert=True)
        outbox_add(type="task.created", task_id=task.id)
        record(
            actor=actor,
            action="task.created",
            subject=task,
            details={
                "title": task.title,
                "schedule_kind": task.schedule_kind,
                "schedule_expr": task.schedule_expr,
                "timezone": task.timezone,
                "next_run_at": task.next_run_at,
            },
        )
        notify(SCHEDULER_CHANNEL)
    return task


def task_create_deduplicated(
    *, created_by: Agent, dedupe_key: str | None, dedupe_window_seconds: int = 0, **fields: Any
) -> tuple[Task, bool]:
    """Create a task unless the agent created one with the same dedupe_key within the window.

    Returns (task, created). Concurrent duplicates are serialised by a transaction-scoped
    advisory lock on (agent, dedupe_key), so two racing requests yield one task.
    Arguments are task_create's.
    """
    if not dedupe_key or not dedupe_window_seconds:
        task = task_create(
            created_by=created_by,
            dedupe_key=dedupe_key,
            dedupe_window_seconds=dedupe_window_seconds,
            **fields,
        )
        return task, True
    now = fields.pop("now", None) or timezone.now()
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                [f"task-dedupe:{created_by.pk}:{dedupe_key}"],
            )
        window_start = now - timedelta(seconds=dedupe_window_seconds)
        existing = (
            Task.objects.filter(
                created_by=created_by, dedupe_key=dedupe_key, created_at__gte=window_start
            )
            .order_by("-created_at")
            .first()
        )
        if existing is not None:
            # Only for a request that is valid itself (task_create validates the others).
            validate_payload(fields.get("payload"), scopes=created_by.scopes)
            return existing, False
        task = task_create(
            created_by=created_by,
            dedupe_key=dedupe_key,
            dedupe_window_seconds=dedupe_window_seconds,
            now=now,
            **fields,
        )
        return task, True


def task_update(
    *, task_id: Any, changes: dict[str, Any], actor: Actor, now: datetime | None = None
) -> Task:
    """Apply a partial update; a schedule change re-validates and reschedules at once.

    Raises InvalidInput for unknown fields or bad values, NotFound for a missing task.
    """
    unknown = set(changes) - UPDATABLE_FIELDS
    if unknown:
        names = ", ".join(sorted(unknown))
        raise InvalidInput(
            f"cannot update: {names}", details={name: ["not updatable"] for name in unknown}
        )
    now = now or timezone.now()
    with transaction.atomic():
        task = _locked(task_id)
        before = {field: getattr(task, field) for field in changes}
        for field, value in changes.items():
            setattr(task, field, value)
        _revalidate(task, changes, now)
        schedule_changed = bool(_SCHEDULE_FIELDS & set(changes)) or "status" in changes
        if schedule_changed:
            _drop_queued(task, reason=SkipReason.RESCHEDULED, now=now)
            task.next_run_at = first_run_at(task, now)
        task.save()
        Occurrence.objects.filter(task=task, state=OccurrenceState.QUEUED).update(
            priority=task.priority, concurrency_key=task.concurrency_key
        )
        outbox_add(type="task.updated", task_id=task.id, data={"changed": sorted(changes)})
        record(
            actor=actor,
            action="task.updated",
            subject=task,
            details={
                "changed": sorted(changes),
                "before": {k: v for k, v in before.items() if k != "payload"},
                "next_run_at": task.next_run_at,
            },
        )
        notify(SCHEDULER_CHANNEL)
    return task


def _revalidate(task: Task, changes: dict[str, Any], now: datetime) -> None:
    if _SCHEDULE_FIELDS & set(changes):
        if "schedule_expr" in changes and task.schedule_kind == ScheduleKind.RRULE:
            task.schedule_expr = _validated_schedule(
                task.schedule_kind, task.schedule_expr, task.timezone, now
            )
        else:
            _validated_schedule(task.schedule_kind, task.schedule_expr, task.timezone, now)
    if "title" in changes:
        _text("title", task.title, max_length=200, required=True)
    if "payload" in changes:
        validate_payload(task.payload, scopes=task.created_by.scopes)
    if "priority" in changes:
        _int_in("priority", task.priority, 1, 9)
    if "status" in changes:
        _choice("status", task.status, TaskStatus.values)
    if "max_retries" in changes:
        _int_in("max_retries", task.max_retries, 0, 100)
    if "dedupe_window_seconds" in changes:
        _int_in("dedupe_window_seconds", task.dedupe_window_seconds, 0)
    if "backoff_strategy" in changes:
        _choice("backoff_strategy", task.backoff_strategy, BackoffStrategy.values)
    if "misfire_policy" in changes:
        _choice("misfire_policy", task.misfire_policy, MisfirePolicy.values)
    if changes.get("timeout_seconds") is not None:
        _int_in("timeout_seconds", task.timeout_seconds, 1)


def _transition(task_id: Any, *, allowed_from: set[str], to: str, action: str) -> Task:
    """Lock the task and move it from one of `allowed_from` to `to`; raise Conflict otherwise."""
    task = _locked(task_id)
    if task.status not in allowed_from:
        raise Conflict(
            f"task is {task.status}; {action} needs it to be {' or '.join(sorted(allowed_from))}",
            details={"status": task.status},
        )
    task.status = to
    return task


def task_pause(*, task_id: Any, actor: Actor, now: datetime | None = None) -> Task:
    """Stop scheduling; queued occurrences are dropped (and ledgered), running ones finish."""
    now = now or timezone.now()
    with transaction.atomic():
        task = _transition(
            task_id, allowed_from={TaskStatus.ACTIVE}, to=TaskStatus.PAUSED, action="pause"
        )
        task.next_run_at = None
        task.paused_at = now
        task.save(update_fields=["status", "next_run_at", "paused_at", "updated_at"])
        dropped = _drop_queued(task, reason=SkipReason.PAUSED, now=now)
        outbox_add(type="task.paused", task_id=task.id)
        record(actor=actor, action="task.paused", subject=task, details={"dropped": dropped})
        notify(SCHEDULER_CHANNEL)
    return task


def task_resume(*, task_id: Any, actor: Actor, now: datetime | None = None) -> Task:
    """Schedule again from now on; instants that fell due while paused are ledgered."""
    now = now or timezone.now()
    with transaction.atomic():
        task = _transition(
            task_id, allowed_from={TaskStatus.PAUSED}, to=TaskStatus.ACTIVE, action="resume"
        )
        paused_at = task.paused_at or now
        missed = instants_between(task, paused_at, now, LEDGER_LIMIT)
        record_skipped(task.id, missed, reason=SkipReason.PAUSED, now=now)
        task.next_run_at = first_run_at(task, now)
        task.paused_at = None
        task.save(update_fields=["status", "next_run_at", "paused_at", "updated_at"])
        outbox_add(type="task.resumed", task_id=task.id)
        record(
            actor=actor,
            action="task.resumed",
            subject=task,
            details={"missed_while_paused": len(missed), "next_run_at": task.next_run_at},
        )
        notify(SCHEDULER_CHANNEL)
    return task


def task_cancel(*, task_id: Any, actor: Actor, now: datetime | None = None) -> Task:
    """End the task for good; queued occurrences are dropped, running ones finish."""
    now = now or timezone.now()
    with transaction.atomic():
        task = _transition(
            task_id,
            allowed_from={TaskStatus.ACTIVE, TaskStatus.PAUSED},
            to=TaskStatus.CANCELED,
            action="cancel",
        )
        task.next_run_at = None
        task.save(update_fields=["status", "next_run_at", "updated_at"])
        dropped = _drop_queued(task, reason=SkipReason.CANCELED, now=now)
        outbox_add(type="task.canceled", task_id=task.id)
        record(actor=actor, action="task.canceled", subject=task, details={"dropped": dropped})
        notify(SCHEDULER_CHANNEL)
    return task


@dataclass(frozen=True)
class StatusChange:
    """What `task_set_status` did: the task as it now stands, and whether it moved."""

    task: Task
    changed: bool
    old_status: str
    dropped: int  # queued occurrences removed by the move (pause, cancel)


def task_set_status(
    *, task_id: Any, status: str, actor: Actor, now: datetime | None = None
) -> StatusChange:
    """Pause, resume or cancel, where asking for the status a task already has is no error.

    The REST actions and MCP tools use this (the original answered "already has status"
    with success); `task_pause`/`task_resume`/`task_cancel` stay strict for the admin.
    Raises InvalidInput for another status, Conflict for a move that is not allowed
    (resuming a canceled task), NotFound for a missing task.
    """
    service = _STATUS_SERVICES.get(status)
    if service is None:
        _choice("status", status, _STATUS_SERVICES)
    with transaction.atomic():
        task = _locked(task_id)
        old_status = task.status
        if old_status == status:
            return StatusChange(task=task, changed=False, old_status=old_status, dropped=0)
        queued = Occurrence.objects.filter(task=task, state=OccurrenceState.QUEUED).count()
        task = service(task_id=task.id, actor=actor, now=now)
    dropped = 0 if status == TaskStatus.ACTIVE else queued
    return StatusChange(task=task, changed=True, old_status=old_status, dropped=dropped)


def task_snooze(
    *,
    task_id: Any,
    delay_seconds: int,
    actor: Actor,
    reason: str | None = None,
    now: datetime | None = None,
) -> Task:
    """Delay the task by `delay_seconds` (1..604800).

    Queued occurrences move to now + delay. Schedule instants falling due within the delay
    fold into one occurrence at now + delay (the first of them; the others are ledgered as
    snoozed); the schedule then continues after the delay.
    """
    _int_in("delay_seconds", delay_seconds, 1, 7 * 24 * 3600)
    _text("reason", reason, max_length=200, required=False)
    now = now or timezone.now()
    until = now + timedelta(seconds=delay_seconds)
    with transaction.atomic():
        task = _locked(task_id)
        if task.status != TaskStatus.ACTIVE:
            raise Conflict(
                f"task is {task.status}; only active tasks can be snoozed",
                details={"status": task.status},
            )
        moved = Occurrence.objects.filter(task=task, state=OccurrenceState.QUEUED).update(
            run_at=until
        )
        folded: list[datetime] = []
        if task.next_run_at is not None and task.next_run_at <= until:
            folded = [
                task.next_run_at,
                *instants_between(task, task.next_run_at, until, LEDGER_LIMIT),
            ]
            created = _insert_occurrence(
                task, scheduled_for=folded[0], run_at=until, trigger=Trigger.SCHEDULE
            )
            moved += int(created)
            record_skipped(
                task.id, folded[1:], reason=SkipReason.SNOOZED, now=now,
                details={"until": until.isoformat(), "reason": reason or ""},
            )  # fmt: skip
            task.next_run_at = first_run_at(task, until)
            task.save(update_fields=["next_run_at", "updated_at"])
        record(
            actor=actor,
            action="task.snoozed",
            subject=task,
            details={
                "delay_seconds": delay_seconds,
                "until": until,
                "reason": reason,
                "moved": moved,
                "folded": max(len(folded) - 1, 0),
            },
        )
        notify(SCHEDULER_CHANNEL)
    return task


_STATUS_SERVICES = {
    TaskStatus.PAUSED: task_pause,
    TaskStatus.ACTIVE: task_resume,
    TaskStatus.CANCELED: task_cancel,
}


def _insert_occurrence(
    task: Task, *, scheduled_for: datetime, run_at: datetime, trigger: str
) -> bool:
    """Queue one occurrence; False when (task, scheduled_for) is already queued."""
    try:
        with transaction.atomic():
            Occurrence.objects.create(
                task=task,
                scheduled_for=scheduled_for,
                run_at=run_at,
                priority=task.priority,
                concurrency_key=task.concurrency_key,
                trigger=trigger,
            )
    except IntegrityError:
        return False
    return True


def task_run_now(*, task_id: Any, actor: Actor, now: datetime | None = None) -> Occurrence:
    """Queue a manual occurrence due now; the schedule is not affected."""
    now = now or timezone.now()
    with transaction.atomic():
        task = _locked(task_id)
        if task.status == TaskStatus.CANCELED:
            raise Conflict("task is canceled; it cannot run", details={"status": task.status})
        instant = now
        # (task, scheduled_for) is unique; two run_now calls in one microsecond get two rows.
        while Occurrence.objects.filter(task=task, scheduled_for=instant).exists():
            instant += timedelta(microseconds=1)
        occurrence = Occurrence.objects.create(
            task=task,
            scheduled_for=instant,
            run_at=now,
            priority=task.priority,
            concurrency_key=task.concurrency_key,
            trigger=Trigger.MANUAL,
        )
        record(
            actor=actor,
            action="task.run_now",
            subject=task,
            details={"occurrence_id": occurrence.id},
        )
        notify(WORKER_CHANNEL)
    return occurrence


def occurrence_rerun_dead(*, occurrence_ids: list[int], actor: Actor) -> list[int]:
    """Give dead-lettered occurrences a fresh start (due now, full retry budget).

    Only occurrences that are still dead are touched; returns the new occurrence ids.
    """
    from tasks import queue

    with transaction.atomic():
        task_ids = list(
            Occurrence.objects.filter(id__in=occurrence_ids, state=OccurrenceState.DEAD)
            .values_list("task_id", flat=True)
            .distinct()
        )
        new_ids = queue.rerun_dead(list(occurrence_ids))
        for task_id in task_ids:
            record(
                actor=actor,
                action="occurrence.rerun",
                subject_type="task",
                subject_id=str(task_id),
                details={"occurrences": list(occurrence_ids), "requeued": len(new_ids)},
            )
    return new_ids


# -- events -----------------------------------------------------------------------------------

# Enqueue one event's occurrences in one statement. (task, scheduled_for) is unique and
# scheduled_for is the event's instant, so a second event in the same microsecond collides:
# DO NOTHING, and the caller retries just those tasks one microsecond later.
INSERT_EVENT_OCCURRENCES = """
INSERT INTO tasks_occurrence
    (task_id, scheduled_for, run_at, priority, concurrency_key, state, attempt, trigger,
     last_error, correlation_id, event_id, created_at)
SELECT v.task_id, %(at)s, %(run_at)s, v.priority, v.concurrency_key, 'queued', 0, 'event',
       '', %(correlation_id)s, %(event_id)s, clock_timestamp()
FROM jsonb_to_recordset(%(rows)s::jsonb) AS v(task_id uuid, priority smallint,
                                              concurrency_key text)
ON CONFLICT (task_id, scheduled_for) DO NOTHING
RETURNING task_id
"""


def _triggered_tasks(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Active event and condition tasks that fire for `document`."""
    from tasks.events import triggers

    candidates = Task.objects.filter(
        status=TaskStatus.ACTIVE, schedule_kind__in=[ScheduleKind.EVENT, ScheduleKind.CONDITION]
    ).values_list("id", "schedule_kind", "schedule_expr", "priority", "concurrency_key")
    return [
        {"task_id": str(task_id), "priority": priority, "concurrency_key": key}
        for task_id, kind, expr, priority, key in candidates.iterator(chunk_size=2000)
        if triggers(kind, expr, document)
    ]


def event_publish(
    *,
    topic: str,
    payload: dict,
    actor: Actor,
    source: Agent | None = None,
    idempotency_key: str | None = None,
    now: datetime | None = None,
) -> tuple[Event, bool]:
    """Store an event and enqueue an occurrence of every active task it triggers.

    Returns (event, created). With an idempotency key already used by the same source, the
    first event is returned with created=False and nothing is written. Raises InvalidInput
    (nothing written) for a malformed topic, a non-object or oversized payload.
    """
    from ordinaut.correlation import get_correlation_id
    from tasks.events import event_document, validate_event

    validate_event(topic, payload, idempotency_key)
    with transaction.atomic():
        if idempotency_key is not None:
            # Serialise racing retries of one key; the unique index is the backstop.
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                    [f"event-idempotency:{source.pk if source else ''}:{idempotency_key}"],
                )
            existing = Event.objects.filter(
                source_agent=source, idempotency_key=idempotency_key
            ).first()
            if existing is not None:
                return existing, False
        event = Event.objects.create(
            topic=topic,
            payload=payload,
            source_agent=source,
            idempotency_key=idempotency_key,
            published_at=now or timezone.now(),
        )
        document = event_document(topic, payload, source.pk if source else None)
        pending = _triggered_tasks(document)
        instant, enqueued = event.published_at, 0
        while pending:
            with connection.cursor() as cursor:
                cursor.execute(
                    INSERT_EVENT_OCCURRENCES,
                    {
                        "at": instant,
                        "run_at": event.published_at,
                        "correlation_id": get_correlation_id() or "",
                        "event_id": event.id,
                        "rows": json.dumps(pending),
                    },
                )
                inserted = {str(row[0]) for row in cursor.fetchall()}
            enqueued += len(inserted)
            pending = [row for row in pending if row["task_id"] not in inserted]
            instant += timedelta(microseconds=1)
        event.triggered_tasks = enqueued
        event.save(update_fields=["triggered_tasks"])
        outbox_add(type="event.published", data={"event_id": str(event.id), "topic": topic})
        record(
            actor=actor,
            action="event.published",
            subject=event,
            details={"topic": topic, "triggered_tasks": enqueued},
        )
    return event, True


# -- approvals --------------------------------------------------------------------------------

_DECISIONS = {
    "approve": ApprovalStatus.APPROVED,
    "approved": ApprovalStatus.APPROVED,
    "reject": ApprovalStatus.REJECTED,
    "rejected": ApprovalStatus.REJECTED,
}


def may_decide(approval: Approval, agent: Agent, *, is_admin: bool) -> bool:
    """Whether `agent` is among the approval's deciders (it can see the approval at all).

    An approval naming `approvers` (agent names or ids) is for them only; without that list
    any agent holding approvals:decide may decide. `admin` may decide any.
    """
    if is_admin or not approval.approvers:
        return True
    return agent.name in approval.approvers or str(agent.pk) in approval.approvers


def _locked_approval(approval_id: Any) -> Approval:
    try:
        return Approval.objects.select_for_update().select_related("task").get(pk=approval_id)
    except (Approval.DoesNotExist, ValueError, TypeError, ValidationError) as exc:
        raise NotFound(f"approval {approval_id} not found") from exc


def _settle(
    approval: Approval, *, status: str, decided_by: str, comment: str, now: datetime
) -> bool:
    """Record the decision on the approval and on the parked step, and requeue the run."""
    from pipelines.executor import record_decision
    from tasks import queue

    approval.status = status
    approval.decided_by = decided_by
    approval.comment = comment
    approval.decided_at = now
    # Conditional on pending: the row is locked, this is the backstop of that check.
    updated = Approval.objects.filter(pk=approval.pk, status=ApprovalStatus.PENDING).update(
        status=status, decided_by=decided_by, comment=comment, decided_at=now
    )
    if updated != 1:
        raise Conflict(f"approval {approval.pk} was decided meanwhile")
    record_decision(
        run_id=approval.run_id,
        step_id=approval.step_id,
        decision={
            "status": status,
            "decided_by": decided_by,
            "comment": comment,
            "decided_at": now.isoformat(),
        },
    )
    resumed = queue.resume(approval.occurrence_id)
    outbox_add(
        type=f"approval.{status}",
        task_id=approval.task_id,
        run_id=approval.run_id,
        data={"approval_id": str(approval.pk), "decided_by": decided_by},
    )
    notify(WORKER_CHANNEL)
    return resumed


def approval_decide(
    *,
    approval_id: Any,
    decision: str,
    actor: Actor,
    comment: str = "",
    agent: Agent | None = None,
    is_admin: bool = False,
    now: datetime | None = None,
) -> Approval:
    """Approve or reject a pending approval; the parked run resumes as its next attempt.

    `agent` is the deciding agent (None for an operator in the admin). Raises NotFound for an
    unknown approval or one the agent is not a decider of, Forbidden for an agent deciding
    its own task's request (unless APPROVALS_ALLOW_SELF_DECISION), Conflict (409) for one
    already decided or expired, InvalidInput for a decision other than approve/reject.
    """
    status = _DECISIONS.get(str(decision).lower())
    if status is None:
        raise InvalidInput(
            "decision: must be approve or reject", details={"decision": ["approve or reject"]}
        )
    _text("comment", comment, max_length=2000, required=False)
    now = now or timezone.now()
    with transaction.atomic():
        approval = _locked_approval(approval_id)
        if agent is not None:
            if not may_decide(approval, agent, is_admin=is_admin):
                raise NotFound(f"approval {approval_id} not found")
            own = approval.task.created_by_id == agent.pk
            if (
                own
                and not is_admin
                and not getattr(settings, "APPROVALS_ALLOW_SELF_DECISION", False)
            ):
                raise Forbidden("an agent may not decide its own task's approval request")
        if approval.status != ApprovalStatus.PENDING:
            raise Conflict(
                f"approval is already {approval.status}; it cannot be decided again",
                details={"status": approval.status},
            )
        if approval.expires_at <= now:
            raise Conflict(
                f"approval expired at {approval.expires_at.isoformat()}; it cannot be decided",
                details={"status": "expired"},
            )
        decided_by = actor.name or actor.id
        _settle(approval, status=status, decided_by=decided_by, comment=comment or "", now=now)
        record(
            actor=actor,
            action=f"approval.{status}",
            subject=approval,
            details={
                "task_id": approval.task_id,
                "run_id": approval.run_id,
                "step_id": approval.step_id,
                "comment": comment or "",
            },
        )
    return approval


def approval_expire_due(*, now: datetime | None = None, limit: int = 100) -> int:
    """Expire pending approvals past their expires_at (the scheduler calls this each tick).

    Expiry is a decision like a rejection: the run resumes and sees status `expired`.
    SKIP LOCKED lets several schedulers share the work and never waits on a decider.
    """
    now = now or timezone.now()
    expired = 0
    with transaction.atomic():
        due = list(
            Approval.objects.select_for_update(skip_locked=True)
            .filter(status=ApprovalStatus.PENDING, expires_at__lte=now)
            .order_by("expires_at")[:limit]
        )
        for approval in due:
            _settle(
                approval, status=ApprovalStatus.EXPIRED, decided_by="system:scheduler",
                comment="expired without a decision", now=now,
            )  # fmt: skip
            record(
                actor=Actor.system("scheduler"),
                action="approval.expired",
                subject=approval,
                details={"task_id": approval.task_id, "run_id": approval.run_id},
            )
            expired += 1
    return expired
