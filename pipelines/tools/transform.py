"""transform.jmespath: reshape data with a JMESPath expression."""

from __future__ import annotations

from typing import Any

from jmespath.exceptions import JMESPathError

from pipelines.templating import TemplateError, compile_expression
from pipelines.tools.base import ToolContext, ToolError, ToolSpec


def jmespath_tool(arguments: dict[str, Any], context: ToolContext) -> Any:
    try:
        compiled = compile_expression(arguments["expression"])
        return compiled.search(arguments.get("data"))
    except (TemplateError, JMESPathError) as exc:
        raise ToolError(f"transform.jmespath: {exc}", retryable=False) from exc


TOOLS = [
    ToolSpec(
        name="transform.jmespath",
        description="Apply the JMESPath `expression` to `data`; the output is the result.",
        input_schema={
            "type": "object",
            "required": ["expression"],
            "additionalProperties": False,
            "properties": {"expression": {"type": "string", "minLength": 1}, "data": {}},
        },
        output_schema=None,
        required_scope=None,
        timeout_seconds=10,
        func=jmespath_tool,
        inline=True,
    ),
]
