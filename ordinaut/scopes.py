"""Scope names the API checks, and the one rule for whether a set of scopes grants one.

Scopes are free strings (an agent may hold `notify` or `calendar.read` to use tools); these
are the ones endpoints require. `admin` grants every scope, as the original documented.
"""

from __future__ import annotations

from collections.abc import Iterable

TASKS_READ = "tasks:read"
TASKS_WRITE = "tasks:write"
RUNS_READ = "runs:read"
EVENTS_PUBLISH = "events:publish"
APPROVALS_DECIDE = "approvals:decide"
TOOLS_READ = "tools:read"
ADMIN = "admin"


def grants(scopes: Iterable[str], required: str | None) -> bool:
    """True when `scopes` include `required` (None requires nothing) or include `admin`."""
    if required is None:
        return True
    held = scopes if isinstance(scopes, (set, frozenset)) else set(scopes)
    return required in held or ADMIN in held
