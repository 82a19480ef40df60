"""AuditEvent: who did what to which subject, when. Append-only, enforced by PostgreSQL."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone


class ActorType(models.TextChoices):
    AGENT = "agent"  # an API or MCP caller, identified by its agent id
    USER = "user"  # a human in the admin or a command run by an operator
    SYSTEM = "system"  # Ordinaut itself: scheduler, worker, migrations


class AuditEvent(models.Model):
    """One audited action. The database refuses UPDATE and DELETE on this table."""

    id = models.BigAutoField(primary_key=True)
    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor_type = models.CharField(max_length=16, choices=ActorType.choices)
    actor_id = models.CharField(max_length=64, blank=True, default="")
    actor_name = models.CharField(max_length=200, blank=True, default="")
    action = models.CharField(max_length=100, db_index=True)
    subject_type = models.CharField(max_length=50, blank=True, default="")
    subject_id = models.CharField(max_length=64, blank=True, default="")
    details = models.JSONField(default=dict, blank=True)
    correlation_id = models.CharField(max_length=64, blank=True, default="", db_index=True)
    # The hash chain (migration 0003's trigger fills both on INSERT; never set from Python):
    # hash = SHA-256 over prev_hash and the row's canonical fields (audit_event_hash()).
    prev_hash = models.CharField(max_length=64, blank=True, default="", editable=False)
    hash = models.CharField(max_length=64, blank=True, default="", editable=False)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [
            models.Index(fields=["subject_type", "subject_id", "-at"], name="audit_subject_idx"),
            models.Index(fields=["actor_type", "actor_id", "-at"], name="audit_actor_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(actor_type__in=ActorType.values), name="audit_actor_type_valid"
            ),
            models.CheckConstraint(condition=~Q(action=""), name="audit_action_not_empty"),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_type}:{self.actor_name} {self.action}"

    def save(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        # Fail early and clearly in Python too; the trigger is the real guarantee.
        if not self._state.adding:
            raise AuditLogIsAppendOnly("audit events cannot be changed")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        raise AuditLogIsAppendOnly("audit events cannot be deleted")


class AuditLogIsAppendOnly(Exception):
    """Raised on an attempt to change or delete an audit event from Python."""
