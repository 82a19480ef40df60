"""The inbound event stream: entries XADDed to `ordinaut:events:in` become Events.

The scheduler loop reads the stream once per tick through the consumer group `ordinaut`
(non-blocking, at most 100 entries). Each entry goes through `event_publish` — the same
service, validation and fan-out as `POST /events` — and is acknowledged (XACK) only after
its Event committed. Hence:

- a crash between read and commit leaves the entry pending in the group; once it has been
  idle INBOUND_EVENT_CLAIM_IDLE_SECONDS any consumer re-claims it (XAUTOCLAIM) and stores it;
- a crash between commit and XACK redelivers an entry that is already stored: its
  idempotency key (per source agent) makes the second `event_publish` a no-op. Entries
  without a key may then be stored twice — producers should always set one;
- an entry that can never be stored (no valid source agent, a malformed field) is
  acknowledged and logged as rejected, so it is not retried forever;
- Redis restarted without persistence loses the group: the `NOGROUP` error is answered by
  recreating it (MKSTREAM, from the start of whatever the stream holds).

Entry fields: `topic`, `payload` (a JSON object as text; absent = {}), `idempotency_key`
(optional), `source_agent_id` (required: an active agent that may publish the topic:
`events:publish` or a matching `events:publish:<glob>`). The event then reaches the tasks
it would reach had that agent published it over REST. A rejected entry is acknowledged,
logged and recorded in the audit log as `event.rejected` with its entry id and reason.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import DataError

from agents.models import Agent
from audit import record
from audit.services import Actor
from ordinaut.errors import Forbidden, InvalidInput
from tasks.events import event_publish

logger = logging.getLogger(__name__)

MAX_COUNT = 100


class Rejected(Exception):
    """An entry that can never become an Event; `reason` says why (logged, then acked)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class ConsumeResult:
    stored: int = 0  # new Events
    duplicates: int = 0  # idempotency key already used: nothing stored
    rejected: int = 0  # acknowledged without an Event
    reclaimed: int = 0  # of the entries above, taken over from an idle consumer


def stream_name() -> str:
    return settings.INBOUND_EVENT_STREAM


def group_name() -> str:
    return settings.INBOUND_EVENT_GROUP


def ensure_group(client: Any) -> None:
    """Create the consumer group (and the stream) unless it exists."""
    import redis

    try:
        # From "0": entries written before the group existed (or before Redis lost it, with
        # the stream) are still read; idempotency keys absorb what was already stored.
        client.xgroup_create(stream_name(), group_name(), id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_entry(fields: dict[Any, Any]) -> dict[str, Any]:
    """Decode an entry's fields into event_publish arguments (pure). Raises Rejected."""
    try:
        values = {_text(key): _text(value) for key, value in fields.items()}
    except UnicodeDecodeError as exc:
        raise Rejected("fields are not UTF-8") from exc
    topic = values.get("topic")
    if not topic:
        raise Rejected("topic: missing")
    try:
        payload = json.loads(values.get("payload") or "{}")
    except ValueError as exc:
        raise Rejected(f"payload: not JSON ({exc})") from exc
    raw_source = values.get("source_agent_id") or ""
    try:
        source_id = uuid.UUID(raw_source)
    except ValueError as exc:
        raise Rejected(f"source_agent_id: {raw_source!r} is not an agent id") from exc
    return {
        "topic": topic,
        "payload": payload,
        "idempotency_key": values.get("idempotency_key") or None,
        "source_agent_id": source_id,
    }


def store_entry(fields: dict[Any, Any]) -> bool:
    """Publish one entry as an Event (committed on return); True when it was new.

    Raises Rejected when it can never be stored; database errors propagate.
    """
    parsed = parse_entry(fields)
    source = Agent.objects.filter(pk=parsed["source_agent_id"], is_active=True).first()
    if source is None:
        raise Rejected(f"source_agent_id: no active agent {parsed['source_agent_id']}")
    try:
        _, created = event_publish(
            topic=parsed["topic"],
            payload=parsed["payload"],
            actor=Actor.agent(source),
            granted=source.scopes,
            source=source,
            idempotency_key=parsed["idempotency_key"],
        )
    except (InvalidInput, Forbidden) as exc:
        raise Rejected(f"agent {source.name}: {exc.message}") from exc
    except DataError as exc:
        # Values PostgreSQL refuses (e.g. a NUL character in the payload): retrying the
        # entry would fail the same way every time.
        raise Rejected(f"payload: not storable ({exc})") from exc
    return created


def consume(
    client: Any,
    *,
    consumer: str,
    count: int = MAX_COUNT,
    claim_idle_seconds: float | None = None,
) -> ConsumeResult:
    """Store up to `count` entries (re-claimed idle ones first, then new ones); ack each.

    Raises redis.RedisError when Redis fails, and database errors: an entry whose Event did
    not commit stays pending and is re-claimed later.
    """
    import redis

    try:
        return _consume(client, consumer, min(count, MAX_COUNT), claim_idle_seconds)
    except redis.ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
        if client.exists(stream_name()):
            # Entries but no group: someone destroyed it, or Redis lost it and a producer
            # wrote again since. Worth an operator's look; reading restarts from the start.
            logger.warning(
                "inbound stream %s had no group %s (Redis lost it?); recreating it",
                stream_name(), group_name(),
            )  # fmt: skip
        else:
            # No stream yet: a fresh install (or nothing was ever sent). Nothing is wrong.
            logger.info("inbound stream %s: creating group %s", stream_name(), group_name())
        ensure_group(client)
        return _consume(client, consumer, min(count, MAX_COUNT), claim_idle_seconds)


def _consume(
    client: Any, consumer: str, count: int, claim_idle_seconds: float | None
) -> ConsumeResult:
    stream, group = stream_name(), group_name()
    if claim_idle_seconds is None:
        claim_idle_seconds = float(settings.INBOUND_EVENT_CLAIM_IDLE_SECONDS)
    result = ConsumeResult()
    # Entries a consumer read but never acknowledged (it crashed, or its commit failed).
    reply = client.xautoclaim(
        stream, group, consumer, min_idle_time=int(claim_idle_seconds * 1000),
        start_id="0-0", count=count,
    )  # fmt: skip
    entries = list(reply[1])
    result.reclaimed = len(entries)
    if len(entries) < count:
        # block=None: non-blocking; the scheduler loop has its own wait.
        for _, items in client.xreadgroup(
            group, consumer, {stream: ">"}, count=count - len(entries)
        ):
            entries += items
    for entry_id, fields in entries:
        if fields is None:  # trimmed away while pending: nothing left to store
            client.xack(stream, group, entry_id)
            continue
        try:
            created = store_entry(fields)
        except Rejected as exc:
            result.rejected += 1
            logger.warning(
                "inbound event %s rejected: %s", _text(entry_id), exc.reason,
                extra={"stream_entry_id": _text(entry_id)},
            )  # fmt: skip
            _record_rejected(entry_id, fields, exc.reason)
        else:
            result.stored += created
            result.duplicates += not created
        # Only now: the Event (or the decision to reject) is final.
        client.xack(stream, group, entry_id)
    return result


def _record_rejected(entry_id: Any, fields: dict[Any, Any] | None, reason: str) -> None:
    """Keep the refusal in the audit log: who tried to publish what, and why it failed."""
    values: dict[str, str] = {}
    for key in ("topic", "source_agent_id", "idempotency_key"):
        raw = (fields or {}).get(key, (fields or {}).get(key.encode()))
        if isinstance(raw, bytes):
            values[key] = raw[:200].decode(errors="replace")
        elif raw is not None:
            values[key] = str(raw)[:200]
    record(
        actor=Actor.system("inbound-stream"),
        action="event.rejected",
        subject_type="stream_entry",
        subject_id=_text(entry_id),
        details={"reason": reason, **values},
    )


def consume_safely(client: Any | None, *, consumer: str) -> ConsumeResult | None:
    """consume() for the scheduler loop: errors are logged, never raised."""
    if client is None:
        return None
    import redis

    try:
        return consume(client, consumer=consumer)
    except (redis.RedisError, OSError) as exc:
        logger.warning("inbound stream: Redis unavailable, retried next tick: %s", exc)
    except Exception:
        # Unacked entries stay pending and are re-claimed; scheduling goes on.
        logger.exception("inbound stream: consuming failed; entries will be re-claimed")
    return None
