"""Who is calling: `Authorization: Bearer <JWT or API key>` -> (Agent, Grant).

Both paths need one indexed query — the credential row joined to its agent (and, for a JWT,
whether its id or its refresh token's id was revoked) — which agents.auth_cache answers
from memory until a change to agents, credentials or revoked tokens commits. An inactive
agent, a revoked or expired credential and a revoked token are refused at once (see
auth_cache for what "at once" means across processes), whatever the token says. A bare
agent id — the original project's `Bearer <agent-id>` — is not a credential and is refused.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import connection
from django.db.models import Q
from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from agents import tokens
from agents.auth_cache import auth_cache
from agents.credentials import API_KEY_PREFIX, parse_key_id, verify_api_key
from agents.models import Agent, Credential, CredentialKind
from ordinaut.database import ModelColumns
from ordinaut.errors import WWW_AUTHENTICATE

logger = logging.getLogger(__name__)

# last_used_at is a hint for operators, so it is written at most this often per credential.
_LAST_USED_RESOLUTION = timedelta(minutes=1)
# key_id -> when this process last wrote last_used_at (a plain dict: races only re-touch).
_touched: dict[str, Any] = {}


@dataclass(frozen=True)
class Grant:
    """What the presented credential allows: request.auth for every authenticated call."""

    scopes: frozenset[str]
    method: str  # "jwt" or "api_key"
    key_id: str  # the credential's public id
    jti: str | None = None


class AgentAuthentication(authentication.BaseAuthentication):
    """DRF authentication for agents: JWT access tokens and API keys, as Bearer tokens."""

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Agent, Grant] | None:
        raw = self.bearer_token(request)
        if raw is None:
            return None
        return authenticate_token(raw)

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer 401 (not 403) with WWW-Authenticate when credentials are missing.
        return WWW_AUTHENTICATE

    def bearer_token(self, request: Request) -> str | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != self.keyword.lower():
            return None
        value = value.strip()
        if not value or " " in value:
            raise exceptions.AuthenticationFailed("Malformed Authorization header.")
        return value


def authenticate_token(raw: str) -> tuple[Agent, Grant]:
    """Resolve a Bearer token to (agent, grant); raise AuthenticationFailed (401) otherwise.

    Shared by the REST API and the MCP server.
    """
    if raw.startswith(API_KEY_PREFIX):
        return _authenticate_api_key(raw)
    if tokens.looks_like_jwt(raw):
        return _authenticate_jwt(raw)
    raise exceptions.AuthenticationFailed("Invalid token.")


# Every authenticated request runs one of these, so they are written once (see ModelColumns)
# rather than compiled by the ORM per request: the credential joined to its agent by the
# unique key_id index; for a JWT also whether its id or its refresh token's id is revoked.
_CREDENTIAL = ModelColumns(Credential)
_AGENT = ModelColumns(Agent)


@functools.cache
def _credential_sql() -> str:
    return (
        f"SELECT {_CREDENTIAL.sql('c')}, {_AGENT.sql('a')}, "  # noqa: S608 (columns; values bound)
        "EXISTS (SELECT 1 FROM agents_revokedtoken r WHERE r.jti = ANY(%(jtis)s)) "
        "FROM agents_credential c JOIN agents_agent a ON a.id = c.agent_id "
        "WHERE c.key_id = %(key_id)s AND c.kind = ANY(%(kinds)s) "
        "AND (%(agent_id)s::uuid IS NULL OR c.agent_id = %(agent_id)s::uuid)"
    )


def _credential(
    *, key_id: str, kinds: list[str], agent_id: Any = None, jtis: list[str] | None = None
) -> tuple[Credential, bool] | None:
    """(credential with its agent, whether one of `jtis` is revoked), or None."""
    params = {"key_id": key_id, "kinds": kinds, "agent_id": agent_id, "jtis": jtis or []}

    def load() -> tuple[Any, ...] | None:
        with connection.cursor() as cursor:
            cursor.execute(_credential_sql(), params)
            return cursor.fetchone()

    key = (key_id, tuple(kinds), agent_id, tuple(params["jtis"]))
    row = auth_cache.lookup(key, load)
    if row is None:
        return None
    # Fresh instances per request from the (immutable) row: requests never share objects.
    split = len(_CREDENTIAL.fields)
    credential = _CREDENTIAL.instance(row[:split])
    credential.agent = _AGENT.instance(row[split:-1])
    return credential, row[-1]


def _authenticate_api_key(raw: str) -> tuple[Agent, Grant]:
    key_id = parse_key_id(raw, API_KEY_PREFIX)
    found = _credential(key_id=key_id, kinds=[CredentialKind.API_KEY.value]) if key_id else None
    credential = found[0] if found else None
    if not verify_api_key(raw, credential.secret_hash if credential else None):
        raise exceptions.AuthenticationFailed("Invalid token.")
    assert credential is not None  # verify_api_key refuses a missing one
    agent = _usable_agent(credential)
    _touch(credential)
    return agent, Grant(frozenset(agent.scopes), "api_key", credential.key_id)


def _authenticate_jwt(raw: str) -> tuple[Agent, Grant]:
    try:
        claims = tokens.read(raw, tokens.ACCESS)
    except tokens.InvalidToken as exc:
        raise exceptions.AuthenticationFailed(f"Invalid token: {exc}.") from exc
    found = _credential(
        key_id=claims.credential_key_id,
        kinds=CredentialKind.values,
        agent_id=claims.agent_id,
        jtis=claims.revocation_ids,
    )
    if found is None:
        raise exceptions.AuthenticationFailed("Invalid token.")
    credential, token_revoked = found
    if token_revoked:
        raise exceptions.AuthenticationFailed("Token has been revoked.")
    agent = _usable_agent(credential)
    # Scopes removed from the agent since the token was issued are gone at once.
    scopes = frozenset(claims.scopes) & frozenset(agent.scopes)
    return agent, Grant(scopes, "jwt", credential.key_id, claims.jti)


def _usable_agent(credential: Credential) -> Agent:
    if not credential.is_usable():
        raise exceptions.AuthenticationFailed("Credential has been revoked or has expired.")
    if not credential.agent.is_active:
        raise exceptions.AuthenticationFailed("Agent is inactive.")
    return credential.agent


def _touch(credential: Credential) -> None:
    now = timezone.now()
    if credential.last_used_at and now - credential.last_used_at < _LAST_USED_RESOLUTION:
        return
    # A cached row keeps its old last_used_at: remember here that this process wrote it.
    touched = _touched.get(credential.key_id)
    if touched is not None and now - touched < _LAST_USED_RESOLUTION:
        return
    if len(_touched) >= 10_000:
        _touched.clear()
    _touched[credential.key_id] = now
    # Conditional, so concurrent requests write once and never move the time backwards.
    Credential.objects.filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - _LAST_USED_RESOLUTION),
        pk=credential.pk,
    ).update(last_used_at=now)


__all__ = ["AgentAuthentication", "Grant", "authenticate_token"]
