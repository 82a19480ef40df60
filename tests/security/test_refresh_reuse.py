"""Refresh-token theft: presenting an already-rotated refresh token revokes its whole family.

Before this, a thief who refreshed first kept a valid chain while the owner's reuse was
merely refused; now the reuse ends every token minted from that family, the thief's too.
"""

from __future__ import annotations

import pytest

from audit.models import AuditEvent
from tests.api_support import (  # noqa: F401 (fixtures)
    api_fixture,
    assert_error,
    fresh_throttles,
    jwt_for,
)
from tests.factories import make_agent

pytestmark = pytest.mark.django_db


def refresh(api, token):
    return api.post("/agents/auth/refresh", {"refresh_token": token})


def test_reusing_a_rotated_refresh_token_revokes_every_token_of_its_family(api):
    agent, secret = make_agent(scopes=["tasks:read"])
    _, first_refresh = jwt_for(agent, secret)
    # The thief rotates first, twice: it holds the family's newest pair.
    second = refresh(api, first_refresh).json()
    third = refresh(api, second["refresh_token"]).json()
    assert api.as_(third["access_token"]).get("/tasks").status_code == 200

    # The owner presents the rotated token: refused, and the family ends.
    assert_error(refresh(api, first_refresh), 401)
    assert_error(api.as_(third["access_token"]).get("/tasks"), 401)
    assert_error(refresh(api, third["refresh_token"]), 401)
    event = AuditEvent.objects.get(action="credential.refresh_reuse")
    assert event.subject_id == str(agent.id)

    # Another exchange of the secret starts a new family that works.
    access, _ = jwt_for(agent, secret)
    assert api.as_(access).get("/tasks").status_code == 200


def test_another_family_of_the_same_agent_is_not_touched(api):
    agent, secret = make_agent(scopes=["tasks:read"])
    _, stolen = jwt_for(agent, secret)
    other_access, _ = jwt_for(agent, secret)  # e.g. a second process of the same agent
    refresh(api, stolen)
    refresh(api, stolen)  # reuse: that family ends
    assert api.as_(other_access).get("/tasks").status_code == 200
