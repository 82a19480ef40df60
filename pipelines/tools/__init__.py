"""Built-in tools. Each module defines TOOLS; `BUILTIN_TOOLS` maps name -> ToolSpec."""

from __future__ import annotations

from pipelines.tools import approval, debug, http, llm, tasks, transform
from pipelines.tools.base import ToolContext, ToolError, ToolSpec, ToolTimeout, ToolWaiting

BUILTIN_TOOLS: dict[str, ToolSpec] = {
    spec.name: spec
    for module in (debug, http, llm, approval, tasks, transform)
    for spec in module.TOOLS
}

__all__ = ["BUILTIN_TOOLS", "ToolContext", "ToolError", "ToolSpec", "ToolTimeout", "ToolWaiting"]
