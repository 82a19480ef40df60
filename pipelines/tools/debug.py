"""debug.echo, debug.log, debug.sleep: for the quick start, demos and tests."""

from __future__ import annotations

import logging
import time
from typing import Any

from pipelines.tools.base import ANY_OBJECT, ToolContext, ToolSpec, ToolTimeout

logger = logging.getLogger("pipelines.debug")

MAX_SLEEP_SECONDS = 300
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def echo(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
    return arguments


def log(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
    message = arguments["message"]
    logger.log(
        _LEVELS[arguments.get("level", "info")],
        "step %s: %s",
        context.step_id,
        message,
        extra={"correlation_id": context.correlation_id, "step_id": context.step_id},
    )
    return {"logged": message}


def sleep(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
    seconds = float(arguments["seconds"])
    if seconds > context.timeout:
        # Sleep out the allowance so the timeout is real, then report it.
        time.sleep(max(context.timeout, 0))
        raise ToolTimeout(f"debug.sleep: {seconds:g}s exceeds the {context.timeout:g}s timeout")
    time.sleep(seconds)
    return {"slept": seconds}


TOOLS = [
    ToolSpec(
        name="debug.echo",
        description="Return the input object unchanged.",
        input_schema=ANY_OBJECT,
        output_schema=ANY_OBJECT,
        required_scope=None,
        timeout_seconds=10,
        func=echo,
        inline=True,
    ),
    ToolSpec(
        name="debug.log",
        description="Write `message` to the worker's log; returns {logged: message}.",
        input_schema={
            "type": "object",
            "required": ["message"],
            "properties": {
                "message": {},
                "level": {"enum": list(_LEVELS)},
            },
        },
        output_schema={"type": "object", "required": ["logged"]},
        required_scope=None,
        timeout_seconds=10,
        func=log,
        inline=True,
    ),
    ToolSpec(
        name="debug.sleep",
        description=f"Sleep `seconds` (at most {MAX_SLEEP_SECONDS}); returns {{slept}}.",
        input_schema={
            "type": "object",
            "required": ["seconds"],
            "additionalProperties": False,
            "properties": {
                "seconds": {"type": "number", "minimum": 0, "maximum": MAX_SLEEP_SECONDS},
            },
        },
        output_schema={"type": "object", "required": ["slept"]},
        required_scope=None,
        timeout_seconds=MAX_SLEEP_SECONDS + 10,
        func=sleep,
    ),
]
