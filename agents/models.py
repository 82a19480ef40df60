"""Agents (the API's users) and their credentials."""

from __future__ import annotations

import uuid
from datetime import datetime

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q
from django.utils import timezone

# The budgets an operator sets per agent (agents.services.agent_update, the admin).
BUDGETS = ("max_active_tasks", "max_runs_per_hour", "max_concurrent_runs", "max_llm_tokens_per_day")


class AgentStatus(models.TextChoices):
    ACTIVE = "active"
    PAUSED = "paused"
    INACTIVE = "inactive"


class Agent(models.Model):
    """A program that holds credentials and acts on Ordinaut within its scopes."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True, default="")
    scopes = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    webhook_url = models.URLField(max_length=2000, blank=True, default="")
    # The public id of its webhook signing key (agents.credentials.webhook_secret derives the
    # secret); empty: deliveries are signed with the deployment's fallback key.
    webhook_key_id = models.CharField(max_length=32, blank=True, default="")
    is_active = models.BooleanField(default=True)
    # The kill switch: while paused (or inactive) none of the agent's work is queued,
    # claimed or continued; each timestamp says since when, so resuming can account for
    # the schedule instants that fell in between.
    paused_at = models.DateTimeField(null=True, blank=True)
    deactivated_at = models.DateTimeField(null=True, blank=True)
    # Budgets (BUDGETS): NULL is unlimited. A new agent gets settings.AGENT_DEFAULT_<NAME>.
    max_active_tasks = models.PositiveIntegerField(null=True, blank=True)
    max_runs_per_hour = models.PositiveIntegerField(null=True, blank=True)
    max_concurrent_runs = models.PositiveIntegerField(null=True, blank=True)
    max_llm_tokens_per_day = models.PositiveBigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=~Q(name=""), name="agent_name_not_empty"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def status(self) -> str:
        """`inactive` (credentials refused), `paused` (work held), or `active`."""
        if not self.is_active:
            return AgentStatus.INACTIVE
        return AgentStatus.PAUSED if self.paused_at is not None else AgentStatus.ACTIVE

    @property
    def halted_since(self) -> datetime | None:
        """When the agent's work stopped (paused or deactivated, the earlier); None: it runs."""
        stops = [self.paused_at, None if self.is_active else self.deactivated_at]
        return min((at for at in stops if at is not None), default=None)

    @property
    def budgets(self) -> dict[str, int | None]:
        return {name: getattr(self, name) for name in BUDGETS}

    # The API's request.user is the authenticated Agent; DRF's permission checks read these.
    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_anonymous(self) -> bool:
        return False


class CredentialKind(models.TextChoices):
    # Exchanged at /agents/auth/token for short-lived JWTs; hashed with Django's hasher.
    SECRET = "secret", "Agent secret"
    # Sent directly as the Bearer token; hashed with keyed SHA-256 so checks cost microseconds.
    API_KEY = "api_key", "API key"


class Credential(models.Model):
    """A secret that proves an agent's identity. Only its hash is stored; it is shown once."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="credentials")
    kind = models.CharField(max_length=16, choices=CredentialKind.choices)
    # Public, non-secret part of the token, used to find the row without scanning hashes.
    key_id = models.CharField(max_length=32, unique=True)
    secret_hash = models.CharField(max_length=256)
    label = models.CharField(max_length=100, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=CredentialKind.values), name="credential_kind_valid"
            ),
            models.CheckConstraint(
                condition=~Q(secret_hash=""), name="credential_secret_hash_not_empty"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.agent} {self.get_kind_display()} {self.key_id}"

    def is_usable(self, now=None) -> bool:  # noqa: ANN001
        """True when neither revoked nor expired (the agent's own state is checked apart)."""
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class RevokedToken(models.Model):
    """A JWT id refused before its expiry (logout, refresh rotation, explicit revoke).

    Access tokens also carry their refresh token's id, so revoking a refresh token revokes
    the access tokens minted from it. Rows are useless after `expires_at` and may be pruned.
    """

    jti = models.CharField(max_length=64, primary_key=True)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="revoked_tokens")
    token_type = models.CharField(max_length=16)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["expires_at"], name="revoked_token_expiry_idx")]

    def __str__(self) -> str:
        return f"{self.token_type} {self.jti}"
