"""Authentication: token exchange, refresh, revoke, API keys, and every way a token fails."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework_simplejwt.tokens import AccessToken

from agents.models import Credential, CredentialKind
from agents.services import agent_update, credential_revoke
from audit.models import AuditEvent
from audit.services import Actor
from tests.api_support import (  # noqa: F401 (fixtures)
    agent_with_key,
    api_fixture,
    api_key_for,
    assert_error,
    fresh_throttles,
    jwt_for,
)
from tests.factories import make_agent

pytestmark = pytest.mark.django_db


def test_secret_exchanges_for_jwt_pair_that_authenticates(api):
    agent, secret = make_agent(scopes=["tasks:read"])
    response = api.post("/agents/auth/token", {"agent_id": str(agent.id), "agent_secret": secret})
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["scope"] == "tasks:read"
    assert 0 < body["expires_in"] <= 3600
    listed = api.as_(body["access_token"]).get("/tasks")
    assert listed.status_code == 200
    assert AuditEvent.objects.filter(action="agent.authenticated", subject_id=str(agent.id))


def test_token_exchange_accepts_trailing_slash(api):
    agent, secret = make_agent()
    response = api.post("/agents/auth/token/", {"agent_id": str(agent.id), "agent_secret": secret})
    assert response.status_code == 200


def test_token_exchange_refuses_wrong_secret_and_missing_secret(api):
    agent, secret = make_agent()
    _, other_secret = make_agent()
    for body in (
        {"agent_id": str(agent.id), "agent_secret": secret[:-1] + "x"},
        {"agent_id": str(agent.id)},
        {"agent_id": str(agent.id), "agent_secret": other_secret},
        {"agent_id": "not-a-uuid", "agent_secret": secret},
    ):
        response = api.post("/agents/auth/token", body)
        error = assert_error(response, 401, "authentication_failed")
        assert error["message"] == "Invalid agent credentials"
        assert response["WWW-Authenticate"].startswith("Bearer")


def test_token_exchange_refuses_inactive_agent(api):
    agent, secret = make_agent()
    agent_update(agent_id=agent.id, changes={"is_active": False}, actor=Actor.system("t"))
    response = api.post("/agents/auth/token", {"agent_id": str(agent.id), "agent_secret": secret})
    assert_error(response, 401)


def test_no_token_is_401_with_www_authenticate(api):
    response = api.get("/tasks")
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_garbage_token_is_401(api):
    for token in ("nonsense", "a.b.c", "ord_k_zzzz_yyy", "ord_s_0123456789abcdef_x"):
        response = api.as_(token).get("/tasks")
        assert_error(response, 401, "authentication_failed")
        assert response["WWW-Authenticate"].startswith("Bearer")


def test_agent_id_as_bearer_token_does_not_authenticate(api):
    """The original's `Bearer <agent-id>` was its security hole."""
    agent, _ = make_agent(scopes=["admin"])
    response = api.as_(str(agent.id)).get("/tasks")
    assert_error(response, 401)


def test_expired_access_token_is_401(api, monkeypatch):
    agent, secret = make_agent()
    monkeypatch.setattr(AccessToken, "lifetime", timedelta(seconds=-60))
    access, _ = jwt_for(agent, secret)
    response = api.as_(access).get("/tasks")
    error = assert_error(response, 401)
    assert "expired" in error["message"]


def test_refresh_token_is_not_an_access_token(api):
    agent, secret = make_agent()
    _, refresh = jwt_for(agent, secret)
    assert_error(api.as_(refresh).get("/tasks"), 401)


def test_forged_signature_is_401(api):
    agent, secret = make_agent()
    access, _ = jwt_for(agent, secret)
    header, payload, signature = access.split(".")
    forged = f"{header}.{payload}.{signature[:-2]}AA"
    assert_error(api.as_(forged).get("/tasks"), 401)


def test_refresh_rotates_and_old_refresh_token_is_refused(api):
    agent, secret = make_agent()
    _, refresh = jwt_for(agent, secret)
    response = api.post("/agents/auth/refresh", {"refresh_token": refresh})
    assert response.status_code == 200
    new = response.json()
    assert api.as_(new["access_token"]).get("/tasks").status_code == 200
    again = api.post("/agents/auth/refresh", {"refresh_token": refresh})
    assert_error(again, 401)


def test_refresh_carries_narrowed_scopes(api):
    agent, secret = make_agent(scopes=["tasks:read", "tasks:write"])
    _, refresh = jwt_for(agent, secret)
    agent_update(agent_id=agent.id, changes={"scopes": ["tasks:read"]}, actor=Actor.system("t"))
    response = api.post("/agents/auth/refresh", {"refresh_token": refresh})
    assert response.json()["scope"] == "tasks:read"


def test_revoked_access_token_is_refused(api):
    agent, secret = make_agent()
    access, _ = jwt_for(agent, secret)
    response = api.post("/agents/auth/revoke", {"refresh_token": access})
    assert response.json() == {
        "success": True,
        "message": "Token revoked successfully",
        "details": {"revoked": True},
    }
    error = assert_error(api.as_(access).get("/tasks"), 401)
    assert "revoked" in error["message"]


def test_revoking_refresh_token_ends_its_access_tokens(api):
    agent, secret = make_agent()
    access, refresh = jwt_for(agent, secret)
    api.post("/agents/auth/revoke", {"refresh_token": refresh})
    assert_error(api.as_(access).get("/tasks"), 401)
    assert_error(api.post("/agents/auth/refresh", {"refresh_token": refresh}), 401)


def test_revoking_an_invalid_token_succeeds_without_writing(api):
    before = AuditEvent.objects.count()
    response = api.post("/agents/auth/revoke", {"refresh_token": "not-a-token"})
    assert response.status_code == 200
    assert response.json()["message"] == "Token was already invalid"
    assert AuditEvent.objects.count() == before


def test_api_key_authenticates_and_is_stored_as_keyed_hash(api):
    agent, key = agent_with_key()
    assert key.startswith("ord_k_")
    credential = Credential.objects.get(agent=agent, kind=CredentialKind.API_KEY)
    assert key not in credential.secret_hash
    assert credential.secret_hash.startswith("hmac_sha256$")
    assert api.as_(key).get("/tasks").status_code == 200
    credential.refresh_from_db()
    assert credential.last_used_at is not None


def test_api_key_with_wrong_random_part_is_refused(api):
    _, key = agent_with_key()
    assert_error(api.as_(key[:-3] + "abc").get("/tasks"), 401)


def test_revoked_api_key_is_refused_at_once(api):
    agent, key = agent_with_key()
    assert api.as_(key).get("/tasks").status_code == 200
    key_id = key.split("_")[2]
    credential_revoke(agent=agent, key_id=key_id, actor=Actor.system("t"))
    assert_error(api.as_(key).get("/tasks"), 401)


def test_expired_api_key_is_refused(api):
    agent, key = agent_with_key()
    Credential.objects.filter(agent=agent, kind=CredentialKind.API_KEY).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert_error(api.as_(key).get("/tasks"), 401)


def test_revoked_secret_ends_jwts_minted_from_it(api):
    agent, secret = make_agent()
    access, _ = jwt_for(agent, secret)
    credential = Credential.objects.get(agent=agent, kind=CredentialKind.SECRET)
    credential_revoke(agent=agent, key_id=credential.key_id, actor=Actor.system("t"))
    assert_error(api.as_(access).get("/tasks"), 401)


def test_inactive_agent_is_refused_at_once_with_jwt_and_api_key(api):
    agent, secret = make_agent()
    access, _ = jwt_for(agent, secret)
    key = api_key_for(agent)
    agent_update(agent_id=agent.id, changes={"is_active": False}, actor=Actor.system("t"))
    assert_error(api.as_(access).get("/tasks"), 401)
    assert_error(api.as_(key).get("/tasks"), 401)


def test_scope_removed_from_agent_is_gone_from_live_jwt(api):
    agent, secret = make_agent(scopes=["tasks:read", "runs:read"])
    access, _ = jwt_for(agent, secret)
    agent_update(agent_id=agent.id, changes={"scopes": ["tasks:read"]}, actor=Actor.system("t"))
    assert api.as_(access).get("/tasks").status_code == 200
    assert_error(api.as_(access).get("/runs"), 403, "forbidden")


def test_missing_scope_is_403_naming_it(api):
    _, key = agent_with_key(scopes=["runs:read"])
    error = assert_error(api.as_(key).get("/tasks"), 403, "forbidden")
    assert "tasks:read" in error["message"]


def test_admin_scope_grants_every_scope(api):
    _, key = agent_with_key(scopes=["admin"])
    assert api.as_(key).get("/tasks").status_code == 200
    assert api.as_(key).get("/runs").status_code == 200
    assert api.as_(key).get("/audit").status_code == 200
