"""Which tasks an event triggers, and what makes an event acceptable (pure: no database).

An `event` task's schedule_expr is a topic glob (fnmatch: `*`, `?`, `[...]`, case-sensitive);
a `condition` task's is a JMESPath expression over `{topic, payload, source_agent_id}`.
Published topics are literal: 1..100 letters, digits and `._:-`, no globs.
"""

from __future__ import annotations

import json
import logging
import re
from fnmatch import fnmatchcase
from typing import Any

from django.conf import settings

from ordinaut.errors import InvalidInput
from tasks.models import ScheduleKind

logger = logging.getLogger(__name__)

TOPIC_RE = re.compile(r"[A-Za-z0-9._:\-]{1,100}")
DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024


def max_payload_bytes() -> int:
    return int(getattr(settings, "EVENT_MAX_PAYLOAD_BYTES", DEFAULT_MAX_PAYLOAD_BYTES))


def validate_event(topic: Any, payload: Any, idempotency_key: Any = None) -> None:
    """Raise InvalidInput naming the field when the event cannot be stored."""
    if not isinstance(topic, str) or not TOPIC_RE.fullmatch(topic):
        reason = "must be 1..100 characters of letters, digits and . _ : - (no wildcards)"
        raise InvalidInput(f"topic: {reason}", details={"topic": [reason]})
    if not isinstance(payload, dict):
        raise InvalidInput("payload: must be a JSON object", details={"payload": ["not an object"]})
    size = len(json.dumps(payload, separators=(",", ":")).encode())
    limit = max_payload_bytes()
    if size > limit:
        reason = f"is {size} bytes; the limit is {limit} bytes"
        raise InvalidInput(f"payload: {reason}", details={"payload": [reason]})
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str) or not 1 <= len(idempotency_key) <= 200
    ):
        reason = "must be a string of 1..200 characters"
        raise InvalidInput(f"idempotency_key: {reason}", details={"idempotency_key": [reason]})


def event_document(topic: str, payload: dict, source_agent_id: Any) -> dict[str, Any]:
    """What a condition task's JMESPath expression is evaluated against."""
    return {
        "topic": topic,
        "payload": payload,
        "source_agent_id": str(source_agent_id) if source_agent_id is not None else None,
    }


def triggers(kind: str, expr: str | None, document: dict[str, Any]) -> bool:
    """True when a task of schedule `kind`/`expr` fires for the event `document`.

    A condition that fails to evaluate does not fire (and is logged): one bad task must not
    stop an event reaching the others.
    """
    if not expr:
        return False
    if kind == ScheduleKind.EVENT:
        return fnmatchcase(document["topic"], expr)
    if kind == ScheduleKind.CONDITION:
        from pipelines.conditions import ConditionError, evaluate_condition

        try:
            return evaluate_condition(expr, document)
        except ConditionError as exc:
            logger.warning("condition %r failed for topic %s: %s", expr, document["topic"], exc)
    return False
