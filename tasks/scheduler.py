"""The scheduler: turns active tasks' schedules into queued occurrences.

Each batch is one transaction: lock due tasks (`FOR UPDATE SKIP LOCKED`), insert their
occurrences, advance `next_run_at`, ledger what misfired, commit. Hence:

- any number of schedulers split the work and never enqueue an instant twice: a task row
  is locked by at most one of them, and the instant it enqueues and the `next_run_at` that
  moves past it commit together (the unique (task, scheduled_for) index backs this up);
- a crash anywhere (kill -9, lost connection) rolls the batch back whole: nothing is lost,
  the next tick of any scheduler does it again.

Occurrences are enqueued up to SCHEDULER_LOOKAHEAD_SECONDS early (with run_at at their
instant), so a burst of tasks due at the same second is already queued when it comes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from agents.services import revoked_tokens_prune
from ordinaut import metrics
from ordinaut.database import Listener
from tasks import approvals, retention, schedules
from tasks.budgets import hourly_room, take_room
from tasks.channels import SCHEDULER_CHANNEL, WORKER_CHANNEL, notify
from tasks.delivery import outbox, streams, webhooks
from tasks.models import MisfirePolicy, SchedulerHeartbeat, SkipReason
from tasks.queue import enqueue_scheduled
from tasks.services import record_skipped

logger = logging.getLogger(__name__)

# Occurrences one task may enqueue per tick inside the look-ahead window (a SECONDLY rule).
MAX_PER_TASK_PER_TICK = 100
# Seconds between retention passes (tasks.delivery.outbox.outbox_prune,
# agents.services.revoked_tokens_prune).
PRUNE_INTERVAL_SECONDS = 60.0
# After a database error the loop waits this long, doubling up to the maximum.
DB_RETRY_FIRST_SECONDS = 0.5
DB_RETRY_MAX_SECONDS = 10.0
# Sleeps are cut in slices this long so a stop request is honoured quickly.
STOP_CHECK_SECONDS = 0.5
# The per-tick memo of rule evaluations is dropped past this many entries (memory bound).
MEMO_MAX_ENTRIES = 100_000
_ONE_MICROSECOND = timedelta(microseconds=1)

# Lock a batch of due, active tasks. SKIP LOCKED: a row another scheduler holds (or a
# service is editing) is passed over, so two schedulers never work on the same task; the
# task's next_run_at moves in the same transaction, so once committed it is no longer due.
#
# `halted`: the task's agent is paused or inactive. Pausing nulls its tasks' next_run_at;
# one created or resumed while the pause commits can still turn up here, and is halted
# the same way (restoring the agent accounts for its missed instants).
LOCK_DUE_TASKS = """
SELECT t.id, t.schedule_kind, t.schedule_expr, t.timezone, t.next_run_at, t.priority,
       t.concurrency_key, t.misfire_policy, t.created_by_id,
       EXISTS (SELECT 1 FROM agents_agent AS a WHERE a.id = t.created_by_id
               AND (a.paused_at IS NOT NULL OR NOT a.is_active)) AS halted
FROM tasks_task AS t
WHERE t.status = 'active' AND t.next_run_at IS NOT NULL AND t.next_run_at <= %(horizon)s
ORDER BY t.next_run_at
LIMIT %(limit)s
FOR UPDATE OF t SKIP LOCKED
"""

# Advance every locked task's next_run_at in one statement (rows are ours: we hold locks).
ADVANCE_TASKS = """
UPDATE tasks_task AS t SET next_run_at = v.next_run_at
FROM jsonb_to_recordset(%s::jsonb) AS v(id uuid, next_run_at timestamptz)
WHERE t.id = v.id
"""

NEXT_DUE = """
SELECT min(next_run_at) FROM tasks_task WHERE status = 'active' AND next_run_at IS NOT NULL
"""


@dataclass
class TaskPlan:
    """What one tick does for one task."""

    enqueue: list[tuple[datetime, datetime]] = field(default_factory=list)  # (instant, run_at)
    skipped: list[tuple[datetime, str]] = field(default_factory=list)  # (instant, reason)
    next_run_at: datetime | None = None
    misfired: bool = False


NextFn = Callable[[str, str, str, datetime, int], list[datetime]]


def plan_task(
    *,
    kind: str,
    expr: str,
    tz: str,
    next_run_at: datetime,
    policy: str,
    now: datetime,
    horizon: datetime,
    grace: timedelta,
    catchup_max: int,
    next_fn: NextFn,
) -> TaskPlan:
    """Decide which instants of a due task to enqueue, which to ledger, and the new next_run_at.

    `next_run_at` is the first instant not yet handled (always an instant of the schedule).
    Instants older than now - grace misfired (the scheduler was down or far behind): the
    policy decides — coalesce (one run now for the latest, the rest ledgered), skip (all
    ledgered), catch_up (each runs now, at most `catchup_max`). Instants up to `horizon`
    are enqueued with run_at at their own time. Pure: no database, no clock.
    """
    plan = TaskPlan()
    cutoff = now - grace
    missed: list[datetime] = []
    cursor: datetime | None = next_run_at
    if next_run_at < cutoff:
        plan.misfired = True
        # Enumerate at most catchup_max + 1 missed instants; a longer outage is summarised.
        candidates = [next_run_at, *next_fn(kind, expr, tz, next_run_at, catchup_max)]
        missed = [instant for instant in candidates if instant < cutoff]
        following = next_fn(kind, expr, tz, cutoff - _ONE_MICROSECOND, 1)
        cursor = following[0] if following else None
    if missed:
        if policy == MisfirePolicy.CATCH_UP:
            kept, over = missed[:catchup_max], missed[catchup_max:]
            plan.enqueue += [(instant, now) for instant in kept]
            plan.skipped += [(instant, SkipReason.CATCH_UP_LIMIT) for instant in over]
        elif policy == MisfirePolicy.SKIP:
            plan.skipped += [(instant, SkipReason.MISFIRE_SKIPPED) for instant in missed]
        else:  # coalesce: the latest missed instant runs now, the others fold into it
            plan.enqueue.append((missed[-1], now))
            plan.skipped += [(instant, SkipReason.COALESCED) for instant in missed[:-1]]
    taken = 0
    while cursor is not None and cursor <= horizon and taken < MAX_PER_TASK_PER_TICK:
        plan.enqueue.append((cursor, cursor))
        taken += 1
        following = next_fn(kind, expr, tz, cursor, 1)
        cursor = following[0] if following else None
    plan.next_run_at = cursor
    return plan


def _within_budget(
    plan: TaskPlan, room: dict[str, int], agent_id: str
) -> list[tuple[datetime, datetime]]:
    """The plan's occurrences its agent's max_runs_per_hour leaves room for (taking that
    room); the rest move to the plan's ledger as `budget_exceeded`."""
    allowed = plan.enqueue[: take_room(room, agent_id, len(plan.enqueue))]
    over = plan.enqueue[len(allowed) :]
    plan.skipped += [(instant, SkipReason.BUDGET_EXCEEDED) for instant, _ in over]
    return allowed


@dataclass
class BatchResult:
    tasks: int = 0
    enqueued: int = 0
    skipped: int = 0
    misfired: int = 0
    # Seconds from each enqueued instant to its commit (negative: enqueued ahead of time).
    lags: list[float] = field(default_factory=list)


class Scheduler:
    """Runs ticks until told to stop. Safe to run any number of copies."""

    def __init__(
        self,
        *,
        batch_size: int | None = None,
        lookahead: float | None = None,
        poll_interval: float | None = None,
        clock: Callable[[], datetime] = timezone.now,
        name: str | None = None,
    ) -> None:
        self.batch_size = batch_size or settings.SCHEDULER_BATCH_SIZE
        self.lookahead = timedelta(
            seconds=settings.SCHEDULER_LOOKAHEAD_SECONDS if lookahead is None else lookahead
        )
        self.poll_interval = (
            settings.SCHEDULER_POLL_INTERVAL if poll_interval is None else poll_interval
        )
        self.grace = timedelta(seconds=settings.SCHEDULER_MISFIRE_GRACE_TIME)
        # next_occurrences answers at most MAX_OCCURRENCES per call.
        self.catchup_max = min(settings.SCHEDULER_CATCHUP_MAX, schedules.MAX_OCCURRENCES - 1)
        self.clock = clock
        self.name = name or f"scheduler@{socket.gethostname()}:{os.getpid()}"
        self._listener = Listener(SCHEDULER_CHANNEL)
        self._redis = None
        self._started = timezone.now()
        self._ticks = 0
        self._enqueued = 0
        self._next_prune = 0.0  # monotonic; the first housekeeping prunes

    # -- one tick -------------------------------------------------------------------------

    def tick(self) -> BatchResult:
        """Enqueue everything due now (batch after batch); return the totals."""
        total = BatchResult()
        # Rule evaluations shared by every task with the same schedule in this tick.
        memo: dict[tuple, list[datetime]] = {}

        def next_fn(kind: str, expr: str, tz: str, after: datetime, n: int) -> list[datetime]:
            key = (kind, expr, tz, after, n)
            found = memo.get(key)
            if found is None:
                found = memo[key] = schedules.next_occurrences(kind, expr, tz, after, n)
            return found

        while True:
            batch = self._tick_batch(next_fn)
            total.tasks += batch.tasks
            total.enqueued += batch.enqueued
            total.skipped += batch.skipped
            total.misfired += batch.misfired
            total.lags += batch.lags
            if batch.tasks < self.batch_size:
                return total
            if len(memo) > MEMO_MAX_ENTRIES:
                memo.clear()

    def _tick_batch(self, next_fn: NextFn) -> BatchResult:
        result = BatchResult()
        with transaction.atomic(), self._bulk_cursor() as cursor:
            now = self.clock()
            horizon = now + self.lookahead
            cursor.execute(LOCK_DUE_TASKS, {"horizon": horizon, "limit": self.batch_size})
            rows = cursor.fetchall()
            if not rows:
                return result
            occurrences: list[dict[str, Any]] = []
            advances: list[dict[str, Any]] = []
            earliest_run_at: datetime | None = None
            # Agents with a max_runs_per_hour budget: how many more they may queue now.
            room = hourly_room({row[8] for row in rows if not row[9]}, now=now)
            for (
                task_id,
                kind,
                expr,
                tz,
                next_run_at,
                priority,
                key,
                policy,
                agent_id,
                halted,
            ) in rows:
                if halted:
                    advances.append({"id": str(task_id), "next_run_at": None})
                    continue
                plan = self._plan(
                    task_id, kind, expr, tz, next_run_at, policy, now, horizon, next_fn
                )
                plan.enqueue = _within_budget(plan, room, str(agent_id))
                for instant, run_at in plan.enqueue:
                    occurrences.append(
                        {
                            "task_id": str(task_id), "scheduled_for": instant.isoformat(),
                            "run_at": run_at.isoformat(), "priority": priority,
                            "concurrency_key": key, "agent_id": str(agent_id),
                        }
                    )  # fmt: skip
                    result.lags.append(instant.timestamp())
                    if earliest_run_at is None or run_at < earliest_run_at:
                        earliest_run_at = run_at
                for reason in {reason for _, reason in plan.skipped}:
                    result.skipped += record_skipped(
                        task_id,
                        [instant for instant, r in plan.skipped if r == reason],
                        reason=reason,
                        now=now,
                    )
                result.misfired += plan.misfired
                advances.append(
                    {
                        "id": str(task_id),
                        "next_run_at": plan.next_run_at and plan.next_run_at.isoformat(),
                    }
                )
            result.enqueued = enqueue_scheduled(occurrences)
            cursor.execute(ADVANCE_TASKS, [json.dumps(advances)])
            if earliest_run_at is not None and earliest_run_at <= self.clock():
                # Wake idle workers for work that is already due (future work they poll for).
                notify(WORKER_CHANNEL)
            result.tasks = len(rows)
        committed = self.clock().timestamp()
        result.lags = [committed - instant for instant in result.lags]
        return result

    @staticmethod
    def _bulk_cursor() -> psycopg.Cursor:
        """A server-side-binding cursor on Django's connection (inside its transaction).

        Django's default client-side binding quotes the batch's arrays in Python, which
        cost a third of a tick; server-side parameters are adapted in C.
        """
        connection.ensure_connection()
        return psycopg.Cursor(connection.connection)

    def _plan(self, task_id, kind, expr, tz, next_run_at, policy, now, horizon, next_fn):  # noqa: ANN001, ANN202
        try:
            return plan_task(
                kind=kind, expr=expr, tz=tz, next_run_at=next_run_at, policy=policy,
                now=now, horizon=horizon, grace=self.grace, catchup_max=self.catchup_max,
                next_fn=next_fn,
            )  # fmt: skip
        except schedules.ScheduleError as exc:
            # A rule that validated once but no longer evaluates (e.g. tzdata changed):
            # stop scheduling it rather than failing the whole batch every tick.
            logger.error(
                "task %s has an unusable schedule; it will not fire: %s", task_id, exc,
                extra={"task_id": str(task_id)},
            )  # fmt: skip
            return TaskPlan(next_run_at=None)

    # -- housekeeping outside the tick's transactions ------------------------------------------

    def housekeeping(self) -> None:
        """Relay the outbox, expire approvals, read events, send webhooks, prune (per tick).

        Redis being down never stops scheduling: the outbox keeps the backlog. Database
        errors propagate to the loop like the tick's own; the inbound stream and webhooks
        are side channels whose errors are logged and retried next tick.
        """
        if self._redis is None:
            self._redis = outbox.redis_client()
        outbox.relay_safely(self._redis)
        approvals.approval_expire_due()
        streams.consume_safely(self._redis, consumer=self.name)
        webhooks.deliver_webhooks_safely()
        self._prune()

    def _prune(self) -> None:
        """Retention, at most once per PRUNE_INTERVAL: old runs, ledger rows, events and webhook
        deliveries (tasks/retention.py), published outbox rows, dead revocations."""
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_INTERVAL_SECONDS
        pruned = {
            **retention.prune(),
            "outbox": outbox.outbox_prune(),
            "revoked_tokens": revoked_tokens_prune(),
        }
        if any(pruned.values()):
            logger.info("pruned history past retention", extra={"pruned": pruned})

    # -- loop -------------------------------------------------------------------------------

    def run(self, stop: threading.Event, *, once: bool = False) -> None:
        """Tick, heartbeat, sleep until due or notified; survive database restarts."""
        backoff = DB_RETRY_FIRST_SECONDS
        while not stop.is_set():
            try:
                if not once:
                    # Listen before the first tick so no change made during it is missed.
                    self._listener.connect()
                started = time.monotonic()
                result = self.tick()
                metrics.enqueued(result.lags)
                self.housekeeping()
                self._heartbeat(result)
                self._log_tick(result, time.monotonic() - started)
                backoff = DB_RETRY_FIRST_SECONDS
                if once:
                    return
                self._sleep(stop)
            except (DatabaseError, psycopg.Error) as exc:
                # Django's errors from the ORM connection, psycopg's from the LISTEN one.
                if once:
                    raise
                logger.warning(
                    "database unavailable, retrying in %.1fs: %s", backoff, exc,
                    extra={"retry_in": backoff},
                )  # fmt: skip
                self._reset_connections()
                stop.wait(backoff)
                backoff = min(backoff * 2, DB_RETRY_MAX_SECONDS)
        self._listener.close()

    def _sleep(self, stop: threading.Event) -> None:
        """Wait for the next due task, a NOTIFY from a task change, or the poll interval."""
        wait = self.poll_interval
        with connection.cursor() as cursor:
            cursor.execute(NEXT_DUE)
            (next_due,) = cursor.fetchone()
        if next_due is not None:
            until_due = (next_due - self.lookahead - self.clock()).total_seconds()
            wait = max(0.0, min(wait, until_due))
        if wait <= 0 or stop.is_set():
            return
        deadline = time.monotonic() + wait
        # Wake in short slices so a stop request is honoured quickly.
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self._listener.wait(min(left, STOP_CHECK_SECONDS)):
                return

    def _reset_connections(self) -> None:
        self._listener.close()
        with contextlib.suppress(DatabaseError):
            connection.close()

    def _heartbeat(self, result: BatchResult) -> None:
        self._ticks += 1
        self._enqueued += result.enqueued
        now = timezone.now()
        SchedulerHeartbeat.objects.update_or_create(
            id=self.name,
            defaults={
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started_at": self._started,
                "last_seen": now,
                "ticks": self._ticks,
                "enqueued": self._enqueued,
                "last_tick": {
                    "tasks": result.tasks,
                    "enqueued": result.enqueued,
                    "skipped": result.skipped,
                    "misfired": result.misfired,
                    "max_lag_seconds": max(result.lags, default=None),
                },
            },
        )

    def _log_tick(self, result: BatchResult, seconds: float) -> None:
        if not result.tasks:
            logger.debug("tick: nothing due")
            return
        logger.info(
            "tick: %d tasks, %d enqueued, %d skipped, %d misfired in %.3fs",
            result.tasks, result.enqueued, result.skipped, result.misfired, seconds,
            extra={
                "tasks": result.tasks,
                "enqueued": result.enqueued,
                "skipped": result.skipped,
                "misfired": result.misfired,
                "duration_seconds": round(seconds, 4),
                "max_lag_seconds": round(max(result.lags, default=0.0), 4),
            },
        )  # fmt: skip
