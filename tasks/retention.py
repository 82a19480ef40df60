"""Retention: history past its age is deleted, a batch per table per call, by runscheduler.

Runs, the skipped-occurrence ledger, events and finished webhook deliveries (with their
attempts) grow with every occurrence; each has a setting in days (`RUN_RETENTION_DAYS`
90, `LEDGER_RETENTION_DAYS` 90, `EVENT_RETENTION_DAYS` 30, `WEBHOOK_RETENTION_DAYS` 30;
0 keeps forever). What is still in use is never deleted: a running or parked run, a run
whose approval is kept, an event an occurrence still points at, a pending delivery.
Decided approvals follow the runs' retention. The published outbox has its own
(OUTBOX_RETENTION_SECONDS, tasks/delivery/outbox.py).

The audit log is never pruned: it is append-only by design (a trigger refuses DELETE) and
its hash chain would break; archive it with the database backups instead.

Each statement deletes at most `batch` of the oldest rows past the cutoff through an
index on the age column, so a call is short whatever the backlog, and the scheduler's
periodic calls catch up over a few minutes after retention is first switched on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

DEFAULT_BATCH = 5_000


@dataclass(frozen=True)
class Policy:
    name: str
    days: Callable[[], float]  # the setting, read at each call (0: keep forever)
    sql: str


# Order matters: approvals before the runs they protect; deliveries take their attempts.
POLICIES = (
    Policy(
        "approvals",
        lambda: settings.RUN_RETENTION_DAYS,
        """
        DELETE FROM tasks_approval WHERE id IN (
            SELECT id FROM tasks_approval
            WHERE status <> 'pending' AND created_at < %(cutoff)s
            ORDER BY created_at LIMIT %(batch)s)
        """,
    ),
    Policy(
        "runs",
        lambda: settings.RUN_RETENTION_DAYS,
        """
        DELETE FROM tasks_run WHERE id IN (
            SELECT r.id FROM tasks_run r
            WHERE r.started_at < %(cutoff)s
              AND r.status NOT IN ('running', 'waiting_approval')
              AND NOT EXISTS (SELECT 1 FROM tasks_approval a WHERE a.run_id = r.id)
            ORDER BY r.started_at LIMIT %(batch)s)
        """,
    ),
    Policy(
        "ledger",
        lambda: settings.LEDGER_RETENTION_DAYS,
        """
        DELETE FROM tasks_skippedoccurrence WHERE id IN (
            SELECT id FROM tasks_skippedoccurrence WHERE recorded_at < %(cutoff)s
            ORDER BY recorded_at LIMIT %(batch)s)
        """,
    ),
    Policy(
        "events",
        lambda: settings.EVENT_RETENTION_DAYS,
        """
        DELETE FROM tasks_event WHERE id IN (
            SELECT e.id FROM tasks_event e
            WHERE e.published_at < %(cutoff)s
              AND NOT EXISTS (SELECT 1 FROM tasks_occurrence o WHERE o.event_id = e.id)
            ORDER BY e.published_at LIMIT %(batch)s)
        """,
    ),
    Policy(
        "webhook_deliveries",
        lambda: settings.WEBHOOK_RETENTION_DAYS,
        """
        WITH doomed AS (
            SELECT id FROM tasks_webhookdelivery
            WHERE status <> 'pending' AND created_at < %(cutoff)s
            ORDER BY created_at LIMIT %(batch)s
        ), attempts AS (
            DELETE FROM tasks_webhookattempt WHERE delivery_id IN (SELECT id FROM doomed)
        )
        DELETE FROM tasks_webhookdelivery WHERE id IN (SELECT id FROM doomed)
        """,
    ),
)


def prune(*, now: datetime | None = None, batch: int = DEFAULT_BATCH) -> dict[str, int]:
    """Delete one batch past retention from each table; return rows deleted by name."""
    now = now or timezone.now()
    deleted: dict[str, int] = {}
    for policy in POLICIES:
        days = float(policy.days())
        if days <= 0:
            continue
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(policy.sql, {"cutoff": now - timedelta(days=days), "batch": batch})
            deleted[policy.name] = cursor.rowcount
    return deleted
