"""/agents and /agents/{id}/credentials: admin-only administration with audit."""

from __future__ import annotations

import uuid

import pytest

from agents.models import Agent, Credential, CredentialKind
from audit.models import AuditEvent
from tests.api_support import (  # noqa: F401 (fixtures)
    agent_with_key,
    api_fixture,
    assert_error,
    fresh_throttles,
)
from tests.factories import make_agent

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin(api):
    agent, key = agent_with_key(scopes=["admin"])
    return agent, api.as_(key)


def test_create_agent_returns_agent_response_and_secret_once(admin, api):
    _, client = admin
    response = client.post(
        "/agents",
        {"name": "morning-assistant", "scopes": ["calendar.read", "notify", "tasks:read"],
         "webhook_url": "https://webhook.example.com/agent-notifications"},
    )  # fmt: skip
    assert response.status_code == 201, response.content
    body = response.json()
    assert {"id", "name", "scopes", "webhook_url", "created_at", "agent_secret"} <= set(body)
    assert body["scopes"] == ["calendar.read", "notify", "tasks:read"]
    token = api.post(
        "/agents/auth/token", {"agent_id": body["id"], "agent_secret": body["agent_secret"]}
    )
    assert token.status_code == 200
    assert AuditEvent.objects.filter(action="agent.created", subject_id=body["id"]).exists()


def test_duplicate_agent_name_is_409(admin):
    _, client = admin
    client.post("/agents", {"name": "twin", "scopes": []})
    assert_error(client.post("/agents", {"name": "twin", "scopes": []}), 409, "conflict")


def test_invalid_scope_is_422(admin):
    _, client = admin
    error = assert_error(client.post("/agents", {"name": "x", "scopes": ["Bad Scope"]}), 422)
    assert "scopes" in error["details"]


def test_list_get_update_agents(admin):
    _, client = admin
    target, _ = make_agent(scopes=["tasks:read"])
    listed = client.get(f"/agents?name_filter={target.name}").json()
    assert [a["id"] for a in listed] == [str(target.id)]
    assert client.get("/agents?scope_filter=admin").json()[0]["scopes"] == ["admin"]
    assert client.get(f"/agents/{target.id}").json()["name"] == target.name
    updated = client.put(f"/agents/{target.id}", {"scopes": ["tasks:read", "runs:read"]})
    assert updated.json()["scopes"] == ["tasks:read", "runs:read"]
    event = AuditEvent.objects.filter(action="agent.updated", subject_id=str(target.id)).get()
    assert event.details["changes"]["scopes"] == {
        "before": ["tasks:read"],
        "after": ["tasks:read", "runs:read"],
    }
    assert_error(client.get(f"/agents/{uuid.uuid4()}"), 404)


def test_delete_deactivates_and_revokes_credentials(admin, api):
    _, client = admin
    target, key = agent_with_key()
    response = client.delete(f"/agents/{target.id}")
    assert response.status_code == 200
    assert response.json()["message"] == "Agent deleted successfully"
    assert Agent.objects.get(pk=target.id).is_active is False
    assert not Credential.objects.filter(agent=target, revoked_at__isnull=True).exists()
    assert_error(api.as_(key).get("/tasks"), 401)


def test_agent_cannot_delete_itself(admin):
    agent, client = admin
    assert_error(client.delete(f"/agents/{agent.id}"), 409)


def test_issue_secret_and_api_key_then_revoke(admin, api):
    _, client = admin
    target, _ = make_agent()
    secret = client.post(f"/agents/{target.id}/credentials")
    assert secret.status_code == 201
    assert secret.json()["agent_secret"].startswith("ord_s_")
    assert secret.json()["message"] == "Agent credentials created successfully"
    issued = client.post(
        f"/agents/{target.id}/credentials", {"kind": "api_key", "expires_in_days": 30}
    ).json()
    assert issued["api_key"].startswith("ord_k_")
    assert issued["expires_at"] is not None
    assert api.as_(issued["api_key"]).get("/tasks").status_code == 200
    listed = client.get(f"/agents/{target.id}/credentials").json()
    assert {c["kind"] for c in listed} == {"secret", "api_key"}
    assert all("hash" not in key for c in listed for key in c)
    revoke = client.delete(f"/agents/{target.id}/credentials/{issued['key_id']}")
    assert revoke.status_code == 200
    assert_error(api.as_(issued["api_key"]).get("/tasks"), 401)
    assert Credential.objects.filter(agent=target, kind=CredentialKind.API_KEY).get().revoked_at


def test_chosen_password_is_refused(admin):
    _, client = admin
    target, _ = make_agent()
    error = assert_error(client.post(f"/agents/{target.id}/credentials", {"password": "x"}), 422)
    assert "password" in error["details"]


def test_agent_administration_needs_admin(api):
    target, key = agent_with_key()
    client = api.as_(key)
    assert_error(client.get("/agents"), 403)
    assert_error(client.post("/agents", {"name": "x", "scopes": []}), 403)
    assert_error(client.post(f"/agents/{target.id}/credentials"), 403)
    assert_error(api.get("/agents"), 401)
