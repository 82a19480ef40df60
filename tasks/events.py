"""Events in: what makes one acceptable, which tasks it triggers, and publishing it.

An `event` task's schedule_expr is a topic glob (fnmatch: `*`, `?`, `[...]`, case-sensitive);
a `condition` task's is a JMESPath expression over `{topic, payload, source_agent_id}`.
Published topics are literal: 1..100 letters, digits and `._:-`, no globs.

`validate_event`, `event_document` and `triggers` are pure; `event_publish` stores the event
and has `tasks.queue` enqueue the triggered occurrences, in one transaction.

Who may reach whom (ordinaut/scopes.py has the scope rules): publishing needs
`events:publish` or an `events:publish:<glob>` matching the topic. An event triggers a task
only when the task's agent is the publisher, or holds an `events:subscribe:<glob>` matching
the topic, or `admin`; otherwise one agent's events would start, and feed their payloads
into, every other agent's tasks. The publisher learns only how many of its own tasks fired.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from agents.models import Agent
from audit import record
from audit.services import Actor
from ordinaut.correlation import get_correlation_id
from ordinaut.database import advisory_xact_lock
from ordinaut.errors import Forbidden, InvalidInput
from ordinaut.scopes import may_publish, may_receive
from pipelines.conditions import ConditionError, evaluate_condition
from tasks import queue as occurrence_queue
from tasks.budgets import hourly_room, take_room
from tasks.delivery.outbox import outbox_add
from tasks.models import Event, ScheduleKind, SkipReason, Task, TaskStatus
from tasks.services import record_skipped

logger = logging.getLogger(__name__)

TOPIC_RE = re.compile(r"[A-Za-z0-9._:\-]{1,100}")


def validate_event(topic: Any, payload: Any, idempotency_key: Any = None) -> None:
    """Raise InvalidInput naming the field when the event cannot be stored."""
    if not isinstance(topic, str) or not TOPIC_RE.fullmatch(topic):
        reason = "must be 1..100 characters of letters, digits and . _ : - (no wildcards)"
        raise InvalidInput(f"topic: {reason}", details={"topic": [reason]})
    if not isinstance(payload, dict):
        raise InvalidInput("payload: must be a JSON object", details={"payload": ["not an object"]})
    size = len(json.dumps(payload, separators=(",", ":")).encode())
    limit = settings.EVENT_MAX_PAYLOAD_BYTES
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
        try:
            return evaluate_condition(expr, document)
        except ConditionError as exc:
            logger.warning("condition %r failed for topic %s: %s", expr, document["topic"], exc)
    return False


def require_publish(granted: Iterable[str], topic: str) -> None:
    """Raise Forbidden naming the topic unless `granted` may publish it."""
    if not may_publish(granted, topic):
        reason = (
            f"may not publish topic {topic!r}: needs events:publish or a matching "
            "events:publish:<glob>"
        )
        raise Forbidden(f"topic: {reason}", details={"topic": [reason]})


def receives(agent_id: Any, agent_scopes: Iterable[str], publisher_id: Any, topic: str) -> bool:
    """True when a task of `agent_id` may be triggered by `publisher_id`'s event on `topic`."""
    if publisher_id is not None and str(agent_id) == str(publisher_id):
        return True
    return may_receive(agent_scopes, topic)


def triggered_tasks(
    document: dict[str, Any],
) -> tuple[list[occurrence_queue.EventTarget], list[Any]]:
    """Active event and condition tasks of active agents that fire for `document` and may
    receive it, and the ids of those that would but whose agent is paused (a read)."""
    candidates = Task.objects.filter(
        status=TaskStatus.ACTIVE,
        schedule_kind__in=[ScheduleKind.EVENT, ScheduleKind.CONDITION],
        created_by__is_active=True,
    ).values_list(
        "id", "schedule_kind", "schedule_expr", "priority", "concurrency_key",
        "created_by_id", "created_by__scopes", "created_by__paused_at",
    )  # fmt: skip
    publisher, topic = document["source_agent_id"], document["topic"]
    targets: list[occurrence_queue.EventTarget] = []
    held: list[Any] = []
    for task_id, kind, expr, priority, key, agent_id, scopes, paused_at in candidates.iterator(
        chunk_size=2000
    ):
        if not (receives(agent_id, scopes, publisher, topic) and triggers(kind, expr, document)):
            continue
        if paused_at is not None:
            held.append(task_id)
            continue
        target = occurrence_queue.EventTarget(
            task_id=str(task_id), priority=priority, concurrency_key=key, agent_id=str(agent_id)
        )
        targets.append(target)
    return targets, held


def _within_budget(
    targets: list[occurrence_queue.EventTarget],
) -> tuple[list[occurrence_queue.EventTarget], list[str]]:
    """(targets whose agent's max_runs_per_hour leaves room, task ids of the others)."""
    room = hourly_room({target.agent_id for target in targets})
    kept: list[occurrence_queue.EventTarget] = []
    over: list[str] = []
    for target in targets:
        if take_room(room, target.agent_id, 1):
            kept.append(target)
        else:
            over.append(target.task_id)
    return kept, over


def _first_with_key(source: Agent | None, idempotency_key: str) -> Event | None:
    """The source's event stored under `idempotency_key`, serialising racing retries of it.

    A transaction-scoped advisory lock on (source, key) makes the second of two concurrent
    publishes wait and then find the first; the unique index is the backstop.
    """
    advisory_xact_lock(f"event-idempotency:{source.pk if source else ''}:{idempotency_key}")
    return Event.objects.filter(source_agent=source, idempotency_key=idempotency_key).first()


def event_publish(
    *,
    topic: str,
    payload: dict,
    actor: Actor,
    granted: Iterable[str],
    source: Agent | None = None,
    idempotency_key: str | None = None,
    now: datetime | None = None,
) -> tuple[Event, bool]:
    """Store an event and enqueue an occurrence of every active task it may trigger.

    `granted` are the publishing credential's scopes. Returns (event, created). With an
    idempotency key already used by the same source, the first event is returned with
    created=False and nothing is written. Raises InvalidInput (nothing written) for a
    malformed topic, a non-object or oversized payload; Forbidden for a topic `granted`
    may not publish.
    """
    validate_event(topic, payload, idempotency_key)
    require_publish(granted, topic)
    with transaction.atomic():
        if idempotency_key is not None:
            existing = _first_with_key(source, idempotency_key)
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
        targets, held = triggered_tasks(document)
        targets, over_budget = _within_budget(targets)
        for reason, task_ids in ((SkipReason.AGENT_PAUSED, held),
                                 (SkipReason.BUDGET_EXCEEDED, over_budget)):  # fmt: skip
            for task_id in task_ids:
                # A task that would have fired: the ledger says why nothing was queued.
                record_skipped(
                    task_id, [event.published_at], reason=reason,
                    now=event.published_at, details={"event_id": str(event.id)},
                )  # fmt: skip
        event.triggered_tasks = occurrence_queue.enqueue_for_event(
            event_id=event.id,
            at=event.published_at,
            targets=targets,
            correlation_id=get_correlation_id() or "",
        )
        event.publisher_triggered_tasks = sum(
            source is not None and target.agent_id == str(source.pk) for target in targets
        )
        event.save(update_fields=["triggered_tasks", "publisher_triggered_tasks"])
        outbox_add(type="event.published", data={"event_id": str(event.id), "topic": topic})
        record(
            actor=actor,
            action="event.published",
            subject=event,
            details={"topic": topic, "triggered_tasks": event.triggered_tasks},
        )
    return event, True
