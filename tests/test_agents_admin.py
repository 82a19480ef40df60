"""The agents admin writes through the services: validation and audit rows as over the API."""

from __future__ import annotations

from typing import Any

import pytest

from agents.models import Agent, Credential
from audit.models import AuditEvent
from tests.factories import make_agent

pytestmark = pytest.mark.django_db


def change_form(agent: Agent, **overrides: Any) -> dict[str, Any]:
    """The POST a browser sends from the agent's change page (with the credentials inline)."""
    credentials = list(agent.credentials.order_by("pk"))
    data: dict[str, Any] = {
        "name": agent.name,
        "description": agent.description,
        "scopes": ",".join(agent.scopes),
        "webhook_url": agent.webhook_url,
        "credentials-TOTAL_FORMS": str(len(credentials)),
        "credentials-INITIAL_FORMS": str(len(credentials)),
        "credentials-MIN_NUM_FORMS": "0",
        "credentials-MAX_NUM_FORMS": "1000",
    }
    if agent.is_active:
        data["is_active"] = "on"
    for index, credential in enumerate(credentials):
        data[f"credentials-{index}-id"] = str(credential.pk)
        data[f"credentials-{index}-agent"] = str(agent.pk)
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def audit_rows(agent: Agent, action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action, subject_id=str(agent.pk)))


def test_changing_an_agent_goes_through_agent_update_with_its_audit_diff(admin_client):
    agent, _ = make_agent(scopes=["tasks:read"])

    response = admin_client.post(
        f"/admin/agents/agent/{agent.pk}/change/",
        change_form(agent, scopes=" tasks:read , runs:read,tasks:read"),
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    agent.refresh_from_db()
    assert agent.scopes == ["tasks:read", "runs:read"]  # cleaned as the service cleans them
    [row] = audit_rows(agent, "agent.updated")
    assert row.actor_type == "user"
    assert row.actor_name == "admin"
    assert row.details["changes"] == {
        "scopes": {"before": ["tasks:read"], "after": ["tasks:read", "runs:read"]}
    }


def test_an_invalid_scope_is_a_form_error_and_nothing_is_saved(admin_client):
    agent, _ = make_agent(scopes=["tasks:read"])

    response = admin_client.post(
        f"/admin/agents/agent/{agent.pk}/change/", change_form(agent, scopes="tasks:read,BAD SCOPE")
    )

    assert response.status_code == 200
    assert "invalid scope" in response.content.decode()
    agent.refresh_from_db()
    assert agent.scopes == ["tasks:read"]
    assert audit_rows(agent, "agent.updated") == []


def test_unticking_active_deactivates_and_revokes_every_credential(admin_client):
    agent, _ = make_agent()

    response = admin_client.post(
        f"/admin/agents/agent/{agent.pk}/change/",
        change_form(agent, is_active=None, description="retired"),
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    agent.refresh_from_db()
    assert agent.is_active is False
    assert agent.description == "retired"
    assert not Credential.objects.filter(agent=agent, revoked_at__isnull=True).exists()
    [deactivated] = audit_rows(agent, "agent.deactivated")
    assert deactivated.details["credentials_revoked"] == 1
    [updated] = audit_rows(agent, "agent.updated")
    assert set(updated.details["changes"]) == {"description"}


def test_the_revoke_action_uses_credential_revoke_and_counts_only_what_it_revoked(admin_client):
    agent, _ = make_agent()
    credential = agent.credentials.get()

    def revoke() -> str:
        response = admin_client.post(
            "/admin/agents/credential/",
            {"action": "revoke", "_selected_action": [str(credential.pk)]},
            follow=True,
        )
        assert response.status_code == 200
        return response.content.decode()

    assert "Revoked 1 credential(s)." in revoke()
    credential.refresh_from_db()
    assert credential.revoked_at is not None
    [row] = audit_rows(agent, "credential.revoked")
    assert row.details["credential"] == credential.key_id
    assert row.details["kind"] == credential.kind  # written by the service, not the admin

    assert "Revoked 0 credential(s)." in revoke()
    assert len(audit_rows(agent, "credential.revoked")) == 1
