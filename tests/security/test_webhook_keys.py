"""Webhook keys per agent: each agent's deliveries are signed with its own secret (shown
once), carry X-Ordinaut-Key-Id, and a rotation retires the old secret. Before, every
receiver shared one deployment-wide key, so any receiver could forge deliveries to another.
"""

from __future__ import annotations

import pytest

from agents.models import Agent
from tasks.delivery.webhooks import deliver_webhooks
from tests.api_support import (  # noqa: F401 (fixtures)
    agent_with_key,
    api_fixture,
    assert_error,
    fresh_throttles,
)
from tests.test_webhooks import (  # noqa: F401 (fixture)
    SECRET,
    agent_with_webhook,
    finish_one_run,
    receiver,
    verify,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin(api):
    _, key = agent_with_key(["admin"])
    return api.as_(key)


def created_with_webhook(admin, name: str, url: str) -> tuple[Agent, dict]:
    response = admin.post("/agents", {"name": name, "scopes": ["tasks:read"], "webhook_url": url})
    assert response.status_code == 201, response.content
    body = response.json()
    return Agent.objects.get(pk=body["id"]), body


def delivered_to(hook, agent) -> tuple[dict, bytes]:
    finish_one_run(agent)
    deliver_webhooks()
    return hook.requests[-1]


def test_each_agent_signs_with_its_own_secret(admin, receiver):  # noqa: F811
    hook_a, hook_b = receiver(), receiver()
    alice, shown_a = created_with_webhook(admin, "alice-hooks", hook_a.url)
    bob, shown_b = created_with_webhook(admin, "bob-hooks", hook_b.url)
    assert shown_a["webhook_secret"] != shown_b["webhook_secret"]
    assert shown_a["webhook_secret"].startswith("whsec_")
    # Shown once: the agent's representation carries the key id, never the secret.
    again = admin.get(f"/agents/{alice.id}").json()
    assert "webhook_secret" not in again
    assert again["webhook_key_id"] == shown_a["webhook_key_id"]

    headers, body = delivered_to(hook_a, alice)
    assert headers["X-Ordinaut-Key-Id"] == shown_a["webhook_key_id"]
    assert verify(shown_a["webhook_secret"], headers, body)
    assert not verify(shown_b["webhook_secret"], headers, body)
    assert not verify(SECRET, headers, body)  # the deployment's key no longer signs it
    headers, body = delivered_to(hook_b, bob)
    assert verify(shown_b["webhook_secret"], headers, body)
    assert not verify(shown_a["webhook_secret"], headers, body)


def test_a_rotation_retires_the_old_secret(admin, receiver):  # noqa: F811
    hook = receiver()
    agent, shown = created_with_webhook(admin, "rotating", hook.url)
    rotated = admin.post(f"/agents/{agent.id}/webhook-secret")
    assert rotated.status_code == 200, rotated.content
    new = rotated.json()
    assert new["webhook_key_id"] != shown["webhook_key_id"]
    headers, body = delivered_to(hook, agent)
    assert headers["X-Ordinaut-Key-Id"] == new["webhook_key_id"]
    assert verify(new["webhook_secret"], headers, body)
    assert not verify(shown["webhook_secret"], headers, body)


def test_an_agent_without_its_own_key_uses_the_opt_in_fallback(receiver):  # noqa: F811
    hook = receiver()
    legacy = agent_with_webhook(hook.url)  # made before agents had keys
    headers, body = delivered_to(hook, legacy)
    assert headers["X-Ordinaut-Key-Id"] == "deployment"
    assert verify(SECRET, headers, body)


def test_rotation_needs_admin_and_a_webhook_url(admin, api):
    plain, key = agent_with_key(["tasks:read"])
    assert_error(api.as_(key).post(f"/agents/{plain.id}/webhook-secret"), 403)
    error = assert_error(admin.post(f"/agents/{plain.id}/webhook-secret"), 409, "conflict")
    assert "webhook_url" in error["details"]


def test_the_admin_action_rotates_and_shows_the_secret_once(admin_client, receiver):  # noqa: F811
    hook = receiver()
    agent = agent_with_webhook(hook.url)
    response = admin_client.post(
        "/admin/agents/agent/",
        {"action": "rotate_webhook_secret", "_selected_action": [str(agent.pk)]},
        follow=True,
    )
    agent.refresh_from_db()
    assert agent.webhook_key_id
    assert b"whsec_" in response.content
