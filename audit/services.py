"""Writing the audit log."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

from audit.models import ActorType, AuditEvent
from ordinaut.correlation import get_client_ip, get_correlation_id


@dataclass(frozen=True)
class Actor:
    """Who performed an action."""

    type: str
    id: str = ""
    name: str = ""

    @classmethod
    def system(cls, component: str) -> Actor:
        """Ordinaut itself, e.g. Actor.system("scheduler")."""
        return cls(ActorType.SYSTEM, component, component)

    @classmethod
    def agent(cls, agent: Any) -> Actor:
        """An agent (anything with .id and .name)."""
        return cls(ActorType.AGENT, str(agent.id), agent.name)

    @classmethod
    def user(cls, user: Any) -> Actor:
        """A Django user (admin operator)."""
        return cls(ActorType.USER, str(user.pk), user.get_username())


def record_audit(
    *,
    actor: Actor,
    action: str,
    subject: Any = None,
    subject_type: str = "",
    subject_id: str = "",
    details: dict[str, Any] | None = None,
    correlation_id: str | None = None,
) -> AuditEvent:
    """Append one audit event and return it.

    `subject` may be a model instance (its model name and pk are recorded) or None with
    explicit `subject_type`/`subject_id`. Call it inside the service's transaction so the
    event commits or rolls back with the change it describes. `details` must be JSON-able
    (datetimes and UUIDs are converted).
    """
    if subject is not None:
        subject_type = subject_type or subject._meta.model_name
        subject_id = subject_id or str(subject.pk)
    clean_details = json.loads(json.dumps(details or {}, cls=DjangoJSONEncoder))
    ip = get_client_ip()
    if ip and "ip" not in clean_details:
        # Who did it includes from where, for changes made over the API or the admin.
        clean_details["ip"] = ip
    return AuditEvent.objects.create(
        actor_type=actor.type,
        actor_id=actor.id,
        actor_name=actor.name,
        action=action,
        subject_type=subject_type,
        subject_id=subject_id,
        details=clean_details,
        correlation_id=correlation_id or get_correlation_id() or "",
    )
