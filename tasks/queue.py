"""The queue: every statement that inserts, changes or deletes an occurrence, in one place.

States (OccurrenceState): queued → leased → (row deleted: done) | queued again (retry) |
waiting (parked on an approval) | dead (retries exhausted). A Run row records every
attempt. Each statement below says what it locks and why two workers cannot both win.
Every state change is conditional on the state (and lease owner) it expects, and callers
check the row count. No other module writes `tasks_occurrence`: the scheduler, events,
the task services and approvals call the functions here, inside their own transactions
(each function runs on Django's connection, so it joins the caller's transaction).

Throughput comes from batching: one statement claims a batch and inserts its Run rows;
one transaction finishes a batch of results. Per-occurrence commits would cap a worker at
the database's commit rate. Times come from the database's statement_timestamp(): one
clock for every worker, and it moves on between statements of a transaction. The
statements workers and the scheduler run many times a second are prepared once per
connection (`prepare=True`): planning the claim's CTE costs PostgreSQL more than running it
(DB_PREPARED_STATEMENTS=0 turns that off: ordinaut.database, docs/scaling.md).
"""

from __future__ import annotations

import contextlib
import json
import random
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from django.conf import settings
from django.db import IntegrityError, connection, transaction

from tasks.models import BackoffStrategy, Occurrence, RunStatus, Task, Trigger


def _cursor() -> psycopg.Cursor:
    """Server-side-binding cursor on Django's connection (shares its transaction).

    Django's default client-side binding quotes batch arrays in Python; server-side
    parameters are adapted in C, which matters for the scheduler's and claim's batches.
    """
    connection.ensure_connection()
    return psycopg.Cursor(connection.connection)


def _one_statement() -> contextlib.AbstractContextManager:
    """The transaction for a function that runs a single statement.

    A statement is atomic by itself: outside a transaction it runs in autocommit, one round
    trip where BEGIN, statement, COMMIT take three (on an idle worker's path from NOTIFY to
    pipeline start, that is most of the pickup). Inside the caller's transaction it is a
    savepoint, so a failing statement rolls back only itself, as before.
    """
    return transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext()


# -- enqueue ----------------------------------------------------------------------------------

# The scheduler's batch of occurrences, in one statement. The scheduler holds the row locks
# of these tasks (LOCK_DUE_TASKS in tasks/scheduler.py) and advances their next_run_at in
# the same transaction, so no instant is enqueued twice; ON CONFLICT is the backstop. The
# rows travel as one JSON array: encoding it is C-fast, where adapting typed arrays is not.
ENQUEUE_SCHEDULED = """
INSERT INTO tasks_occurrence
    (task_id, scheduled_for, run_at, priority, concurrency_key, agent_id, state, attempt,
     trigger, last_error, correlation_id, created_at)
SELECT task_id, scheduled_for, run_at, priority, concurrency_key, agent_id, 'queued', 0,
       'schedule', '', '', clock_timestamp()
FROM jsonb_to_recordset(%s::jsonb) AS v(task_id uuid, scheduled_for timestamptz,
     run_at timestamptz, priority smallint, concurrency_key text, agent_id uuid)
ON CONFLICT (task_id, scheduled_for) DO NOTHING
"""


def enqueue_scheduled(rows: list[dict[str, Any]]) -> int:
    """Queue schedule occurrences (JSON-ready dicts: task_id, scheduled_for, run_at,
    priority, concurrency_key, agent_id) in the caller's transaction; return how many were
    new."""
    if not rows:
        return 0
    with _cursor() as cursor:
        cursor.execute(ENQUEUE_SCHEDULED, [json.dumps(rows)], prepare=True)
        return cursor.rowcount


@dataclass(frozen=True)
class EventTarget:
    """A task an event triggers, with what its occurrence copies from it."""

    task_id: str
    priority: int
    concurrency_key: str | None
    agent_id: str


# One event's occurrences in one statement. (task, scheduled_for) is unique and
# scheduled_for is the event's instant, so a second event in the same microsecond collides:
# DO NOTHING, and enqueue_for_event retries just those tasks one microsecond later.
ENQUEUE_FOR_EVENT = """
INSERT INTO tasks_occurrence
    (task_id, scheduled_for, run_at, priority, concurrency_key, agent_id, state, attempt,
     trigger, last_error, correlation_id, event_id, created_at)
SELECT v.task_id, %(at)s, %(run_at)s, v.priority, v.concurrency_key, v.agent_id, 'queued', 0,
       'event', '', %(correlation_id)s, %(event_id)s, clock_timestamp()
FROM jsonb_to_recordset(%(rows)s::jsonb) AS v(task_id uuid, priority smallint,
                                              concurrency_key text, agent_id uuid)
ON CONFLICT (task_id, scheduled_for) DO NOTHING
RETURNING task_id
"""


def enqueue_for_event(
    *, event_id: Any, at: datetime, targets: list[EventTarget], correlation_id: str
) -> int:
    """Queue one occurrence per target, due at `at`, in the caller's transaction.

    Each occurrence is scheduled for the event's instant, nudged by a microsecond where
    that task already has an occurrence at it. Returns how many were queued (all).
    """
    pending = [asdict(target) for target in targets]
    instant, enqueued = at, 0
    while pending:
        with _cursor() as cursor:
            cursor.execute(
                ENQUEUE_FOR_EVENT,
                {
                    "at": instant,
                    "run_at": at,
                    "correlation_id": correlation_id,
                    "event_id": event_id,
                    "rows": json.dumps(pending),
                },
            )
            inserted = {str(row[0]) for row in cursor.fetchall()}
        enqueued += len(inserted)
        pending = [row for row in pending if row["task_id"] not in inserted]
        instant += timedelta(microseconds=1)
    return enqueued


def enqueue_one(
    task: Task, *, scheduled_for: datetime, run_at: datetime, trigger: str
) -> Occurrence | None:
    """Queue one occurrence of `task`; None when (task, scheduled_for) already exists.

    The insert runs in a savepoint, so a collision leaves the caller's transaction usable.
    """
    try:
        with transaction.atomic():
            return Occurrence.objects.create(
                task=task,
                scheduled_for=scheduled_for,
                run_at=run_at,
                priority=task.priority,
                concurrency_key=task.concurrency_key,
                agent_id=task.created_by_id,
                trigger=trigger,
            )
    except IntegrityError:
        return None


def enqueue_manual(task: Task, *, now: datetime) -> Occurrence:
    """Queue a manual occurrence due `now`.

    (task, scheduled_for) is unique, so two run-nows in one microsecond get instants one
    microsecond apart.
    """
    instant = now
    while True:
        occurrence = enqueue_one(task, scheduled_for=instant, run_at=now, trigger=Trigger.MANUAL)
        if occurrence is not None:
            return occurrence
        instant += timedelta(microseconds=1)


# -- retargeting queued work (the task services, under the task's row lock) -------------------

# Queued occurrences only: a leased one is running and finishes; waiting and dead ones are
# history an operator still acts on.
DROP_QUEUED = """
DELETE FROM tasks_occurrence WHERE task_id = %(task_id)s AND state = 'queued'
RETURNING scheduled_for
"""

POSTPONE_QUEUED = """
UPDATE tasks_occurrence SET run_at = %(run_at)s
WHERE task_id = %(task_id)s AND state = 'queued'
"""

RETARGET_QUEUED = """
UPDATE tasks_occurrence SET priority = %(priority)s, concurrency_key = %(concurrency_key)s
WHERE task_id = %(task_id)s AND state = 'queued'
"""


def drop_queued(task_id: Any) -> list[datetime]:
    """Delete the task's queued occurrences; return their instants, earliest first."""
    with _cursor() as cursor:
        cursor.execute(DROP_QUEUED, {"task_id": task_id})
        return sorted(row[0] for row in cursor.fetchall())


def postpone_queued(task_id: Any, *, run_at: datetime) -> int:
    """Move the task's queued occurrences to `run_at` (a snooze); return how many."""
    with _cursor() as cursor:
        cursor.execute(POSTPONE_QUEUED, {"task_id": task_id, "run_at": run_at})
        return cursor.rowcount


def retarget_queued(task_id: Any, *, priority: int, concurrency_key: str | None) -> int:
    """Give the task's queued occurrences its new priority and concurrency key."""
    with _cursor() as cursor:
        cursor.execute(
            RETARGET_QUEUED,
            {"task_id": task_id, "priority": priority, "concurrency_key": concurrency_key},
        )
        return cursor.rowcount


# -- claim ------------------------------------------------------------------------------------

# Lease the rows `picked` selected and start their attempts, in the same statement: the
# UPDATE leases exactly the locked rows, the INSERT records each attempt's Run, and the
# outbox gets run.started (see tasks/delivery/outbox.py). Shared by both claims below, which differ
# only in how they pick. (Raw SQL: the ORM cannot chain UPDATE ... RETURNING into INSERTs.)
_LEASE_PICKED = """
, leased AS (
    UPDATE tasks_occurrence AS o
    SET state = 'leased', lease_owner = %(owner)s, attempt = o.attempt + 1,
        leased_until = statement_timestamp() + make_interval(secs => %(lease)s)
    WHERE o.id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING o.id, o.task_id, o.scheduled_for, o.run_at, o.attempt, o.trigger,
              o.correlation_id, o.priority, o.leased_until, o.event_id
), runs AS (
    INSERT INTO tasks_run (id, task_id, occurrence_id, scheduled_for, attempt, trigger,
                           lease_owner, leased_until, status, started_at, steps,
                           correlation_id, created_at)
    SELECT gen_random_uuid(), task_id, id, scheduled_for, attempt, trigger, %(owner)s,
           leased_until, 'running', clock_timestamp(), '[]'::jsonb,
           CASE WHEN correlation_id = '' THEN md5(random()::text) ELSE correlation_id END,
           clock_timestamp()
    FROM leased
    RETURNING id, task_id, occurrence_id, correlation_id, started_at
), started AS (
    INSERT INTO tasks_outboxmessage (type, task_id, run_id, data, created_at)
    SELECT 'run.started', task_id, id, '{}'::jsonb, clock_timestamp() FROM runs
)
SELECT l.id, l.task_id, l.scheduled_for, l.run_at, l.attempt, l.trigger, l.priority,
       r.id, r.correlation_id, r.started_at, l.event_id
FROM leased l JOIN runs r ON r.occurrence_id = l.id
ORDER BY l.priority DESC, l.run_at
"""

# Both claims pass over an agent whose work is held right now (the NOT EXISTS on
# agents_agent, the same in each): paused, inactive, or already running as many occurrences
# as its max_concurrent_runs budget allows. The count runs only for agents with that budget
# (occurrence_leased_agent_idx).
#
# Claim a batch of due, queued occurrences without a concurrency key, most urgent first.
# SELECT ... FOR UPDATE SKIP LOCKED locks the rows it returns and skips rows other workers
# hold, so two workers claiming at once get disjoint batches. A held agent's occurrences
# (paused, inactive, at its concurrency budget) are passed over by both claims: they wait,
# queued, until it may run again, and other agents' work goes on.
#
# A batch takes no more of one agent's occurrences than its max_concurrent_runs leaves room
# for (`capped`, by rank within the agent); the rows it locked but leaves are queued still.
# Two workers claiming for the same capped agent at the same instant each count what was
# running when their statement began, so together they may start more than the budget for
# as long as those runs last.
_PICK_UNKEYED = """
WITH candidates AS (
    SELECT o.id, o.agent_id, o.priority, o.run_at FROM tasks_occurrence AS o
    WHERE o.state = 'queued' AND o.run_at <= statement_timestamp()
      AND o.concurrency_key IS NULL
      AND NOT EXISTS (SELECT 1 FROM agents_agent AS a WHERE a.id = o.agent_id AND (
          a.paused_at IS NOT NULL OR NOT a.is_active
          OR CASE WHEN a.max_concurrent_runs IS NULL THEN false
                  ELSE a.max_concurrent_runs <= (SELECT count(*) FROM tasks_occurrence AS r
                                                 WHERE r.state = 'leased' AND r.agent_id = a.id)
             END))
    ORDER BY o.priority DESC, o.run_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), capped AS (
    SELECT c.id, a.max_concurrent_runs AS cap,
           row_number() OVER (PARTITION BY c.agent_id ORDER BY c.priority DESC, c.run_at) AS n,
           c.agent_id
    FROM candidates AS c JOIN agents_agent AS a ON a.id = c.agent_id
), picked AS (
    SELECT id FROM capped
    WHERE CASE WHEN cap IS NULL THEN true
               ELSE n + (SELECT count(*) FROM tasks_occurrence AS r
                         WHERE r.state = 'leased' AND r.agent_id = capped.agent_id) <= cap
          END
)"""
CLAIM = _PICK_UNKEYED + _LEASE_PICKED

# Claim ONE due occurrence that has a concurrency key, whose (agent, key) is not leased
# right now: keys are per agent, so one agent's "email" never blocks another's. The NOT
# EXISTS skips keys visibly running; two workers racing for the same key are settled by the
# partial unique index occurrence_one_leased_per_agent_key: the loser's UPDATE fails with
# a unique violation (the statement alone rolls back), so never two leased per agent and key.
_PICK_KEYED = """
WITH picked AS (
    SELECT id FROM tasks_occurrence AS o
    WHERE state = 'queued' AND run_at <= statement_timestamp() AND concurrency_key IS NOT NULL
      AND NOT EXISTS (
          SELECT 1 FROM tasks_occurrence AS running
          WHERE running.state = 'leased' AND running.agent_id = o.agent_id
            AND running.concurrency_key = o.concurrency_key)
      AND (%(keys)s::text[] IS NULL OR concurrency_key = ANY(%(keys)s::text[]))
      AND NOT EXISTS (SELECT 1 FROM agents_agent AS a WHERE a.id = o.agent_id AND (
          a.paused_at IS NOT NULL OR NOT a.is_active
          OR CASE WHEN a.max_concurrent_runs IS NULL THEN false
                  ELSE a.max_concurrent_runs <= (SELECT count(*) FROM tasks_occurrence AS r
                                                 WHERE r.state = 'leased' AND r.agent_id = a.id)
             END))
    ORDER BY priority DESC, run_at
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)"""
CLAIM_KEYED = _PICK_KEYED + _LEASE_PICKED


@dataclass
class ClaimedOccurrence:
    """A leased occurrence and the Run row recording this attempt."""

    occurrence_id: int
    task_id: Any
    scheduled_for: datetime
    run_at: datetime
    attempt: int
    trigger: str
    priority: int
    run_id: Any
    correlation_id: str
    started_at: datetime
    event_id: Any = None  # the triggering Event's id (trigger `event`), else None


def claim(
    owner: str,
    limit: int,
    *,
    lease_seconds: float | None = None,
    concurrency_keys: list[str] | None = None,
) -> list[ClaimedOccurrence]:
    """Lease up to `limit` due occurrences for `owner` and start a Run for each: unkeyed
    work first (claim_unkeyed), then keyed work (claim_keyed). Commits before returning."""
    options = {"lease_seconds": lease_seconds, "concurrency_keys": concurrency_keys}
    claimed = claim_unkeyed(owner, limit, **options)
    return claimed + claim_keyed(owner, limit - len(claimed), **options)


def claim_unkeyed(
    owner: str,
    limit: int,
    *,
    lease_seconds: float | None = None,
    concurrency_keys: list[str] | None = None,
) -> list[ClaimedOccurrence]:
    """Lease up to `limit` due occurrences without a concurrency key, in one statement.

    A worker restricted to `concurrency_keys` takes no unkeyed work: nothing is claimed.
    """
    if concurrency_keys is not None or limit <= 0:
        return []
    lease = settings.WORKER_LEASE_SECONDS if lease_seconds is None else lease_seconds
    params = {"owner": owner, "lease": lease, "limit": limit}
    with _one_statement(), _cursor() as cursor:
        cursor.execute(CLAIM, params, prepare=True)
        return [ClaimedOccurrence(*row) for row in cursor.fetchall()]


def claim_keyed(
    owner: str,
    limit: int,
    *,
    lease_seconds: float | None = None,
    concurrency_keys: list[str] | None = None,
) -> list[ClaimedOccurrence]:
    """Lease up to `limit` due occurrences that have a concurrency key (restricted to
    `concurrency_keys` when given), one statement each: at most one leased per agent and
    key, enforced by the database."""
    lease = settings.WORKER_LEASE_SECONDS if lease_seconds is None else lease_seconds
    params = {"owner": owner, "lease": lease, "keys": concurrency_keys}
    claimed: list[ClaimedOccurrence] = []
    while len(claimed) < limit:
        one = _claim_keyed(params)
        if one is None:
            break
        claimed.append(one)
    return claimed


def _claim_keyed(params: dict[str, Any]) -> ClaimedOccurrence | None:
    try:
        with _one_statement(), _cursor() as cursor:
            cursor.execute(CLAIM_KEYED, params, prepare=True)
            row = cursor.fetchone()
    except psycopg.errors.UniqueViolation:
        # Another worker leased the same key between our check and our update: it won.
        return None
    return ClaimedOccurrence(*row) if row else None


# How long until the earliest queued occurrence is due (negative: already due), using the
# partial index occurrence_due_idx. Reads only; an idle worker's timer.
NEXT_DUE = """
SELECT EXTRACT(EPOCH FROM min(run_at) - clock_timestamp()) FROM tasks_occurrence
WHERE state = 'queued'
"""


def seconds_until_next_due() -> float | None:
    """Seconds until the earliest queued run_at (<= 0 when due now); None when none is queued."""
    with _cursor() as cursor:
        cursor.execute(NEXT_DUE, prepare=True)
        (seconds,) = cursor.fetchone()
    return None if seconds is None else float(seconds)


# -- heartbeat, release, reclaim ----------------------------------------------------------------

# Extend our leases. Conditional on owner and state: a lease another worker reclaimed is
# not ours any more and is left alone; the returned ids tell the caller which it still has.
HEARTBEAT = """
UPDATE tasks_occurrence SET leased_until = statement_timestamp() + make_interval(secs => %(lease)s)
WHERE id = ANY(%(ids)s) AND state = 'leased' AND lease_owner = %(owner)s
RETURNING id
"""


def heartbeat(
    owner: str, occurrence_ids: list[int], *, lease_seconds: float | None = None
) -> set[int]:
    """Extend the leases `owner` still holds; return the ids it still holds."""
    if not occurrence_ids:
        return set()
    lease = settings.WORKER_LEASE_SECONDS if lease_seconds is None else lease_seconds
    with _one_statement(), _cursor() as cursor:
        cursor.execute(
            HEARTBEAT, {"lease": lease, "ids": occurrence_ids, "owner": owner}, prepare=True
        )
        return {row[0] for row in cursor.fetchall()}


# Give leased occurrences back untouched (shutdown before they started): the attempt that
# never ran is not counted, and its Run row is deleted rather than left "running".
RELEASE = """
WITH released AS (
    UPDATE tasks_occurrence
    SET state = 'queued', lease_owner = NULL, leased_until = NULL, attempt = attempt - 1
    WHERE id = ANY(%(ids)s) AND state = 'leased' AND lease_owner = %(owner)s
    RETURNING id, attempt + 1 AS attempt
)
DELETE FROM tasks_run r USING released
WHERE r.occurrence_id = released.id AND r.attempt = released.attempt AND r.status = 'running'
"""


def release(owner: str, occurrence_ids: list[int]) -> None:
    """Return never-started occurrences to the queue."""
    if occurrence_ids:
        with _one_statement(), _cursor() as cursor:
            cursor.execute(RELEASE, {"ids": occurrence_ids, "owner": owner})


# Take back occurrences whose lease expired (their worker died or hung). SKIP LOCKED: two
# reclaimers never both handle one row. The attempt's Run becomes `lost`; the occurrence
# goes back to the queue as the next attempt, or to `dead` when it has used its retries.
RECLAIM_EXPIRED = """
WITH expired AS (
    SELECT o.id, o.attempt - o.waits AS attempt, o.attempt AS run_attempt, t.max_retries
    FROM tasks_occurrence o JOIN tasks_task t ON t.id = o.task_id
    WHERE o.state = 'leased' AND o.leased_until < statement_timestamp()
    LIMIT 500
    FOR UPDATE OF o SKIP LOCKED
), lost AS (
    UPDATE tasks_run AS r
    SET status = 'lost', finished_at = greatest(clock_timestamp(), r.started_at),
        error = 'worker lost its lease (killed, hung or cut off); the occurrence was reclaimed'
    FROM expired e
    WHERE r.occurrence_id = e.id AND r.attempt = e.run_attempt AND r.status = 'running'
    RETURNING r.id
)
UPDATE tasks_occurrence AS o
SET state = CASE WHEN e.attempt > e.max_retries THEN 'dead' ELSE 'queued' END,
    lease_owner = NULL, leased_until = NULL, run_at = statement_timestamp(),
    last_error = 'lease expired'
FROM expired e
WHERE o.id = e.id AND o.state = 'leased'
RETURNING o.id, o.state
"""


def reclaim_expired() -> list[tuple[int, str]]:
    """Requeue (or dead-letter) occurrences with expired leases; return (id, new state)."""
    with _one_statement(), _cursor() as cursor:
        cursor.execute(RECLAIM_EXPIRED, prepare=True)
        return list(cursor.fetchall())


# -- finishing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Park:
    """The approval an attempt parks on, as the queue stores it.

    Built by `tasks.approvals.park_request` from the pipeline's request (defaults and the
    context excerpt applied there); the queue only writes it.
    """

    step_id: str
    prompt: str
    context: Any
    approvers: list[str]
    expires_in_seconds: float


@dataclass
class Outcome:
    """The result of one attempt, as the worker reports it."""

    claimed: ClaimedOccurrence
    status: str  # a RunStatus value other than running
    output: Any = None
    error: str | None = None
    steps: list | None = None  # None: keep what the executor stored as it went
    retryable: bool = True
    max_retries: int = 0
    backoff_strategy: str = BackoffStrategy.EXPONENTIAL_JITTER
    duration_ms: float = 0.0
    park: Park | None = None  # set exactly when status is RunStatus.WAITING_APPROVAL
    # False for an attempt stopped by its agent's pause: requeued at once, not a retry.
    counts_as_attempt: bool = True
    # When its pipeline began in a worker thread; the run's started_at becomes this (the claim
    # stamped the claim's time, and a prefetched occurrence may wait for a free thread).
    pipeline_started_at: datetime | None = None


# Record finished attempts (started_at: the pipeline's real start, when the worker knows it).
# Conditional on status = 'running': a run the reclaimer already
# marked lost keeps that verdict (its worker was too slow; another attempt owns the work).
# The outbox gets one run.<status> message per run actually finished, in the same statement.
FINISH_RUNS = """
WITH finished AS (
    UPDATE tasks_run AS r
    SET status = v.status,
        started_at = coalesce(v.started_at, r.started_at),
        finished_at = greatest(clock_timestamp(), coalesce(v.started_at, r.started_at)),
        output = v.output, error = v.error, steps = coalesce(v.steps, r.steps)
    FROM jsonb_to_recordset(%s::jsonb) AS v(id uuid, status text, output jsonb, error text,
                                            steps jsonb, started_at timestamptz)
    WHERE r.id = v.id AND r.status = 'running'
    RETURNING r.id, r.task_id, r.status
)
INSERT INTO tasks_outboxmessage (type, task_id, run_id, data, created_at)
SELECT 'run.' || status, task_id, id, '{}'::jsonb, clock_timestamp() FROM finished
"""

# Finished occurrences leave the queue: only while still leased by us (the same guard).
DELETE_DONE = """
DELETE FROM tasks_occurrence
WHERE id = ANY(%(ids)s) AND state = 'leased' AND lease_owner = %(owner)s
"""

# Failed attempts: back to the queue after their backoff, or to `dead` — when the caller
# says so (not retryable) or when the attempts that did not park on an approval exceed
# max_retries (decided here, on the locked row, so approval waits never use up retries).
# `free` (1) marks an attempt stopped by its agent's pause: counted with the waits.
# A new dead letter is announced in the outbox as run.dead, in the same statement.
REQUEUE_OR_BURY = """
WITH moved AS (
    UPDATE tasks_occurrence AS o
    SET state = CASE WHEN v.state = 'dead' OR o.attempt - o.waits - v.free > v.max_retries
                     THEN 'dead' ELSE 'queued' END,
        waits = o.waits + v.free,
        run_at = v.run_at, last_error = v.error, lease_owner = NULL, leased_until = NULL
    FROM jsonb_to_recordset(%(rows)s::jsonb) AS v(id bigint, state text, run_at timestamptz,
                                                  error text, max_retries int, run_id uuid,
                                                  free int)
    WHERE o.id = v.id AND o.state = 'leased' AND o.lease_owner = %(owner)s
    RETURNING o.id, o.task_id, o.state, v.run_id
), buried AS (
    INSERT INTO tasks_outboxmessage (type, task_id, run_id, data, created_at)
    SELECT 'run.dead', task_id, run_id, '{}'::jsonb, clock_timestamp()
    FROM moved WHERE state = 'dead'
)
SELECT id, state FROM moved
"""

# Attempts parked on an approval: the occurrence waits (no lease, not claimable) until a
# decision requeues it; `waits` records that this attempt does not count as a retry. Only
# occurrences still leased by us park (the same guard as above), and only those get their
# Approval row and the outbox's approval.requested, all in this one statement.
PARK = """
WITH v AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS v(
        occurrence_id bigint, run_id uuid, step_id text, prompt text, context jsonb,
        approvers jsonb, expires_in_seconds double precision)
), parked AS (
    UPDATE tasks_occurrence AS o
    SET state = 'waiting', lease_owner = NULL, leased_until = NULL, waits = o.waits + 1,
        last_error = ''
    FROM v
    WHERE o.id = v.occurrence_id AND o.state = 'leased' AND o.lease_owner = %(owner)s
    RETURNING o.id, o.task_id
), requested AS (
    INSERT INTO tasks_approval (id, task_id, run_id, occurrence_id, step_id, prompt, context,
                                approvers, status, expires_at, decided_by, comment,
                                created_at)
    SELECT gen_random_uuid(), p.task_id, v.run_id, p.id, v.step_id, v.prompt, v.context,
           coalesce(v.approvers, '[]'::jsonb), 'pending',
           clock_timestamp() + make_interval(secs => v.expires_in_seconds), '', '',
           clock_timestamp()
    FROM parked p JOIN v ON v.occurrence_id = p.id
    ON CONFLICT (run_id, step_id) DO NOTHING
    RETURNING id, task_id, run_id
)
INSERT INTO tasks_outboxmessage (type, task_id, run_id, data, created_at)
SELECT 'approval.requested', task_id, run_id, jsonb_build_object('approval_id', id),
       clock_timestamp()
FROM requested
"""


def occurrence_retry_delay(
    strategy: str, attempt: int, *, cap: float | None = None, base: float = 1.0
) -> float:
    """Seconds to wait before the attempt after `attempt` (1-based).

    exponential_jitter: uniform in [0, min(cap, base * 2**(attempt-1))] (full jitter);
    linear: min(cap, base * attempt); fixed: min(cap, base).
    """
    cap = settings.WORKER_BACKOFF_MAX_DELAY if cap is None else cap
    if strategy == BackoffStrategy.LINEAR:
        return min(cap, base * attempt)
    if strategy == BackoffStrategy.FIXED:
        return min(cap, base)
    ceiling = min(cap, base * 2 ** min(attempt - 1, 62))
    return random.uniform(0, ceiling)  # noqa: S311 (jitter, not cryptography)


@dataclass
class _FinishBatch:
    """A batch of outcomes sorted into the rows of each finishing statement."""

    runs: list[dict[str, Any]]
    done: list[int]
    parked: list[dict[str, Any]]
    again: list[dict[str, Any]]  # with "delay" seconds; run_at is set from the DB clock


def _sort_outcomes(outcomes: list[Outcome]) -> _FinishBatch:
    batch = _FinishBatch(runs=[], done=[], parked=[], again=[])
    for outcome in outcomes:
        claimed = outcome.claimed
        started = outcome.pipeline_started_at
        batch.runs.append({"id": str(claimed.run_id), "status": outcome.status,
                           "output": outcome.output, "error": outcome.error,
                           "steps": outcome.steps,
                           "started_at": started.isoformat() if started else None})  # fmt: skip
        if outcome.status == RunStatus.SUCCEEDED:
            batch.done.append(claimed.occurrence_id)
        elif outcome.status == RunStatus.WAITING_APPROVAL:
            park = asdict(outcome.park)
            batch.parked.append(
                {"occurrence_id": claimed.occurrence_id, "run_id": str(claimed.run_id), **park}
            )
        else:
            retry, free = outcome.retryable, not outcome.counts_as_attempt
            delay = (
                occurrence_retry_delay(outcome.backoff_strategy, claimed.attempt)
                if retry and not free
                else 0
            )
            batch.again.append({"id": claimed.occurrence_id, "state": "queued" if retry else "dead",
                                "delay": delay,
                                "error": outcome.error or outcome.status,
                                "max_retries": outcome.max_retries,
                                "run_id": str(claimed.run_id), "free": int(free)})  # fmt: skip
    return batch


def finish(owner: str, outcomes: list[Outcome]) -> dict[str, int]:
    """Record a batch of finished attempts in one transaction; return counts by new state.

    Succeeded attempts delete their occurrence; waiting ones (an approval) park it; failed
    ones requeue it after its backoff or bury it as dead when retries are used up (or the
    error is not retryable). Approval waits do not count as retries.
    """
    if not outcomes:
        return {}
    batch = _sort_outcomes(outcomes)
    counts = {"done": len(batch.done), "retry": 0, "dead": 0}
    if batch.parked:
        counts["waiting"] = len(batch.parked)
    with transaction.atomic(), _cursor() as cursor:
        cursor.execute(FINISH_RUNS, [json.dumps(batch.runs, default=str)], prepare=True)
        if batch.done:
            cursor.execute(DELETE_DONE, {"ids": batch.done, "owner": owner}, prepare=True)
        if batch.parked:
            rows = json.dumps(batch.parked, default=str)
            cursor.execute(PARK, {"rows": rows, "owner": owner})
        if batch.again:
            cursor.execute("SELECT clock_timestamp()")
            (now,) = cursor.fetchone()
            rows = [
                {**row, "run_at": (now + timedelta(seconds=row.pop("delay"))).isoformat()}
                for row in batch.again
            ]
            cursor.execute(REQUEUE_OR_BURY, {"rows": json.dumps(rows), "owner": owner})
            for _, state in cursor.fetchall():
                counts["dead" if state == "dead" else "retry"] += 1
    return counts


# A decided approval's occurrence goes back to the queue, due now, as its next attempt.
# Conditional on `waiting`: deciding twice, or racing the expiry, requeues it once.
RESUME = """
UPDATE tasks_occurrence SET state = 'queued', run_at = statement_timestamp()
WHERE id = %(id)s AND state = 'waiting'
"""


def resume(occurrence_id: int) -> bool:
    """Requeue a parked occurrence (inside the caller's transaction); False if not parked."""
    with _cursor() as cursor:
        cursor.execute(RESUME, {"id": occurrence_id})
        return cursor.rowcount == 1


# -- dead letters -------------------------------------------------------------------------------

# Re-run dead occurrences: each is replaced by a fresh queued one (same task and instant,
# full retry budget). Replacing rather than resetting keeps the dead attempts' Run rows
# unique per (occurrence, attempt). Only rows still dead are touched.
RERUN_DEAD = """
WITH buried AS (
    DELETE FROM tasks_occurrence WHERE id = ANY(%(ids)s) AND state = 'dead'
    RETURNING task_id, scheduled_for, priority, concurrency_key, agent_id, trigger,
              correlation_id, event_id
)
INSERT INTO tasks_occurrence (task_id, scheduled_for, run_at, priority, concurrency_key,
                              agent_id, state, attempt, trigger, last_error, correlation_id,
                              event_id, created_at)
SELECT task_id, scheduled_for, statement_timestamp(), priority, concurrency_key, agent_id,
       'queued', 0, trigger, '', correlation_id, event_id, statement_timestamp()
FROM buried
RETURNING id
"""


def rerun_dead(occurrence_ids: list[int]) -> list[int]:
    """Requeue dead occurrences as fresh ones due now; return the new occurrence ids."""
    with _one_statement(), _cursor() as cursor:
        cursor.execute(RERUN_DEAD, {"ids": occurrence_ids})
        return [row[0] for row in cursor.fetchall()]
