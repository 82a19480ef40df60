"""The outbox: lifecycle changes written with the change, relayed to a Redis stream.

Services (and the queue's SQL) insert an OutboxMessage in the same transaction as the
change they describe, so a message exists exactly when its change committed. The relay,
called once per scheduler tick, XADDs the unsent backlog in id order to
`ordinaut:events:out` (trimmed with `MAXLEN ~`) and stamps `sent_at`. If Redis is down the
backlog waits and is published, in order, once it is back: at-least-once (a crash between
XADD and the commit that stamps sent_at publishes those messages again; consumers
de-duplicate on the `outbox_id` field).

Published messages are deleted after OUTBOX_RETENTION_SECONDS (outbox_prune, run by the
scheduler's housekeeping).

Order is id order. Relays are serialised by an advisory lock so two schedulers never
interleave batches. (Ids come from a sequence: two transactions committing out of id order
can still publish a lower id after a higher one; nothing is ever skipped.)
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from ordinaut import metrics
from tasks.models import WEBHOOK_EVENT_TYPES, OutboxMessage

logger = logging.getLogger(__name__)

# Any constant unique to this lock (pg advisory locks share one keyspace).
RELAY_LOCK = 0x6F7264_0001


def outbox_add(
    *, type: str, task_id: Any = None, run_id: Any = None, data: dict | None = None
) -> OutboxMessage:
    """Queue a lifecycle message; call inside the transaction that makes the change."""
    return OutboxMessage.objects.create(
        type=type,
        task_id=task_id,
        run_id=run_id,
        data=json.loads(json.dumps(data or {}, default=str)),
    )


# Take the relay lock for this transaction, or return false when another relay holds it.
TRY_LOCK = "SELECT pg_try_advisory_xact_lock(%s)"

# The oldest unsent messages. The lock above makes this relay the only one reading them.
UNSENT = """
SELECT id, type, task_id, run_id, data, created_at FROM tasks_outboxmessage
WHERE sent_at IS NULL ORDER BY id LIMIT %s
"""

MARK_SENT = "UPDATE tasks_outboxmessage SET sent_at = clock_timestamp() WHERE id = ANY(%s)"


def redis_client() -> Any | None:
    """A client for REDIS_URL with short timeouts, or None when Redis is not configured."""
    url = settings.REDIS_URL
    if not url:
        return None
    import redis

    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def relay(client: Any, *, batch: int | None = None, max_batches: int = 20) -> int:
    """Publish unsent outbox messages in id order; return how many were published.

    Raises redis.RedisError when Redis fails; what was not stamped stays unsent.
    """
    batch = batch or settings.OUTBOX_RELAY_BATCH
    stream = settings.OUTBOX_STREAM
    maxlen = settings.OUTBOX_STREAM_MAXLEN
    published = 0
    for _ in range(max_batches):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(TRY_LOCK, [RELAY_LOCK])
            if not cursor.fetchone()[0]:
                return published  # another scheduler is relaying right now
            cursor.execute(UNSENT, [batch])
            rows = cursor.fetchall()
            if not rows:
                return published
            pipe = client.pipeline(transaction=False)
            for outbox_id, kind, task_id, run_id, data, created_at in rows:
                fields = {
                    "outbox_id": outbox_id,
                    "type": kind,
                    "task_id": str(task_id) if task_id else "",
                    "run_id": str(run_id) if run_id else "",
                    "created_at": created_at.isoformat(),
                    "data": data if isinstance(data, str) else json.dumps(data or {}),
                }
                pipe.xadd(stream, fields, maxlen=maxlen, approximate=True)
            pipe.execute()
            # Stamped only after Redis took them; the commit releases the lock.
            cursor.execute(MARK_SENT, [[row[0] for row in rows]])
            published += len(rows)
        metrics.EVENTS_PUBLISHED.inc(len(rows))
        if len(rows) < batch:
            return published
    return published


def relay_safely(client: Any | None) -> int:
    """relay() for the scheduler loop: Redis errors are logged, never raised."""
    if client is None:
        return 0
    import redis

    try:
        return relay(client)
    except (redis.RedisError, OSError) as exc:
        logger.warning("outbox relay: Redis unavailable, backlog kept: %s", exc)
        return 0


# -- retention --------------------------------------------------------------------------------

# The oldest message: when it is younger than the cutoff there is nothing to prune, and the
# scan below (which walks ids in order) is not run at all.
OLDEST = "SELECT created_at FROM tasks_outboxmessage ORDER BY id LIMIT 1"

# Published messages past the retention, oldest first, in bounded batches; a run outcome whose
# webhooks were not fanned out yet stays whatever its age.
PRUNE = """
DELETE FROM tasks_outboxmessage WHERE id IN (
    SELECT id FROM tasks_outboxmessage
    WHERE created_at < %(cutoff)s AND sent_at < %(cutoff)s
      AND NOT (webhooked_at IS NULL AND type = ANY(%(webhook_types)s))
    ORDER BY id LIMIT %(batch)s
)
"""


def outbox_prune(*, now: datetime | None = None, batch: int = 10_000) -> int:
    """Delete published messages older than OUTBOX_RETENTION_SECONDS; return how many.

    One batch per call (the scheduler calls it periodically); never an unsent message or a
    run outcome still waiting for its webhooks. Consumers read the Redis stream, which keeps
    its own MAXLEN; the table is the durable backlog, not the archive.
    """
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.OUTBOX_RETENTION_SECONDS)
    with connection.cursor() as cursor:
        cursor.execute(OLDEST)
        oldest = cursor.fetchone()
        if oldest is None or oldest[0] >= cutoff:
            return 0
        params = {"cutoff": cutoff, "webhook_types": WEBHOOK_EVENT_TYPES, "batch": batch}
        cursor.execute(PRUNE, params)
        return cursor.rowcount
