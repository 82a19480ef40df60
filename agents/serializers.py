"""Request and response shapes of /agents and /agents/auth (the original's field names)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from agents.models import Agent, AgentStatus, Credential, CredentialKind
from ordinaut.api import PageQuerySerializer, StrictSerializer, iso

_SCOPES_HELP = "Permission scopes, e.g. tasks:read, tasks:write, runs:read, admin."


class AgentCreateSerializer(StrictSerializer):
    name = serializers.CharField(min_length=1, max_length=100)
    scopes = serializers.ListField(
        child=serializers.CharField(max_length=64), max_length=100, help_text=_SCOPES_HELP
    )
    webhook_url = serializers.URLField(
        max_length=2000, required=False, allow_null=True, allow_blank=True
    )
    description = serializers.CharField(
        max_length=2000, required=False, allow_blank=True, default=""
    )


class AgentUpdateSerializer(StrictSerializer):
    name = serializers.CharField(min_length=1, max_length=100, required=False)
    scopes = serializers.ListField(
        child=serializers.CharField(max_length=64), max_length=100, required=False
    )
    webhook_url = serializers.URLField(
        max_length=2000, required=False, allow_null=True, allow_blank=True
    )
    description = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    is_active = serializers.BooleanField(required=False)
    budgets = serializers.JSONField(
        required=False,
        help_text="Partial: {max_active_tasks, max_runs_per_hour, max_concurrent_runs, "
        "max_llm_tokens_per_day}, each an integer >= 0 or null for unlimited.",
    )


class AgentListQuerySerializer(PageQuerySerializer):
    name_filter = serializers.CharField(required=False, max_length=100)
    scope_filter = serializers.CharField(required=False, max_length=64)


class BudgetsSerializer(serializers.Serializer):
    """An agent's budgets; null is unlimited."""

    max_active_tasks = serializers.IntegerField(allow_null=True)
    max_runs_per_hour = serializers.IntegerField(allow_null=True)
    max_concurrent_runs = serializers.IntegerField(allow_null=True)
    max_llm_tokens_per_day = serializers.IntegerField(allow_null=True)


class AgentSerializer(serializers.Serializer):
    """The original's AgentResponse, plus description, is_active, status and paused_at."""

    id = serializers.UUIDField()
    name = serializers.CharField()
    scopes = serializers.ListField(child=serializers.CharField())
    webhook_url = serializers.CharField(allow_null=True)
    webhook_key_id = serializers.CharField(
        allow_null=True, help_text="Sent as X-Ordinaut-Key-Id; null: the deployment's key."
    )
    description = serializers.CharField()
    is_active = serializers.BooleanField()
    status = serializers.ChoiceField(
        choices=AgentStatus.choices,
        help_text="active; paused (the kill switch: its work is held); inactive (deactivated).",
    )
    paused_at = serializers.DateTimeField(allow_null=True)
    budgets = BudgetsSerializer()
    created_at = serializers.DateTimeField()


class AgentCreatedSerializer(AgentSerializer):
    agent_secret = serializers.CharField(
        help_text="Exchange at POST /agents/auth/token. Shown once; only its hash is stored."
    )
    webhook_secret = serializers.CharField(
        required=False,
        help_text="With a webhook_url: the key its deliveries are signed with. Shown once.",
    )


class WebhookSecretSerializer(serializers.Serializer):
    agent_id = serializers.UUIDField()
    webhook_key_id = serializers.CharField()
    webhook_secret = serializers.CharField(help_text="Shown once.")


def agent_data(agent: Agent) -> dict[str, Any]:
    """An agent as AgentSerializer describes it."""
    return {
        "id": str(agent.id),
        "name": agent.name,
        "scopes": list(agent.scopes),
        "webhook_url": agent.webhook_url or None,
        "webhook_key_id": agent.webhook_key_id or None,
        "description": agent.description,
        "is_active": agent.is_active,
        "status": agent.status,
        "paused_at": iso(agent.paused_at) if agent.paused_at else None,
        "budgets": agent.budgets,
        "created_at": iso(agent.created_at),
    }


class CredentialIssueSerializer(StrictSerializer):
    kind = serializers.ChoiceField(
        choices=CredentialKind.choices,
        default=CredentialKind.SECRET,
        help_text="secret: exchanged for JWTs; api_key: sent directly as the Bearer token.",
    )
    label = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    expires_in_days = serializers.IntegerField(
        min_value=1, max_value=3650, required=False, allow_null=True, help_text="API keys only."
    )
    password = serializers.CharField(
        required=False,
        allow_null=True,
        help_text="Accepted for compatibility only when null: Ordinaut always generates secrets.",
    )

    def validate_password(self, value: str | None) -> None:
        if value is not None:
            raise serializers.ValidationError(
                "chosen passwords are not supported; Ordinaut generates a random secret"
            )
        return None


class CredentialIssuedSerializer(serializers.Serializer):
    agent_id = serializers.UUIDField()
    kind = serializers.ChoiceField(choices=CredentialKind.choices)
    key_id = serializers.CharField()
    agent_secret = serializers.CharField(required=False, help_text="For kind=secret; shown once.")
    api_key = serializers.CharField(required=False, help_text="For kind=api_key; shown once.")
    expires_at = serializers.DateTimeField(allow_null=True)
    message = serializers.CharField()


class CredentialSerializer(serializers.Serializer):
    key_id = serializers.CharField()
    kind = serializers.ChoiceField(choices=CredentialKind.choices)
    label = serializers.CharField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)


def credential_data(credential: Credential) -> dict[str, Any]:
    """A credential's public facts (never its hash)."""

    return {
        "key_id": credential.key_id,
        "kind": credential.kind,
        "label": credential.label,
        "created_at": iso(credential.created_at),
        "expires_at": iso(credential.expires_at),
        "revoked_at": iso(credential.revoked_at),
        "last_used_at": iso(credential.last_used_at),
    }


class TokenRequestSerializer(StrictSerializer):
    agent_id = serializers.CharField(max_length=64, help_text="The agent's UUID.")
    agent_secret = serializers.CharField(
        max_length=256,
        required=False,
        allow_null=True,
        help_text="The agent's secret (ord_s_...). Required: an agent id alone proves nothing.",
    )


class RefreshRequestSerializer(StrictSerializer):
    refresh_token = serializers.CharField(max_length=4096)


class TokenResponseSerializer(serializers.Serializer):
    access_token = serializers.CharField()
    refresh_token = serializers.CharField()
    token_type = serializers.CharField(default="bearer")
    expires_in = serializers.IntegerField(help_text="Access token lifetime in seconds.")
    scope = serializers.CharField(help_text="Space-separated scopes.")
