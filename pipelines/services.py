"""Use cases that change MCP server configuration: register or update, discover tools."""

from __future__ import annotations

import re
from typing import Any

from django.db import transaction
from django.utils import timezone

from audit import record
from audit.services import Actor
from ordinaut.errors import InvalidInput
from ordinaut.masking import mask_args, mask_url
from pipelines import mcp_client
from pipelines.models import SERVER_NAME_PATTERN, McpServer, Transport
from pipelines.tools.base import ToolError


def mcp_server_upsert(
    *,
    name: str,
    actor: Actor,
    command: str = "",
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    url: str = "",
    headers: dict[str, str] | None = None,
    required_scope: str | None = None,
    timeout_seconds: float = 30,
) -> tuple[McpServer, bool]:
    """Create or update an enabled server; exactly one of `command` and `url` is given.

    `required_scope` defaults to (and, blank, means) `mcp:<name>`: a server's tools are
    never open to every agent. Each tool is also granted alone by `mcp:<name>:<tool>`.
    Returns (server, created).
    Raises InvalidInput naming the field. Writes `mcp_server.created` / `.updated`.
    """
    if not re.match(SERVER_NAME_PATTERN, name or ""):
        reason = "lowercase letters, digits, - and _, starting with a letter (max 63)"
        raise InvalidInput(f"name: {reason}", details={"name": [reason]})
    if bool(command) == bool(url):
        reason = "give either a command (stdio) or a url (streamable HTTP)"
        raise InvalidInput(reason, details={"command": [reason], "url": [reason]})
    if url and not re.match(r"^https?://", url):
        raise InvalidInput("url: must be http(s)", details={"url": ["must be http(s)"]})
    if timeout_seconds <= 0:
        raise InvalidInput("timeout_seconds: must be > 0", details={"timeout_seconds": ["> 0"]})
    values: dict[str, Any] = {
        "transport": Transport.STDIO if command else Transport.HTTP,
        "command": command,
        "args": list(args or []),
        "env": dict(env or {}),
        "url": url,
        "headers": dict(headers or {}),
        "enabled": True,
        "required_scope": (required_scope or "").strip() or f"mcp:{name}",
        "timeout_seconds": timeout_seconds,
    }
    with transaction.atomic():
        server, created = McpServer.objects.select_for_update().update_or_create(
            name=name, defaults=values
        )
        record(
            actor=actor,
            action="mcp_server.created" if created else "mcp_server.updated",
            subject=server,
            details={
                "transport": server.transport,
                "command": server.command,
                # Masked: arguments and URLs may carry credentials.
                "args": mask_args(server.args),
                "url": mask_url(server.url),
                # Names only: values may be secrets.
                "env": sorted(server.env),
                "headers": sorted(server.headers),
                "required_scope": server.required_scope,
            },
        )
    return server, created


def mcp_server_discover(*, server: McpServer, actor: Actor) -> McpServer:
    """Ask the server for its tools and store them; on failure keep the old list.

    Raises ToolError when the server cannot be reached (its message is kept in
    `last_error`). Writes `mcp_server.discovered`.
    """
    config = mcp_client.ServerConfig.from_server(server)
    try:
        tools = mcp_client.list_server_tools(config, timeout=server.timeout_seconds)
    except ToolError as exc:
        McpServer.objects.filter(pk=server.pk).update(last_error=exc.message)
        server.last_error = exc.message
        raise
    now = timezone.now()
    with transaction.atomic():
        McpServer.objects.filter(pk=server.pk).update(
            tools=tools, discovered_at=now, last_error="", updated_at=now
        )
        server.tools, server.discovered_at, server.last_error = tools, now, ""
        record(
            actor=actor,
            action="mcp_server.discovered",
            subject=server,
            details={"tools": [tool["name"] for tool in tools]},
        )
    return server


def mcp_server_set_enabled(*, server: McpServer, enabled: bool, actor: Actor) -> McpServer:
    """Enable or disable a server (a disabled server's tools leave the registry)."""
    with transaction.atomic():
        McpServer.objects.filter(pk=server.pk).update(enabled=enabled, updated_at=timezone.now())
        server.enabled = enabled
        record(
            actor=actor,
            action="mcp_server.enabled" if enabled else "mcp_server.disabled",
            subject=server,
        )
    return server
