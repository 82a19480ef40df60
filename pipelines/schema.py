"""The JSON Schema of a task payload (draft 2020-12), published at /schemas/pipeline.

It describes shape only; `pipelines.validation` adds what a schema cannot say (unique step
ids, references to earlier steps, known tools, the agent's scopes, tool input schemas).
"""

from __future__ import annotations

from typing import Any

# Step ids and save_as names: usable in `${steps.<name>}` without quoting when they avoid
# `-` (with `-`, JMESPath needs `${steps."my-step"}`).
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,99}$"
MAX_STEPS = 200
MAX_STEP_TIMEOUT_SECONDS = 3600
MAX_STEP_ATTEMPTS = 10

PAYLOAD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://ordinaut.dev/schemas/pipeline.json",
    "title": "Ordinaut task payload",
    "description": (
        "A pipeline: ordered steps, each calling a tool with templated input. "
        "Templates: ${params.x}, ${steps.<id or save_as>.path}, ${run.id}, ${task.id}, "
        "${event.payload.x}, ${now}, ${now+24h}, ${secrets.NAME}."
    ),
    "type": "object",
    "required": ["pipeline"],
    "properties": {
        "params": {
            "type": "object",
            "description": "Values the steps read as ${params.name}.",
        },
        "pipeline": {
            "type": "array",
            "maxItems": MAX_STEPS,
            "items": {"$ref": "#/$defs/step"},
        },
        "output": {
            "description": (
                "The run's output, a template over the run context; without it the output "
                'is {"steps": {<id or save_as>: output}}.'
            ),
        },
    },
    "$defs": {
        "name": {"type": "string", "pattern": NAME_PATTERN},
        "step": {
            "type": "object",
            "required": ["uses"],
            "additionalProperties": False,
            "properties": {
                "id": {
                    "$ref": "#/$defs/name",
                    "description": "Unique within the pipeline; defaults to step_<index>.",
                },
                "uses": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 300,
                    "description": "Tool name: a built-in (debug.echo) or mcp.<server>.<tool>.",
                },
                "with": {
                    "type": "object",
                    "description": "The tool's input; strings may contain ${...} templates.",
                },
                "save_as": {
                    "$ref": "#/$defs/name",
                    "description": "Another name for the step's output in ${steps.<name>}.",
                },
                "if": {
                    "type": "string",
                    "minLength": 1,
                    "description": "JMESPath over {params, steps, run, task, event, now}; "
                    "a falsy result skips the step.",
                },
                "timeout_seconds": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "maximum": MAX_STEP_TIMEOUT_SECONDS,
                },
                "max_retries": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": MAX_STEP_ATTEMPTS - 1,
                    "description": "The original's per-step retries (attempts = 1 + this).",
                },
                "retry": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "attempts": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_STEP_ATTEMPTS,
                        },
                        "backoff_seconds": {"type": "number", "minimum": 0, "maximum": 300},
                        "backoff": {"enum": ["fixed", "exponential"]},
                    },
                },
                "on_error": {"enum": ["fail", "continue"]},
                "description": {"type": "string", "maxLength": 2000},
            },
        },
    },
}
