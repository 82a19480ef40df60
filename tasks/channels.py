"""The LISTEN/NOTIFY channels that wake the scheduler and the workers.

NOTIFY inside a transaction is delivered when it commits, never before, so a sleeper woken
by it always sees the change that woke it.
"""

from __future__ import annotations

from django.db import connection

# Task changes (create, update, pause, resume, snooze): the scheduler recomputes at once.
SCHEDULER_CHANNEL = "ordinaut_scheduler"
# Due work was queued (the insert trigger of migration 0004, run_now, decided approvals).
WORKER_CHANNEL = "ordinaut_occurrences"


def notify(channel: str, payload: str = "") -> None:
    """NOTIFY `channel` in the current transaction (delivered when it commits)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [channel, payload])
