"""Built-in tools. Each module defines TOOLS; `BUILTIN_TOOLS` maps name -> ToolSpec.

Tools of the apps above `pipelines/` (the tasks app's `task.create`) are not built in: their
app registers them with `pipelines.registry.register_tools` when it is ready.
"""

from __future__ import annotations

from pipelines.tools import approval, debug, http, llm, transform
from pipelines.tools.base import ToolContext, ToolError, ToolSpec, ToolTimeout, ToolWaiting

BUILTIN_TOOLS: dict[str, ToolSpec] = {
    spec.name: spec for module in (debug, http, llm, approval, transform) for spec in module.TOOLS
}

__all__ = ["BUILTIN_TOOLS", "ToolContext", "ToolError", "ToolSpec", "ToolTimeout", "ToolWaiting"]
