"""Checks of the values a task use case accepts: one message naming the field and the reason.

Every check raises `InvalidInput` with `details={field: [reason]}`, which the API renders as
a 422 and MCP as a `422 validation_error` tool error. Pure apart from `validate_payload`,
which looks tools up in the registry (MCP tools live in the database).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from ordinaut.errors import InvalidInput
from pipelines.validation import validate_payload as validate_pipeline
from tasks import schedules
from tasks.models import BackoffStrategy, MisfirePolicy, ScheduleKind, Task, TaskStatus

# Fields whose change means the schedule is evaluated afresh.
SCHEDULE_FIELDS = {"schedule_kind", "schedule_expr", "timezone"}

# Upper bounds of the numeric task fields. Each value reaches a timedelta, a float or a
# SQL interval in the worker or scheduler, so an unbounded one could crash them there;
# beyond these a create or update is a 422 naming the field.
MAX_RETRIES = 20
MAX_TIMEOUT_SECONDS = 24 * 3600
MAX_DEDUPE_WINDOW_SECONDS = 30 * 24 * 3600
MAX_SNOOZE_SECONDS = 7 * 24 * 3600


def choice_field(field: str, value: Any, choices: Iterable[str]) -> str:
    """`value` when it is one of `choices`; raise InvalidInput listing them otherwise."""
    allowed = list(choices)
    if value not in allowed:
        reason = f"must be one of {', '.join(allowed)}"
        raise InvalidInput(f"{field}: {reason}", details={field: [reason]})
    return value


def int_field(field: str, value: Any, low: int, high: int | None = None) -> int:
    """`value` when it is an integer (not a bool) in [low, high]; raise InvalidInput."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{field}: must be an integer", details={field: ["must be an integer"]})
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise InvalidInput(f"{field}: must be {bound}", details={field: [f"must be {bound}"]})
    return value


def text_field(field: str, value: Any, *, max_length: int, required: bool) -> str | None:
    """`value` when it is a string of at most `max_length`; None or "" pass unless required."""
    if value is None or value == "":
        if required:
            raise InvalidInput(f"{field}: required", details={field: ["required"]})
        return None if value is None else ""
    if not isinstance(value, str) or len(value) > max_length:
        reason = f"must be a string of at most {max_length} characters"
        raise InvalidInput(f"{field}: {reason}", details={field: [reason]})
    return value


def validate_payload(payload: Any, *, scopes: list[str] | None = None) -> dict:
    """The whole pipeline payload: schema, step ids, tools, templates, the agent's scopes.

    Raises InvalidInput listing every problem with its path (`payload.pipeline[2].with.url`).
    """
    return validate_pipeline(payload, scopes=scopes)


def validated_schedule(kind: str, expr: str | None, tz: str, now: datetime) -> str | None:
    """Validate the schedule; return the expression to store (rrules get their DTSTART).

    Raises InvalidInput naming `schedule_kind`, `timezone` or `schedule_expr`.
    """
    choice_field("schedule_kind", kind, ScheduleKind.values)
    try:
        schedules.validate(kind, expr, tz, now)
    except schedules.ScheduleError as exc:
        field = "timezone" if str(exc).startswith("unknown timezone") else "schedule_expr"
        raise InvalidInput(f"{field}: {exc}", details={field: [str(exc)]}) from exc
    if kind == ScheduleKind.RRULE:
        # Anchor the rule at creation so INTERVAL=2 keeps its phase across restarts.
        return schedules.with_dtstart(expr, tz, now)
    return expr


def revalidate_changes(task: Task, changes: dict[str, Any], now: datetime) -> None:
    """Check the fields `changes` touched, as they now stand on `task`; raise InvalidInput.

    A changed rrule is re-anchored (it gets a DTSTART at `now`), as at creation.
    """
    if SCHEDULE_FIELDS & set(changes):
        if "schedule_expr" in changes and task.schedule_kind == ScheduleKind.RRULE:
            task.schedule_expr = validated_schedule(
                task.schedule_kind, task.schedule_expr, task.timezone, now
            )
        else:
            validated_schedule(task.schedule_kind, task.schedule_expr, task.timezone, now)
    if "title" in changes:
        text_field("title", task.title, max_length=200, required=True)
    if "payload" in changes:
        validate_payload(task.payload, scopes=task.created_by.scopes)
    if "priority" in changes:
        int_field("priority", task.priority, 1, 9)
    if "status" in changes:
        choice_field("status", task.status, TaskStatus.values)
    if "max_retries" in changes:
        int_field("max_retries", task.max_retries, 0, MAX_RETRIES)
    if "dedupe_window_seconds" in changes:
        int_field("dedupe_window_seconds", task.dedupe_window_seconds, 0, MAX_DEDUPE_WINDOW_SECONDS)
    if "backoff_strategy" in changes:
        choice_field("backoff_strategy", task.backoff_strategy, BackoffStrategy.values)
    if "misfire_policy" in changes:
        choice_field("misfire_policy", task.misfire_policy, MisfirePolicy.values)
    if changes.get("timeout_seconds") is not None:
        int_field("timeout_seconds", task.timeout_seconds, 1, MAX_TIMEOUT_SECONDS)
