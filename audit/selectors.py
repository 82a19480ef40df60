"""Read queries over the audit log."""

from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet

from audit.models import AuditEvent


def audit_event_list(
    *,
    action: str | None = None,
    actor_id: str | None = None,
    subject_type: str | None = None,
    subject_id: str | None = None,
    correlation_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> QuerySet:
    """Audit events, newest first, filtered by exact values and an `at` range."""
    queryset = AuditEvent.objects.order_by("-at", "-id")
    exact = {
        "action": action,
        "actor_id": actor_id,
        "subject_type": subject_type,
        "subject_id": subject_id,
        "correlation_id": correlation_id,
    }
    queryset = queryset.filter(**{k: v for k, v in exact.items() if v})
    if since:
        queryset = queryset.filter(at__gte=since)
    if until:
        queryset = queryset.filter(at__lte=until)
    return queryset
