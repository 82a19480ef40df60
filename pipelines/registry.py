"""The tool registry: built-in tools, tools registered by the apps above `pipelines/`, and
the tools of every enabled MCP server.

MCP tools are named `mcp.<server>.<tool>`. For payloads written for the original, a
`<server>.<tool>` name whose first part is an enabled MCP server resolves to the same tool.
A name on an enabled server that its stored tool list lacks triggers one discovery refresh
before it is reported unknown (the server may have gained the tool since).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from django.core.cache import cache

from ordinaut.scopes import SCOPE_PATTERN
from pipelines.tools import BUILTIN_TOOLS
from pipelines.tools.base import ToolContext, ToolError, ToolSpec

logger = logging.getLogger("pipelines.registry")

MCP_PREFIX = "mcp."
# An unknown tool name rediscovers its server at most this often (seconds).
REDISCOVERY_SECONDS = 60
REDISCOVERY_KEY = "ordinaut:mcp-rediscovery"
_SCOPE_RE = re.compile(SCOPE_PATTERN)

# Tools an app registers at start-up (see register_tools); built-ins are never replaced.
_REGISTERED: dict[str, ToolSpec] = {}


class UnknownTool(LookupError):
    """No tool has this name; the message says why (unknown server, undiscovered tool...)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def register_tools(specs: list[ToolSpec]) -> None:
    """Make an app's tools callable from pipelines (from its `AppConfig.ready()`).

    Registering the same spec again is a no-op (ready() may run twice in tests); another
    spec under a taken name is a programming error.
    """
    for spec in specs:
        taken = BUILTIN_TOOLS.get(spec.name) or _REGISTERED.get(spec.name)
        if taken is not None and taken is not spec:
            raise ValueError(f"tool {spec.name!r} is already registered")
        if spec.name.startswith(MCP_PREFIX):
            raise ValueError(f"tool names starting with {MCP_PREFIX!r} belong to MCP servers")
        _REGISTERED[spec.name] = spec


def list_tools() -> list[ToolSpec]:
    """Every usable tool: built-ins, registered app tools, then MCP tools by server and name."""
    from pipelines.models import McpServer

    tools = [*BUILTIN_TOOLS.values(), *_REGISTERED.values()]
    for server in McpServer.objects.filter(enabled=True).order_by("name"):
        tools.extend(mcp_tool_spec(server, tool) for tool in server.tools)
    return tools


def get_tool(name: str, *, refresh: bool = True, spawn: bool = True) -> ToolSpec:
    """The tool called `name`; raises UnknownTool with the reason.

    With `refresh`, an unknown tool of an enabled MCP server triggers a discovery first —
    at most one per server a minute, across processes, so a request naming unknown tools
    cannot make us reconnect again and again. Without `spawn` (validating a task in the
    web process) a stdio server is never started: only its stored tool list is read.
    """
    builtin = BUILTIN_TOOLS.get(name) or _REGISTERED.get(name)
    if builtin is not None:
        return builtin
    server_name, tool_name = _split_mcp_name(name)
    if server_name is None or tool_name is None:
        raise UnknownTool(f"unknown tool {name!r}")
    from pipelines.models import McpServer

    server = McpServer.objects.filter(name=server_name).first()
    if server is None or not server.enabled:
        if not name.startswith(MCP_PREFIX):
            raise UnknownTool(f"unknown tool {name!r}")
        state = "is disabled" if server is not None else "is not configured"
        raise UnknownTool(f"unknown tool {name!r}: MCP server {server_name!r} {state}")
    found = _find(server, tool_name)
    if found is None and refresh and (spawn or server.transport != "stdio"):
        server = _rediscover(server)
        found = _find(server, tool_name)
    if found is None:
        known = ", ".join(server.tool_names()) or "none discovered"
        hint = f"; last discovery failed: {server.last_error}" if server.last_error else ""
        raise UnknownTool(
            f"unknown tool {name!r}: MCP server {server_name!r} has no tool {tool_name!r} "
            f"(tools: {known}){hint}"
        )
    return mcp_tool_spec(server, found)


def mcp_tool_spec(server: Any, tool: dict[str, Any]) -> ToolSpec:
    """A registry entry for one discovered tool of `server`."""
    from pipelines import mcp_client

    tool_name = tool["name"]

    def call(arguments: dict[str, Any], context: ToolContext) -> Any:
        config = mcp_client.ServerConfig.from_server(server)
        return mcp_client.call_tool(config, tool_name, arguments, timeout=context.timeout)

    one_tool = f"mcp:{server.name}:{tool_name.lower()}"
    return ToolSpec(
        name=f"{MCP_PREFIX}{server.name}.{tool_name}",
        description=tool.get("description") or "",
        input_schema=tool.get("input_schema") or {"type": "object"},
        output_schema=tool.get("output_schema"),
        # Never open to everyone: a server saved without a scope needs mcp:<name>.
        required_scope=server.required_scope or f"mcp:{server.name}",
        timeout_seconds=server.timeout_seconds,
        func=call,
        source=f"mcp:{server.name}",
        tool_scope=one_tool if _SCOPE_RE.match(one_tool) else None,
    )


def _split_mcp_name(name: str) -> tuple[str | None, str | None]:
    """(server, tool) from `mcp.server.tool` or the original's `server.tool`."""
    rest = name[len(MCP_PREFIX) :] if name.startswith(MCP_PREFIX) else name
    server, dot, tool = rest.partition(".")
    if not dot or not server or not tool:
        return None, None
    return server, tool


def _find(server: Any, tool_name: str) -> dict[str, Any] | None:
    return next((tool for tool in server.tools if tool.get("name") == tool_name), None)


def _rediscover(server: Any) -> Any:
    from audit.services import Actor
    from pipelines.services import mcp_server_discover

    # cache.add is atomic in Redis: the first caller in a minute wins, the rest read what
    # is stored.
    if not cache.add(f"{REDISCOVERY_KEY}:{server.pk}", 1, timeout=REDISCOVERY_SECONDS):
        return server
    try:
        return mcp_server_discover(server=server, actor=Actor.system("tool-registry"))
    except ToolError as exc:
        logger.warning("discovery of MCP server %s failed: %s", server.name, exc.message)
        return server
