"""Use cases that change agents and credentials. Each is one transaction with its audit event."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from agents import tokens
from agents.auth_cache import invalidate_on_commit
from agents.credentials import (
    issue_api_key,
    issue_secret,
    new_webhook_key_id,
    parse_key_id,
    verify_secret,
    webhook_secret,
)
from agents.models import (
    BUDGETS,
    Agent,
    AgentStatus,
    Credential,
    CredentialKind,
    RevokedToken,
)
from agents.signals import agent_halted, agent_restored
from audit import record
from audit.services import Actor
from ordinaut.errors import Conflict, InvalidInput, NotFound, Unauthenticated
from ordinaut.masking import mask_url
from ordinaut.scopes import GLOB_PREFIXES, SCOPE_PATTERN

_SCOPE_RE = re.compile(SCOPE_PATTERN)


def clean_scopes(scopes: Iterable[str]) -> list[str]:
    """Strip, de-duplicate (keeping order) and validate scope names; raise InvalidInput."""
    cleaned: list[str] = []
    for raw in scopes:
        if not isinstance(raw, str):
            reason = f"scope {raw!r} is not a string"
            raise InvalidInput(f"scopes: {reason}", details={"scopes": [reason]})
        scope = raw.strip()
        if not scope:
            continue
        if not _SCOPE_RE.match(scope):
            raise InvalidInput(
                f"invalid scope {scope!r}: use lowercase letters, digits and . _ : * -",
                details={"scopes": [f"invalid scope {scope!r}"]},
            )
        if scope in GLOB_PREFIXES:
            reason = f"scope {scope!r} needs a topic glob after the colon, e.g. {scope}orders.*"
            raise InvalidInput(f"scopes: {reason}", details={"scopes": [reason]})
        if scope not in cleaned:
            cleaned.append(scope)
    return cleaned


# Budget values stay within their columns (PostgreSQL integer / bigint).
_BUDGET_MAXIMA = {name: 2**31 - 1 for name in BUDGETS} | {"max_llm_tokens_per_day": 10**15}


def default_budgets() -> dict[str, int | None]:
    """A new agent's budgets: settings.AGENT_DEFAULT_<NAME> (unset: unlimited)."""
    return {
        "max_active_tasks": settings.AGENT_DEFAULT_MAX_ACTIVE_TASKS,
        "max_runs_per_hour": settings.AGENT_DEFAULT_MAX_RUNS_PER_HOUR,
        "max_concurrent_runs": settings.AGENT_DEFAULT_MAX_CONCURRENT_RUNS,
        "max_llm_tokens_per_day": settings.AGENT_DEFAULT_MAX_LLM_TOKENS_PER_DAY,
    }


def clean_budgets(budgets: Any) -> dict[str, int | None]:
    """The budgets an update sets, checked: known names, each an integer >= 0 or null
    (unlimited). Raises InvalidInput naming `budgets.<name>`."""
    if not isinstance(budgets, dict):
        raise InvalidInput("budgets: must be an object", details={"budgets": ["not an object"]})
    problems: dict[str, list[str]] = {}
    for name, value in budgets.items():
        if name not in BUDGETS:
            problems[f"budgets.{name}"] = [f"unknown budget (known: {', '.join(BUDGETS)})"]
        elif value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not 0 <= value <= _BUDGET_MAXIMA[name]
        ):
            problems[f"budgets.{name}"] = [
                f"must be an integer from 0 to {_BUDGET_MAXIMA[name]}, or null for unlimited"
            ]
    if problems:
        field, reasons = next(iter(problems.items()))
        raise InvalidInput(f"{field}: {reasons[0]}", details=problems)
    return dict(budgets)


def agent_create(
    *,
    name: str,
    scopes: Iterable[str],
    actor: Actor,
    description: str = "",
    webhook_url: str = "",
) -> tuple[Agent, str]:
    """Create an agent with one secret credential; return (agent, secret).

    The secret is returned once and stored only as a hash. Raises InvalidInput for a bad
    name or scope, Conflict when the name is taken. Writes `agent.created`.
    """
    name = name.strip()
    if not name or len(name) > 100:
        raise InvalidInput(
            "name must be 1 to 100 characters", details={"name": ["must be 1 to 100 characters"]}
        )
    scope_list = clean_scopes(scopes)
    issued = issue_secret()
    try:
        with transaction.atomic():
            agent = Agent.objects.create(
                name=name, description=description, scopes=scope_list, webhook_url=webhook_url,
                webhook_key_id=new_webhook_key_id() if webhook_url else "",
                **default_budgets(),
            )  # fmt: skip
            credential = Credential.objects.create(
                agent=agent,
                kind=CredentialKind.SECRET,
                key_id=issued.key_id,
                secret_hash=issued.hash,
                label="initial secret",
            )
            record(
                actor=actor,
                action="agent.created",
                subject=agent,
                details={"name": name, "scopes": scope_list, "credential": credential.key_id},
            )
    except IntegrityError as exc:
        if Agent.objects.filter(name=name).exists():
            raise Conflict(
                f"an agent named {name!r} already exists",
                details={"name": ["already exists"]},
            ) from exc
        raise
    return agent, issued.token


def credential_issue_secret(
    *, agent: Agent, actor: Actor, label: str = ""
) -> tuple[Credential, str]:
    """Add a new secret credential to `agent`; return (credential, secret shown once)."""
    issued = issue_secret()
    with transaction.atomic():
        credential = Credential.objects.create(
            agent=agent,
            kind=CredentialKind.SECRET,
            key_id=issued.key_id,
            secret_hash=issued.hash,
            label=label,
        )
        record(
            actor=actor,
            action="credential.issued",
            subject=agent,
            details={"credential": credential.key_id, "kind": credential.kind, "label": label},
        )
    return credential, issued.token


# Fields agent_update may change; the rest are identity or history.
AGENT_UPDATABLE_FIELDS = {"name", "description", "scopes", "webhook_url", "is_active", "budgets"}


def _locked_agent(agent_id: Any) -> Agent:
    """Lock the agent row for the rest of the transaction; raise NotFound."""
    try:
        # NO KEY UPDATE: agent changes serialize with each other, but not with the foreign
        # key checks of rows that reference the agent. A full FOR UPDATE deadlocked a pause
        # (agent locked, then its tasks) against a scheduler tick (its tasks locked, then an
        # occurrence inserted, whose agent_id check needs KEY SHARE on the agent).
        return Agent.objects.select_for_update(no_key=True).get(pk=agent_id)
    except (Agent.DoesNotExist, ValidationError, ValueError, TypeError) as exc:
        raise NotFound(f"agent {agent_id} not found") from exc


def agent_update(*, agent_id: Any, changes: dict[str, Any], actor: Actor) -> Agent:
    """Apply a partial update to an agent; the audit event carries the before/after diff.

    Narrowed scopes and deactivation take effect on the next request of every token the
    agent holds (authentication reads the agent row). Raises NotFound, InvalidInput, Conflict.
    """
    unknown = set(changes) - AGENT_UPDATABLE_FIELDS
    if unknown:
        raise InvalidInput(
            f"cannot update: {', '.join(sorted(unknown))}",
            details={name: ["not updatable"] for name in sorted(unknown)},
        )
    if "name" in changes:
        name = (changes["name"] or "").strip()
        if not name or len(name) > 100:
            raise InvalidInput(
                "name must be 1 to 100 characters",
                details={"name": ["must be 1 to 100 characters"]},
            )
        changes = {**changes, "name": name}
    if "scopes" in changes:
        changes = {**changes, "scopes": clean_scopes(changes["scopes"])}
    if "budgets" in changes:
        # Each budget is a column: a partial object changes only the budgets it names.
        changes = {key: value for key, value in changes.items() if key != "budgets"} | (
            clean_budgets(changes["budgets"])
        )
    try:
        with transaction.atomic():
            agent = _locked_agent(agent_id)
            before = {field: getattr(agent, field) for field in changes}
            halted_since = agent.halted_since
            for field, value in changes.items():
                setattr(agent, field, value)
            now = timezone.now()
            if "is_active" in changes and before["is_active"] != agent.is_active:
                agent.deactivated_at = None if agent.is_active else now
            agent.save()
            _announce_work(agent, halted_since, now)
            diff = {
                field: {"before": _audited(field, before[field]), "after": _audited(field, value)}
                for field, value in changes.items()
                if before[field] != value
            }
            record(actor=actor, action="agent.updated", subject=agent, details={"changes": diff})
            invalidate_on_commit()
    except IntegrityError as exc:
        raise Conflict(
            f"an agent named {changes.get('name')!r} already exists",
            details={"name": ["already exists"]},
        ) from exc
    return agent


def _announce_work(agent: Agent, halted_since: datetime | None, now: datetime) -> None:
    """Tell the tasks app when the agent's work just stopped or may just go on again."""
    if halted_since is None and agent.halted_since is not None:
        agent_halted.send(sender=Agent, agent=agent, at=now)
    elif halted_since is not None and agent.halted_since is None:
        agent_restored.send(sender=Agent, agent=agent, since=halted_since, at=now)


def _audited(field: str, value: Any) -> Any:
    """A changed value as the audit log keeps it: a webhook URL without its credentials."""
    return mask_url(value) if field == "webhook_url" and value else value


def agent_webhook_secret_rotate(*, agent_id: Any, actor: Actor) -> tuple[Agent, str]:
    """Give the agent a new webhook signing key; return (agent, its secret, shown once).

    Deliveries from now on are signed with it and carry its `X-Ordinaut-Key-Id`. Raises
    NotFound, or Conflict when the agent has no webhook_url. Writes
    `agent.webhook_key_rotated` (the key id, never the secret).
    """
    with transaction.atomic():
        agent = _locked_agent(agent_id)
        if not agent.webhook_url:
            raise Conflict(
                f"agent {agent.name!r} has no webhook_url; set one first",
                details={"webhook_url": ["not set"]},
            )
        previous, agent.webhook_key_id = agent.webhook_key_id, new_webhook_key_id()
        agent.save(update_fields=["webhook_key_id", "updated_at"])
        record(
            actor=actor,
            action="agent.webhook_key_rotated",
            subject=agent,
            details={"key_id": agent.webhook_key_id, "previous_key_id": previous},
        )
    return agent, webhook_secret(agent.pk, agent.webhook_key_id)


def agent_pause(*, agent_id: Any, actor: Actor, now: datetime | None = None) -> Agent:
    """The kill switch: hold all of the agent's work until `agent_resume`.

    None of its tasks' instants are queued, its queued occurrences are not claimed, and its
    running runs stop at their next step boundary. Its credentials keep working (it can
    still read its runs). Raises NotFound, or Conflict when it is paused or inactive.
    """
    now = now or timezone.now()
    with transaction.atomic():
        agent = _locked_agent(agent_id)
        if agent.status != AgentStatus.ACTIVE:
            raise Conflict(
                f"agent {agent.name!r} is {agent.status}; only an active agent can be paused",
                details={"status": agent.status},
            )
        agent.paused_at = now
        agent.save(update_fields=["paused_at", "updated_at"])
        _announce_work(agent, None, now)
        record(actor=actor, action="agent.paused", subject=agent, details={"name": agent.name})
    return agent


def agent_resume(*, agent_id: Any, actor: Actor, now: datetime | None = None) -> Agent:
    """Undo `agent_pause`: its work goes on, and the instants missed meanwhile follow each
    task's misfire policy. Raises NotFound, or Conflict when it is not paused."""
    now = now or timezone.now()
    with transaction.atomic():
        agent = _locked_agent(agent_id)
        if agent.paused_at is None:
            raise Conflict(
                f"agent {agent.name!r} is {agent.status}, not paused",
                details={"status": agent.status},
            )
        halted_since = agent.halted_since
        paused_for = (now - agent.paused_at).total_seconds()
        agent.paused_at = None
        agent.save(update_fields=["paused_at", "updated_at"])
        _announce_work(agent, halted_since, now)
        record(
            actor=actor,
            action="agent.resumed",
            subject=agent,
            details={"name": agent.name, "paused_seconds": round(paused_for, 3)},
        )
    return agent


def agent_deactivate(*, agent_id: Any, actor: Actor, now: datetime | None = None) -> Agent:
    """Deactivate an agent and revoke all its credentials (its tasks and history stay).

    This is what DELETE /agents/{id} does: tasks reference their creator and runs reference
    tasks, so history is kept and the agent can no longer authenticate.
    """
    now = now or timezone.now()
    with transaction.atomic():
        agent = _locked_agent(agent_id)
        if actor.type == "agent" and actor.id == str(agent.pk):
            raise Conflict("agents cannot delete themselves", details={"agent_id": str(agent.pk)})
        revoked = Credential.objects.filter(agent=agent, revoked_at__isnull=True).update(
            revoked_at=now
        )
        was_active = agent.is_active
        halted_since = agent.halted_since
        agent.is_active = False
        if was_active:
            agent.deactivated_at = now
        agent.save(update_fields=["is_active", "deactivated_at", "updated_at"])
        _announce_work(agent, halted_since, now)
        record(
            actor=actor,
            action="agent.deactivated",
            subject=agent,
            details={
                "name": agent.name,
                "credentials_revoked": revoked,
                "changes": {"is_active": {"before": was_active, "after": False}},
            },
        )
        invalidate_on_commit()
    return agent


def credential_issue_api_key(
    *, agent: Agent, actor: Actor, label: str = "", expires_at: datetime | None = None
) -> tuple[Credential, str]:
    """Add an API key to `agent`; return (credential, key shown once)."""
    issued = issue_api_key()
    with transaction.atomic():
        credential = Credential.objects.create(
            agent=agent,
            kind=CredentialKind.API_KEY,
            key_id=issued.key_id,
            secret_hash=issued.hash,
            label=label,
            expires_at=expires_at,
        )
        record(
            actor=actor,
            action="credential.issued",
            subject=agent,
            details={
                "credential": credential.key_id,
                "kind": credential.kind,
                "label": label,
                "expires_at": expires_at,
            },
        )
    return credential, issued.token


def credential_revoke(
    *, agent: Agent, key_id: str, actor: Actor, now: datetime | None = None
) -> Credential:
    """Revoke one of `agent`'s credentials; its API key or JWTs stop working at once.

    Raises NotFound when the agent has no such credential; revoking twice is a no-op.
    """
    now = now or timezone.now()
    with transaction.atomic():
        credential = (
            Credential.objects.select_for_update().filter(agent=agent, key_id=key_id).first()
        )
        if credential is None:
            raise NotFound(f"credential {key_id} not found")
        if credential.revoked_at is None:
            credential.revoked_at = now
            credential.save(update_fields=["revoked_at"])
            record(
                actor=actor,
                action="credential.revoked",
                subject=agent,
                details={"credential": key_id, "kind": credential.kind},
            )
            invalidate_on_commit()
    return credential


def token_exchange(*, agent_id: str, agent_secret: str | None) -> tuple[Agent, tokens.TokenPair]:
    """Exchange an agent secret for a JWT pair. Raises Unauthenticated (one vague reason).

    The reason never says which part was wrong, so the endpoint cannot be used to learn
    which agent ids exist.
    """
    refused = Unauthenticated("Invalid agent credentials")
    try:
        agent_uuid = uuid.UUID(str(agent_id))
    except ValueError:
        raise refused from None
    key_id = parse_key_id(agent_secret or "")
    if key_id is None:
        raise refused
    credential = (
        Credential.objects.select_related("agent")
        .filter(key_id=key_id, agent_id=agent_uuid, kind=CredentialKind.SECRET)
        .first()
    )
    # The hash is checked even for an unknown key id (against a dummy), so a refusal takes
    # as long whether or not the key id exists.
    if (
        not verify_secret(agent_secret, credential.secret_hash if credential else None)
        or credential is None
        or not credential.is_usable()
        or not credential.agent.is_active
    ):
        raise refused
    agent = credential.agent
    pair = tokens.mint_pair(agent, credential)
    with transaction.atomic():
        Credential.objects.filter(pk=credential.pk).update(last_used_at=timezone.now())
        record(
            actor=Actor.agent(agent),
            action="agent.authenticated",
            subject=agent,
            details={"method": "secret", "credential": credential.key_id},
        )
    return agent, pair


def token_refresh(*, refresh_token: str) -> tuple[Agent, tokens.TokenPair]:
    """Rotate a refresh token: the presented one is revoked, a new pair is returned.

    The new tokens carry the agent's current scopes and stay in the presented token's
    family. A refresh token presented again after it was rotated is a stolen copy racing
    its owner: it is refused, and its whole family — every token minted from it since — is
    revoked (audited as `credential.refresh_reuse`), so the thief's heirs die too; the owner
    exchanges its secret again. Raises Unauthenticated.
    """
    try:
        claims = tokens.read(refresh_token, tokens.REFRESH)
    except tokens.InvalidToken as exc:
        raise Unauthenticated(f"Invalid refresh token: {exc}") from exc
    with transaction.atomic():
        credential = (
            Credential.objects.select_related("agent")
            .filter(key_id=claims.credential_key_id, agent_id=claims.agent_id)
            .first()
        )
        if credential is None or not credential.is_usable() or not credential.agent.is_active:
            raise Unauthenticated("Agent not found, inactive, or credential revoked")
        family = claims.family or claims.jti
        if RevokedToken.objects.filter(jti=tokens.family_id(family)).exists():
            raise Unauthenticated("Token has been revoked")
        _, created = RevokedToken.objects.get_or_create(
            jti=claims.jti,
            defaults={
                "agent_id": claims.agent_id,
                "token_type": claims.token_type,
                "expires_at": claims.expires_at,
            },
        )
        reused = not created
        if not reused:
            agent = credential.agent
            pair = tokens.mint_pair(agent, credential, family=family)
            record(
                actor=Actor.agent(agent),
                action="token.refreshed",
                subject=agent,
                details={"revoked_jti": claims.jti, "credential": credential.key_id},
            )
    if reused:
        # Committed before the refusal is raised: the revocation must outlive this request.
        _revoke_family(family, claims, credential)
        raise Unauthenticated("Token has been revoked")
    return agent, pair


def _revoke_family(family: str, claims: tokens.TokenClaims, credential: Credential) -> None:
    """End every token of `family` (the presented refresh token's), and say so in the audit."""
    with transaction.atomic():
        RevokedToken.objects.get_or_create(
            jti=tokens.family_id(family),
            defaults={
                "agent_id": claims.agent_id,
                "token_type": "family",
                # The family's youngest token can live one refresh lifetime from now.
                "expires_at": timezone.now() + settings.SIMPLE_JWT["REFRESH_TOKEN_LIFETIME"],
            },
        )
        record(
            actor=Actor.agent(credential.agent),
            action="credential.refresh_reuse",
            subject=credential.agent,
            details={"family": family, "reused_jti": claims.jti, "credential": credential.key_id},
        )
        invalidate_on_commit()


def token_revoke(*, token: str) -> bool:
    """Revoke an access or refresh token; False when it was already invalid or revoked.

    Holding the token is the proof needed to revoke it. Revoking a refresh token also ends
    the access tokens minted from it.
    """
    try:
        claims = tokens.read(token, None)
    except tokens.InvalidToken:
        return False
    with transaction.atomic():
        agent = Agent.objects.filter(pk=claims.agent_id).first()
        if agent is None:
            return False
        _, created = RevokedToken.objects.get_or_create(
            jti=claims.jti,
            defaults={
                "agent": agent,
                "token_type": claims.token_type,
                "expires_at": claims.expires_at,
            },
        )
        if created:
            record(
                actor=Actor.agent(agent),
                action="token.revoked",
                subject=agent,
                details={"token_type": claims.token_type, "jti": claims.jti},
            )
            invalidate_on_commit()
    return created


# A revoked token's row only matters while the token itself could still be accepted; the
# margin covers the JWT leeway and clock skew between hosts.
_REVOKED_TOKEN_MARGIN = timedelta(hours=1)


def revoked_tokens_prune(*, now: datetime | None = None) -> int:
    """Delete revocation records of tokens expired long enough ago; return how many.

    Deleting notifies every web process's credential cache (agents.auth_cache), so nothing
    is deleted — and no cache dropped — when nothing is due.
    """
    cutoff = (now or timezone.now()) - _REVOKED_TOKEN_MARGIN
    due = RevokedToken.objects.filter(expires_at__lt=cutoff)
    if not due.exists():
        return 0
    deleted, _ = due.delete()
    return deleted
