"""Use cases that change agents and credentials. Each is one transaction with its audit event."""

from __future__ import annotations

import re
from collections.abc import Iterable

from django.db import IntegrityError, transaction

from agents.credentials import issue_secret
from agents.models import SCOPE_PATTERN, Agent, Credential, CredentialKind
from audit import record
from audit.services import Actor
from ordinaut.errors import Conflict, InvalidInput

_SCOPE_RE = re.compile(SCOPE_PATTERN)


def clean_scopes(scopes: Iterable[str]) -> list[str]:
    """Strip, de-duplicate (keeping order) and validate scope names; raise InvalidInput."""
    cleaned: list[str] = []
    for raw in scopes:
        scope = raw.strip()
        if not scope:
            continue
        if not _SCOPE_RE.match(scope):
            raise InvalidInput(
                f"invalid scope {scope!r}: use lowercase letters, digits and . _ : * -",
                details={"scopes": [f"invalid scope {scope!r}"]},
            )
        if scope not in cleaned:
            cleaned.append(scope)
    return cleaned


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
                name=name, description=description, scopes=scope_list, webhook_url=webhook_url
            )
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
