"""Scope names the API checks, and the one rule for whether a set of scopes grants one.

Scopes are free strings (an agent may hold `notify` or `calendar.read` to use tools); these
are the ones endpoints require. `admin` grants every scope, as the original documented.

Two families carry a topic glob after their prefix (fnmatch, case-sensitive; scope names are
lowercase, so a glob other than `*` matches lowercase topics): `events:publish:<glob>` lets
an agent publish only matching topics, and `events:subscribe:<glob>` lets its tasks be
triggered by other agents' events on matching topics.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

TASKS_READ = "tasks:read"
TASKS_WRITE = "tasks:write"
RUNS_READ = "runs:read"
# A scope is a short lowercase token such as "tasks:write"; the database refuses others.
SCOPE_PATTERN = r"^[a-z][a-z0-9_.:*-]{0,63}$"

EVENTS_PUBLISH = "events:publish"
EVENTS_PUBLISH_PREFIX = "events:publish:"
EVENTS_SUBSCRIBE_PREFIX = "events:subscribe:"
# Scopes whose glob must not be empty (`events:subscribe:` alone would match nothing).
GLOB_PREFIXES = (EVENTS_PUBLISH_PREFIX, EVENTS_SUBSCRIBE_PREFIX)
APPROVALS_DECIDE = "approvals:decide"
TOOLS_READ = "tools:read"
SECRETS_PREFIX = "secrets:"
ADMIN = "admin"


def grants(scopes: Iterable[str], required: str | None) -> bool:
    """True when `scopes` include `required` (None requires nothing) or include `admin`."""
    if required is None:
        return True
    held = scopes if isinstance(scopes, (set, frozenset)) else set(scopes)
    return required in held or ADMIN in held


def secret_scope(name: str) -> str:
    """The scope that allows `${secrets.NAME}` (scope names are lowercase)."""
    return f"{SECRETS_PREFIX}{name.lower()}"


def grants_secret(scopes: Iterable[str], name: str) -> bool:
    """`secrets:<name>`, `secrets:*` or `admin`."""
    held = set(scopes)
    return grants(held, secret_scope(name)) or f"{SECRETS_PREFIX}*" in held


def grants_topic(scopes: Iterable[str], prefix: str, topic: str) -> bool:
    """True when one of `scopes` is `prefix` + a glob matching `topic`."""
    return any(
        scope.startswith(prefix) and fnmatchcase(topic, scope[len(prefix) :]) for scope in scopes
    )


def may_publish(scopes: Iterable[str], topic: str) -> bool:
    """`events:publish` (any topic), `events:publish:<glob>` matching `topic`, or `admin`."""
    held = set(scopes)
    return grants(held, EVENTS_PUBLISH) or grants_topic(held, EVENTS_PUBLISH_PREFIX, topic)


def may_publish_any(scopes: Iterable[str]) -> bool:
    """True when some topic may be published: the gate before a topic is known."""
    held = set(scopes)
    return grants(held, EVENTS_PUBLISH) or any(s.startswith(EVENTS_PUBLISH_PREFIX) for s in held)


def may_receive(scopes: Iterable[str], topic: str) -> bool:
    """True when an agent holding `scopes` receives other agents' events on `topic`."""
    held = set(scopes)
    return ADMIN in held or grants_topic(held, EVENTS_SUBSCRIBE_PREFIX, topic)
