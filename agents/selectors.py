"""Read queries for agents and credentials, shared by the API, MCP server and admin."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from agents.models import Agent, Credential
from ordinaut.errors import NotFound


def agent_list(*, name_filter: str | None = None, scope_filter: str | None = None) -> QuerySet:
    """Agents, newest first, optionally by name substring and held scope."""
    queryset = Agent.objects.order_by("-created_at", "id")
    if name_filter:
        queryset = queryset.filter(name__icontains=name_filter)
    if scope_filter:
        queryset = queryset.filter(scopes__contains=[scope_filter])
    return queryset


def agent_get(*, agent_id: Any) -> Agent:
    """The agent with this id; raise NotFound."""
    try:
        return Agent.objects.get(pk=agent_id)
    except (Agent.DoesNotExist, ValidationError, ValueError) as exc:
        raise NotFound(f"Agent {agent_id} not found") from exc


def credential_list(*, agent: Agent) -> QuerySet:
    """The agent's credentials, newest first (hashes are never rendered)."""
    return Credential.objects.filter(agent=agent).order_by("-created_at")
