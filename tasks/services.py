"""Use cases that change tasks: create, update, pause, resume, cancel, snooze, run now;
the occurrence ledger; re-running dead occurrences.

Each is one transaction that locks the task row (so it serialises with the scheduler, which
skips locked tasks), recomputes `next_run_at` at once, has `tasks.queue` drop or move what
is queued, writes its audit event, and NOTIFYs the scheduler so the change takes effect
without waiting for a poll. REST views, MCP tools and admin actions all call these.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from agents.models import Agent
from audit import record
from audit.services import Actor
from ordinaut.database import advisory_xact_lock
from ordinaut.errors import Conflict, InvalidInput, NotFound
from tasks import queue as occurrence_queue
from tasks import schedules
from tasks.budgets import require_active_task_room, require_hourly_room
from tasks.channels import SCHEDULER_CHANNEL, WORKER_CHANNEL, notify
from tasks.delivery.outbox import outbox_add
from tasks.models import (
    TIME_KINDS,
    BackoffStrategy,
    MisfirePolicy,
    Occurrence,
    OccurrenceState,
    SkippedOccurrence,
    SkipReason,
    Task,
    TaskStatus,
    Trigger,
)
from tasks.selectors import queued_occurrence_count
from tasks.validation import (
    MAX_DEDUPE_WINDOW_SECONDS,
    MAX_RETRIES,
    MAX_SNOOZE_SECONDS,
    MAX_TIMEOUT_SECONDS,
    SCHEDULE_FIELDS,
    choice_field,
    int_field,
    revalidate_changes,
    text_field,
    validate_payload,
    validated_schedule,
)

# The ledger records at most this many instants per pause or snooze (a minutely task paused
# for a month must not write 43,200 rows); the audit event carries the true count.
LEDGER_LIMIT = 1000
# Fields an update may change (the rest are identity or maintained by the scheduler).
UPDATABLE_FIELDS = {
    "title", "description", "schedule_kind", "schedule_expr", "timezone", "payload",
    "priority", "status", "dedupe_key", "dedupe_window_seconds", "max_retries",
    "backoff_strategy", "concurrency_key", "misfire_policy", "timeout_seconds",
}  # fmt: skip


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
    dropped = occurrence_queue.drop_queued(task.id)
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
    retries = settings.WORKER_MAX_RETRIES if max_retries is None else max_retries
    task = Task(
        created_by=created_by,
        title=text_field("title", title, max_length=200, required=True),
        description=text_field("description", description, max_length=2000, required=False) or "",
        schedule_kind=schedule_kind,
        schedule_expr=validated_schedule(schedule_kind, schedule_expr, tz, now),
        timezone=tz,
        payload=validate_payload(payload, scopes=created_by.scopes),
        priority=int_field("priority", priority, 1, 9),
        dedupe_key=text_field("dedupe_key", dedupe_key, max_length=100, required=False),
        dedupe_window_seconds=int_field(
            "dedupe_window_seconds", dedupe_window_seconds, 0, MAX_DEDUPE_WINDOW_SECONDS
        ),
        max_retries=int_field("max_retries", retries, 0, MAX_RETRIES),
        backoff_strategy=choice_field("backoff_strategy", backoff_strategy, BackoffStrategy.values),
        concurrency_key=text_field(
            "concurrency_key", concurrency_key, max_length=100, required=False
        ),
        misfire_policy=choice_field("misfire_policy", misfire_policy, MisfirePolicy.values),
        timeout_seconds=(
            None
            if timeout_seconds is None
            else int_field("timeout_seconds", timeout_seconds, 1, MAX_TIMEOUT_SECONDS)
        ),
        created_at=now,
    )
    task.next_run_at = first_run_at(task, now)
    _insert_task(task, actor=actor)
    return task


def _insert_task(task: Task, *, actor: Actor) -> None:
    """Save a validated new task with its outbox message and audit row; wake the scheduler."""
    with transaction.atomic():
        if task.status == TaskStatus.ACTIVE:
            require_active_task_room(task.created_by_id)
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
        advisory_xact_lock(f"task-dedupe:{created_by.pk}:{dedupe_key}")
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
        revalidate_changes(task, changes, now)
        if before.get("status", TaskStatus.ACTIVE) != TaskStatus.ACTIVE == task.status:
            require_active_task_room(task.created_by_id)
        schedule_changed = bool(SCHEDULE_FIELDS & set(changes)) or "status" in changes
        if schedule_changed:
            _drop_queued(task, reason=SkipReason.RESCHEDULED, now=now)
            task.next_run_at = first_run_at(task, now)
        task.save()
        occurrence_queue.retarget_queued(
            task.id, priority=task.priority, concurrency_key=task.concurrency_key
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
        require_active_task_room(task.created_by_id)
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
        choice_field("status", status, _STATUS_SERVICES)
    with transaction.atomic():
        task = _locked(task_id)
        old_status = task.status
        if old_status == status:
            return StatusChange(task=task, changed=False, old_status=old_status, dropped=0)
        queued = queued_occurrence_count(task=task)
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
    int_field("delay_seconds", delay_seconds, 1, MAX_SNOOZE_SECONDS)
    text_field("reason", reason, max_length=200, required=False)
    now = now or timezone.now()
    until = now + timedelta(seconds=delay_seconds)
    with transaction.atomic():
        task = _locked(task_id)
        if task.status != TaskStatus.ACTIVE:
            raise Conflict(
                f"task is {task.status}; only active tasks can be snoozed",
                details={"status": task.status},
            )
        moved = occurrence_queue.postpone_queued(task.id, run_at=until)
        folded: list[datetime] = []
        if task.next_run_at is not None and task.next_run_at <= until:
            folded = [
                task.next_run_at,
                *instants_between(task, task.next_run_at, until, LEDGER_LIMIT),
            ]
            created = occurrence_queue.enqueue_one(
                task, scheduled_for=folded[0], run_at=until, trigger=Trigger.SCHEDULE
            )
            moved += created is not None
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


def task_run_now(*, task_id: Any, actor: Actor, now: datetime | None = None) -> Occurrence:
    """Queue a manual occurrence due now; the schedule is not affected."""
    now = now or timezone.now()
    with transaction.atomic():
        task = _locked(task_id)
        if task.status == TaskStatus.CANCELED:
            raise Conflict("task is canceled; it cannot run", details={"status": task.status})
        require_hourly_room(task.created_by_id, now=now)
        occurrence = occurrence_queue.enqueue_manual(task, now=now)
        record(
            actor=actor,
            action="task.run_now",
            subject=task,
            details={"occurrence_id": occurrence.id},
        )
        notify(WORKER_CHANNEL)
    return occurrence


# -- the agent's kill switch (receivers of agents.signals; see tasks/apps.py) ----------------


def agent_work_halt(*, agent: Agent, at: datetime, **_: Any) -> int:
    """The agent was paused or deactivated: stop scheduling its tasks; return how many.

    Its tasks keep their own status. Queued occurrences stay where they are: the claim
    passes over a halted agent's work, and the scheduler nulls `next_run_at` of any task of
    a halted agent it still finds due (a task created while the pause commits).
    """
    return Task.objects.filter(
        created_by=agent, status=TaskStatus.ACTIVE, next_run_at__isnull=False
    ).update(next_run_at=None, updated_at=at)


def agent_work_restore(*, agent: Agent, since: datetime, at: datetime, **_: Any) -> int:
    """The agent runs again: each active scheduled task's instants in (since, at] follow its
    misfire policy (those not run are ledgered as `agent_paused`), and its schedule goes on.
    Returns how many occurrences were queued for missed instants."""
    queued = 0
    tasks = Task.objects.select_for_update().filter(
        created_by=agent, status=TaskStatus.ACTIVE, schedule_kind__in=TIME_KINDS
    )
    for task in tasks:
        missed = instants_between(task, max(since, task.created_at), at, LEDGER_LIMIT)
        already = set(
            Occurrence.objects.filter(task=task, scheduled_for__in=missed).values_list(
                "scheduled_for", flat=True
            )
        )
        missed = [instant for instant in missed if instant not in already]
        run, skipped = _misfire_split(task.misfire_policy, missed)
        for instant in run:
            queued += (
                occurrence_queue.enqueue_one(
                    task, scheduled_for=instant, run_at=at, trigger=Trigger.SCHEDULE
                )
                is not None
            )
        record_skipped(task.id, skipped, reason=SkipReason.AGENT_PAUSED, now=at)
        task.next_run_at = first_run_at(task, at)
        task.save(update_fields=["next_run_at", "updated_at"])
    notify(SCHEDULER_CHANNEL)
    notify(WORKER_CHANNEL)
    return queued


def _misfire_split(policy: str, missed: list[datetime]) -> tuple[list[datetime], list[datetime]]:
    """(instants to run now, instants to ledger) under a task's misfire policy."""
    if not missed or policy == MisfirePolicy.SKIP:
        return [], missed
    if policy == MisfirePolicy.CATCH_UP:
        limit = settings.SCHEDULER_CATCHUP_MAX
        return missed[:limit], missed[limit:]
    return missed[-1:], missed[:-1]  # coalesce: the latest runs for all of them


def occurrence_rerun_dead(*, occurrence_ids: list[int], actor: Actor) -> list[int]:
    """Give dead-lettered occurrences a fresh start (due now, full retry budget).

    Only occurrences that are still dead are touched; returns the new occurrence ids.
    """
    with transaction.atomic():
        task_ids = list(
            Occurrence.objects.filter(id__in=occurrence_ids, state=OccurrenceState.DEAD)
            .values_list("task_id", flat=True)
            .distinct()
        )
        new_ids = occurrence_queue.rerun_dead(list(occurrence_ids))
        for task_id in task_ids:
            record(
                actor=actor,
                action="occurrence.rerun",
                subject_type="task",
                subject_id=str(task_id),
                details={"occurrences": list(occurrence_ids), "requeued": len(new_ids)},
            )
    return new_ids
