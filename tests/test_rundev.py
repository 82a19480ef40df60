"""`make dev`'s credentials: created once, kept across runs, brought up to date."""

from __future__ import annotations

import pytest

from agents.credentials import verify_secret
from agents.models import Agent, Credential
from agents.services import agent_create
from audit.services import Actor
from ordinaut.management.commands.rundev import DEMO_AGENT, DEMO_SCOPES, Command

pytestmark = pytest.mark.django_db


@pytest.fixture
def var_dir(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    return tmp_path


def test_first_run_creates_admin_and_demo_agent_with_every_demo_scope(var_dir):
    saved = Command()._ensure_credentials()
    agent = Agent.objects.get(name=DEMO_AGENT)
    assert set(DEMO_SCOPES) <= set(agent.scopes)
    assert saved["agent_id"] == str(agent.id)
    secret = Credential.objects.get(agent=agent, kind="secret")
    assert verify_secret(saved["agent_secret"], secret.secret_hash)
    assert (var_dir / "dev-credentials.json").stat().st_mode & 0o777 == 0o600


def test_a_demo_agent_from_an_older_checkout_gets_the_current_scopes(var_dir):
    old, _ = agent_create(name=DEMO_AGENT, scopes=["tasks:read", "notify"], actor=Actor.system("t"))
    saved = Command()._ensure_credentials()
    agent = Agent.objects.get(pk=old.pk)
    assert set(DEMO_SCOPES) | {"notify"} <= set(agent.scopes)
    assert saved["agent_id"] == str(agent.id)
    again = Command()._ensure_credentials()
    assert again["agent_secret"] == saved["agent_secret"]  # nothing re-issued on a second run
