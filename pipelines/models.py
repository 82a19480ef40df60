"""MCP servers whose tools pipelines may call as `mcp.<server>.<tool>`."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

# Lowercase so the name fits a scope (`mcp:<name>`) and a tool name without quoting.
SERVER_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"


class Transport(models.TextChoices):
    STDIO = "stdio"  # a local command speaking MCP on stdin/stdout, kept running per worker
    HTTP = "http"  # a remote server speaking streamable HTTP at `url`


class McpServer(models.Model):
    """A configured MCP server and the tools last discovered on it.

    `env` and `headers` values may reference secrets as `${secrets.NAME}`; they are
    resolved when connecting and never stored resolved.
    """

    name = models.CharField(max_length=63, unique=True)
    transport = models.CharField(max_length=8, choices=Transport.choices)
    command = models.CharField(max_length=500, blank=True, default="")
    args = models.JSONField(default=list, blank=True)
    env = models.JSONField(default=dict, blank=True)
    url = models.URLField(max_length=2000, blank=True, default="")
    headers = models.JSONField(default=dict, blank=True)
    enabled = models.BooleanField(default=True)
    # The scope an agent needs to use this server's tools; NULL: none.
    required_scope = models.CharField(max_length=64, null=True, blank=True)
    # Default per-call timeout when a step sets none.
    timeout_seconds = models.FloatField(default=30)
    # [{"name", "description", "input_schema", "output_schema"}] from the last discovery.
    tools = models.JSONField(default=list, blank=True)
    discovered_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "MCP server"
        constraints = [
            models.CheckConstraint(
                condition=Q(name__regex=SERVER_NAME_PATTERN), name="mcpserver_name_valid"
            ),
            models.CheckConstraint(
                condition=Q(transport__in=Transport.values), name="mcpserver_transport_valid"
            ),
            # Each transport has what it needs to connect.
            models.CheckConstraint(
                condition=(Q(transport="stdio") & ~Q(command=""))
                | (Q(transport="http") & ~Q(url="")),
                name="mcpserver_transport_target",
            ),
            models.CheckConstraint(
                condition=Q(timeout_seconds__gt=0), name="mcpserver_timeout_positive"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def tool_names(self) -> list[str]:
        """Names of the discovered tools, as the server calls them."""
        return [tool["name"] for tool in self.tools]
