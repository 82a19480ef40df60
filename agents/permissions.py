"""Scope checks (`require_scope`, for REST and MCP alike) and the acting-agent rule.

A REST view declares `required_scope`: a scope name, or a mapping of HTTP method to scope
name for a view whose methods differ (GET /tasks reads, POST /tasks writes). A view that
omits it is refused, so a forgotten declaration fails closed. MCP tools name their scope
where they call `require_scope`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rest_framework import permissions
from rest_framework.request import Request

from agents.models import Agent
from ordinaut import scopes
from ordinaut.errors import Forbidden, InvalidInput


def required_scope_for(view: Any, method: str) -> str | None:
    """The scope `view` requires for `method`; raise LookupError when undeclared."""
    declared = getattr(view, "required_scope", LookupError)
    if declared is LookupError:
        raise LookupError(f"{type(view).__name__} declares no required_scope")
    if isinstance(declared, dict):
        if method == "OPTIONS" or method == "HEAD":
            method = "GET" if "GET" in declared else method
        if method not in declared:
            raise LookupError(f"{type(view).__name__} declares no scope for {method}")
        return declared[method]
    return declared


def require_scope(agent: Agent, granted: Iterable[str], required: str | None) -> None:
    """Raise Forbidden, naming the agent and the scope, unless `granted` covers `required`."""
    if not scopes.grants(granted, required):
        raise Forbidden(f"Agent '{agent.name}' lacks required scope: {required}")


def require_publisher(agent: Agent, granted: Iterable[str]) -> None:
    """Raise Forbidden unless `granted` may publish some topic (which ones: tasks.events)."""
    if not scopes.may_publish_any(granted):
        raise Forbidden(
            f"Agent '{agent.name}' lacks required scope: {scopes.EVENTS_PUBLISH} "
            f"(or {scopes.EVENTS_PUBLISH_PREFIX}<glob>)"
        )


class HasScope(permissions.BasePermission):
    """Authenticated agent whose grant includes the view's required scope (or `admin`).

    Unauthenticated requests fail here, and DRF turns that into 401 with WWW-Authenticate.
    """

    message = "Missing required scope."

    def has_permission(self, request: Request, view: Any) -> bool:
        if not hasattr(view, request.method.lower()):
            # Let DRF answer 405 for a method the view does not implement.
            return True
        if request.user is None or request.auth is None:
            return False
        try:
            required = required_scope_for(view, request.method)
        except LookupError:
            return False
        try:
            require_scope(request.user, request.auth.scopes, required)
        except Forbidden as exc:
            self.message = exc.message
            return False
        return True


def is_admin(request: Request) -> bool:
    """True when the caller's grant includes `admin` (sees and changes every agent's objects)."""
    return request.auth is not None and scopes.ADMIN in request.auth.scopes


def acting_agent(caller: Agent, claimed_id: Any, *, field: str, caller_is_admin: bool) -> Agent:
    """The agent a request's identity field (`created_by`, `source_agent_id`) names.

    Optional: absent means the caller. The original's clients send it, so it is accepted
    when it is the caller; naming another agent needs `admin` (403 otherwise), and that
    agent must exist and be active (422 otherwise). REST and MCP both apply it.
    """
    if claimed_id is None or str(claimed_id) == str(caller.pk):
        return caller
    if not caller_is_admin:
        raise Forbidden(
            f"{field} must be the authenticated agent ({caller.pk}) unless you hold admin",
            details={field: ["must match the authenticated agent"]},
        )
    agent = Agent.objects.filter(pk=claimed_id, is_active=True).first()
    if agent is None:
        raise InvalidInput(
            f"{field}: agent {claimed_id} not found or inactive",
            details={field: ["agent not found or inactive"]},
        )
    return agent
