"""The queue: every SQL statement that moves an occurrence between states, in one place.

States (OccurrenceState): queued → leased → (row deleted: done) | queued again (retry) |
dead (retries exhausted). A Run row records every attempt. Each statement below says what
it locks and why two workers cannot both win. Every state change is conditional on the
state (and lease owner) it expects, and callers check the row count.

Throughput comes from batching: one statement claims a batch and inserts its Run rows;
one transaction finishes a batch of results. Per-occurrence commits would cap a worker at
the database's commit rate. Times come from the database's statement_timestamp(): one
clock for every worker, and it moves on between statements of a transaction.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from django.conf import settings
from django.db import connection, transaction

from tasks.models import BackoffStrategy

# -- claim ------------------------------------------------------------------------------------

# Claim a batch of due, queued occurrences without a concurrency key, most urgent first.
# The inner SELECT ... FOR UPDATE SKIP LOCKED locks the rows it returns and skips rows other
# workers hold, so two workers claiming at once get disjoint batches; the outer UPDATE then
# leases exactly those rows, and the INSERT records the attempt's Run in the same statement.
# (Raw SQL: the ORM cannot express UPDATE ... RETURNING feeding an INSERT in one round trip.)
CLAIM = """
WITH picked AS (
    SELECT id FROM tasks_occurrence
    WHERE state = 'queued' AND run_at <= statement_timestamp() AND concurrency_key IS NULL
    ORDER BY priority DESC, run_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), leased AS (
    UPDATE tasks_occurrence AS o
    SET state = 'leased', lease_owner = %(owner)s, attempt = o.attempt + 1,
        leased_until = statement_timestamp() + make_interval(secs => %(lease)s)
    WHERE o.id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING o.id, o.task_id, o.scheduled_for, o.run_at, o.attempt, o.trigger,
              o.correlation_id, o.priority, o.leased_until
), runs AS (
    INSERT INTO tasks_run (id, task_id, occurrence_id, scheduled_for, attempt, trigger,
                           lease_owner, leased_until, status, started_at, steps,
                           correlation_id, created_at)
    SELECT gen_random_uuid(), task_id, id, scheduled_for, attempt, trigger, %(owner)s,
           leased_until, 'running', clock_timestamp(), '[]'::jsonb,
           CASE WHEN correlation_id = '' THEN md5(random()::text) ELSE correlation_id END,
           clock_timestamp()
    FROM leased
    RETURNING id, occurrence_id, correlation_id, started_at
)
SELECT l.id, l.task_id, l.scheduled_for, l.run_at, l.attempt, l.trigger, l.priority,
       r.id, r.correlation_id, r.started_at
FROM leased l JOIN runs r ON r.occurrence_id = l.id
ORDER BY l.priority DESC, l.run_at
"""

# Claim ONE due occurrence that has a concurrency key, whose key is not leased right now.
# The NOT EXISTS skips keys visibly running; two workers racing for the same key are
# settled by the partial unique index occurrence_one_leased_per_key: the loser's UPDATE
# fails with a unique violation (caught in a savepoint), so never two leased per key.
CLAIM_KEYED = """
WITH picked AS (
    SELECT id FROM tasks_occurrence AS o
    WHERE state = 'queued' AND run_at <= statement_timestamp() AND concurrency_key IS NOT NULL
      AND NOT EXISTS (
          SELECT 1 FROM tasks_occurrence AS running
          WHERE running.state = 'leased' AND running.concurrency_key = o.concurrency_key)
      AND (%(keys)s::text[] IS NULL OR concurrency_key = ANY(%(keys)s::text[]))
    ORDER BY priority DESC, run_at
    LIMIT 1
    FOR UPDATE SKIP LOCKED
), leased AS (
    UPDATE tasks_occurrence AS o
    SET state = 'leased', lease_owner = %(owner)s, attempt = o.attempt + 1,
        leased_until = statement_timestamp() + make_interval(secs => %(lease)s)
    WHERE o.id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING o.id, o.task_id, o.scheduled_for, o.run_at, o.attempt, o.trigger,
              o.correlation_id, o.priority, o.leased_until
), runs AS (
    INSERT INTO tasks_run (id, task_id, occurrence_id, scheduled_for, attempt, trigger,
                           lease_owner, leased_until, status, started_at, steps,
                           correlation_id, created_at)
    SELECT gen_random_uuid(), task_id, id, scheduled_for, attempt, trigger, %(owner)s,
           leased_until, 'running', clock_timestamp(), '[]'::jsonb,
           CASE WHEN correlation_id = '' THEN md5(random()::text) ELSE correlation_id END,
           clock_timestamp()
    FROM leased
    RETURNING id, occurrence_id, correlation_id, started_at
)
SELECT l.id, l.task_id, l.scheduled_for, l.run_at, l.attempt, l.trigger, l.priority,
       r.id, r.correlation_id, r.started_at
FROM leased l JOIN runs r ON r.occurrence_id = l.id
"""


@dataclass
class Claimed:
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


def _cursor() -> psycopg.Cursor:
    """Server-side-binding cursor on Django's connection (shares its transaction)."""
    connection.ensure_connection()
    return psycopg.Cursor(connection.connection)


def claim(
    owner: str,
    limit: int,
    *,
    lease_seconds: float | None = None,
    concurrency_keys: list[str] | None = None,
    keyed: bool = True,
) -> list[Claimed]:
    """Lease up to `limit` due occurrences for `owner` and start a Run for each.

    Unkeyed work is claimed in one statement; keyed work one occurrence at a time (at most
    one leased per key, enforced by the database). `concurrency_keys` restricts the worker
    to those keys (and then it takes no unkeyed work). Commits before returning.
    """
    lease = settings.WORKER_LEASE_SECONDS if lease_seconds is None else lease_seconds
    params = {"owner": owner, "lease": lease, "keys": concurrency_keys}
    claimed: list[Claimed] = []
    with transaction.atomic(), _cursor() as cursor:
        if concurrency_keys is None:
            cursor.execute(CLAIM, {**params, "limit": limit})
            claimed += [Claimed(*row) for row in cursor.fetchall()]
    if keyed:
        while len(claimed) < limit:
            one = _claim_keyed(params)
            if one is None:
                break
            claimed.append(one)
    return claimed


def _claim_keyed(params: dict[str, Any]) -> Claimed | None:
    try:
        with transaction.atomic(), _cursor() as cursor:
            cursor.execute(CLAIM_KEYED, params)
            row = cursor.fetchone()
    except psycopg.errors.UniqueViolation:
        # Another worker leased the same key between our check and our update: it won.
        return None
    return Claimed(*row) if row else None


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
    with transaction.atomic(), _cursor() as cursor:
        cursor.execute(HEARTBEAT, {"lease": lease, "ids": occurrence_ids, "owner": owner})
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
        with transaction.atomic(), _cursor() as cursor:
            cursor.execute(RELEASE, {"ids": occurrence_ids, "owner": owner})


# Take back occurrences whose lease expired (their worker died or hung). SKIP LOCKED: two
# reclaimers never both handle one row. The attempt's Run becomes `lost`; the occurrence
# goes back to the queue as the next attempt, or to `dead` when it has used its retries.
RECLAIM_EXPIRED = """
WITH expired AS (
    SELECT o.id, o.attempt, t.max_retries
    FROM tasks_occurrence o JOIN tasks_task t ON t.id = o.task_id
    WHERE o.state = 'leased' AND o.leased_until < statement_timestamp()
    LIMIT 500
    FOR UPDATE OF o SKIP LOCKED
), lost AS (
    UPDATE tasks_run AS r
    SET status = 'lost', finished_at = greatest(clock_timestamp(), r.started_at),
        error = 'worker lost its lease (killed, hung or cut off); the occurrence was reclaimed'
    FROM expired e
    WHERE r.occurrence_id = e.id AND r.attempt = e.attempt AND r.status = 'running'
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
    with transaction.atomic(), _cursor() as cursor:
        cursor.execute(RECLAIM_EXPIRED)
        return list(cursor.fetchall())


# -- finishing ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """The result of one attempt, as the worker reports it."""

    claimed: Claimed
    status: str  # a RunStatus value other than running
    output: Any = None
    error: str | None = None
    steps: list | None = None  # None: keep what the executor stored as it went
    retryable: bool = True
    max_retries: int = 0
    backoff_strategy: str = BackoffStrategy.EXPONENTIAL_JITTER
    duration_ms: float = 0.0


# Record finished attempts. Conditional on status = 'running': a run the reclaimer already
# marked lost keeps that verdict (its worker was too slow; another attempt owns the work).
FINISH_RUNS = """
UPDATE tasks_run AS r
SET status = v.status, finished_at = greatest(clock_timestamp(), r.started_at),
    output = v.output, error = v.error, steps = coalesce(v.steps, r.steps)
FROM jsonb_to_recordset(%s::jsonb) AS v(id uuid, status text, output jsonb, error text,
                                        steps jsonb)
WHERE r.id = v.id AND r.status = 'running'
"""

# Finished occurrences leave the queue: only while still leased by us (the same guard).
DELETE_DONE = """
DELETE FROM tasks_occurrence
WHERE id = ANY(%(ids)s) AND state = 'leased' AND lease_owner = %(owner)s
"""

# Failed attempts: back to the queue after their backoff, or to `dead`.
REQUEUE_OR_BURY = """
UPDATE tasks_occurrence AS o
SET state = v.state, run_at = v.run_at, last_error = v.error,
    lease_owner = NULL, leased_until = NULL
FROM jsonb_to_recordset(%(rows)s::jsonb) AS v(id bigint, state text, run_at timestamptz,
                                              error text)
WHERE o.id = v.id AND o.state = 'leased' AND o.lease_owner = %(owner)s
"""


def retry_delay(
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


def finish(owner: str, outcomes: list[Outcome]) -> dict[str, int]:
    """Record a batch of finished attempts in one transaction; return counts by new state.

    Succeeded attempts delete their occurrence; failed ones requeue it after its backoff
    or bury it as dead when retries are used up (or the error is not retryable).
    """
    if not outcomes:
        return {}
    runs, done, again = [], [], []
    counts = {"done": 0, "retry": 0, "dead": 0}
    for outcome in outcomes:
        claimed = outcome.claimed
        runs.append(
            {
                "id": str(claimed.run_id),
                "status": outcome.status,
                "output": outcome.output,
                "error": outcome.error,
                "steps": outcome.steps,
            }
        )
        if outcome.status == "succeeded":
            done.append(claimed.occurrence_id)
            counts["done"] += 1
        elif outcome.retryable and claimed.attempt <= outcome.max_retries:
            delay = retry_delay(outcome.backoff_strategy, claimed.attempt)
            again.append({"id": claimed.occurrence_id, "state": "queued", "delay": delay,
                          "error": outcome.error or outcome.status})  # fmt: skip
            counts["retry"] += 1
        else:
            again.append({"id": claimed.occurrence_id, "state": "dead", "delay": 0,
                          "error": outcome.error or outcome.status})  # fmt: skip
            counts["dead"] += 1
    with transaction.atomic(), _cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        (now,) = cursor.fetchone()
        cursor.execute(FINISH_RUNS, [json.dumps(runs, default=str)])
        if done:
            cursor.execute(DELETE_DONE, {"ids": done, "owner": owner})
        if again:
            rows = [
                {
                    "id": row["id"],
                    "state": row["state"],
                    "run_at": (now + _seconds(row["delay"])).isoformat(),
                    "error": row["error"],
                }
                for row in again
            ]
            cursor.execute(REQUEUE_OR_BURY, {"rows": json.dumps(rows), "owner": owner})
    return counts


def _seconds(value: float):  # noqa: ANN202
    from datetime import timedelta

    return timedelta(seconds=value)


# -- dead letters -------------------------------------------------------------------------------

# Re-run dead occurrences: each is replaced by a fresh queued one (same task and instant,
# full retry budget). Replacing rather than resetting keeps the dead attempts' Run rows
# unique per (occurrence, attempt). Only rows still dead are touched.
RERUN_DEAD = """
WITH buried AS (
    DELETE FROM tasks_occurrence WHERE id = ANY(%(ids)s) AND state = 'dead'
    RETURNING task_id, scheduled_for, priority, concurrency_key, trigger, correlation_id
)
INSERT INTO tasks_occurrence (task_id, scheduled_for, run_at, priority, concurrency_key,
                              state, attempt, trigger, last_error, correlation_id, created_at)
SELECT task_id, scheduled_for, statement_timestamp(), priority, concurrency_key, 'queued', 0,
       trigger, '', correlation_id, statement_timestamp()
FROM buried
RETURNING id
"""


def rerun_dead(occurrence_ids: list[int]) -> list[int]:
    """Requeue dead occurrences as fresh ones due now; return the new occurrence ids."""
    with transaction.atomic(), _cursor() as cursor:
        cursor.execute(RERUN_DEAD, {"ids": occurrence_ids})
        return [row[0] for row in cursor.fetchall()]
