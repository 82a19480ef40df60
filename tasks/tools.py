"""The tasks app's pipeline tools: `task.create` schedules a follow-up task as the agent that
owns the pipeline.

They live here, not in `pipelines/tools/`, because they call the tasks services, and
`pipelines/` sits below `tasks/`: `TasksConfig.ready()` hands them to the registry.
"""

from __future__ import annotations

import hashlib
from typing import Any

from audit.services import Actor
from ordinaut.errors import OrdinautError
from pipelines.tools.base import ToolContext, ToolError, ToolSpec
from tasks.services import task_create_deduplicated
from tasks.validation import MAX_DEDUPE_WINDOW_SECONDS, MAX_RETRIES, MAX_TIMEOUT_SECONDS

# A retried attempt must not create the follow-up twice: without the caller's own
# dedupe_key, the task is deduplicated on (occurrence, step) for this long.
IDEMPOTENCY_WINDOW_SECONDS = 7 * 24 * 3600
_PASSED_THROUGH = (
    "description", "priority", "max_retries", "timeout_seconds", "concurrency_key",
    "misfire_policy", "backoff_strategy",
)  # fmt: skip


def create(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
    agent = context.agent
    if agent is None:
        raise ToolError("task.create: the pipeline has no owning agent", retryable=False)
    dedupe_key = arguments.get("dedupe_key")
    window = arguments.get("dedupe_window_seconds", 0)
    if not dedupe_key and context.run is not None and context.run.occurrence_id is not None:
        seed = f"{context.run.task_id}:{context.run.occurrence_id}:{context.step_id}"
        dedupe_key = "pipeline:" + hashlib.sha256(seed.encode()).hexdigest()[:40]
        window = IDEMPOTENCY_WINDOW_SECONDS
    try:
        task, created = task_create_deduplicated(
            created_by=agent,
            actor=Actor.agent(agent),
            title=arguments["title"],
            schedule_kind=arguments["schedule_kind"],
            schedule_expr=arguments.get("schedule_expr"),
            payload=arguments["payload"],
            timezone_name=arguments.get("timezone"),
            dedupe_key=dedupe_key,
            dedupe_window_seconds=window,
            **{key: arguments[key] for key in _PASSED_THROUGH if key in arguments},
        )
    except OrdinautError as exc:
        raise ToolError(f"task.create: {exc.message}", retryable=False) from exc
    return {
        "task_id": str(task.id),
        "title": task.title,
        "created": created,
        "next_run_at": task.next_run_at.isoformat() if task.next_run_at else None,
    }


TOOLS = [
    ToolSpec(
        name="task.create",
        description="Create a task owned by the pipeline's agent; output {task_id, ...}.",
        input_schema={
            "type": "object",
            "required": ["title", "schedule_kind", "payload"],
            "additionalProperties": False,
            "properties": {
                "title": {"type": "string", "minLength": 1, "maxLength": 200},
                "schedule_kind": {"enum": ["cron", "rrule", "once", "event", "condition"]},
                "schedule_expr": {"type": ["string", "null"]},
                "timezone": {"type": "string"},
                "payload": {"type": "object"},
                "dedupe_key": {"type": "string", "maxLength": 100},
                "dedupe_window_seconds": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": MAX_DEDUPE_WINDOW_SECONDS,
                },
                "description": {"type": "string"},
                "priority": {"type": "integer", "minimum": 1, "maximum": 9},
                "max_retries": {"type": "integer", "minimum": 0, "maximum": MAX_RETRIES},
                "timeout_seconds": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_TIMEOUT_SECONDS,
                },
                "concurrency_key": {"type": "string"},
                "misfire_policy": {"type": "string"},
                "backoff_strategy": {"type": "string"},
            },
        },
        output_schema={"type": "object", "required": ["task_id"]},
        required_scope="tasks:write",
        timeout_seconds=30,
        func=create,
    ),
]
