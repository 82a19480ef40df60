"""`manage.py createagent`: one agent, one hashed secret, one audit event, clean stdout."""

import json

import pytest
from django.contrib.auth.hashers import check_password

from agents.models import Agent
from audit.models import AuditEvent
from tests.conftest import command_env, run_manage

pytestmark = pytest.mark.django_db(transaction=True)


def createagent(url, *args):
    env = command_env(DEBUG="0", SECRET_KEY="s" * 50, DATABASE_URL=url)
    return run_manage("createagent", *args, env=env)


def test_json_output_is_exactly_one_object_with_the_secret(test_database_url):
    result = createagent(
        test_database_url, "mailer", "--scopes", "tasks:read,tasks:write", "--json"
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)  # fails on any extra line or text
    assert set(data) == {"id", "name", "scopes", "secret"}
    assert (data["name"], data["scopes"]) == ("mailer", ["tasks:read", "tasks:write"])
    agent = Agent.objects.get(pk=data["id"])
    credential = agent.credentials.get()
    assert data["secret"] not in credential.secret_hash
    assert check_password(data["secret"], credential.secret_hash)
    event = AuditEvent.objects.get(action="agent.created", subject_id=data["id"])
    assert data["secret"] not in json.dumps(event.details)


def test_logs_go_to_stderr_not_stdout(test_database_url):
    result = createagent(test_database_url, "quiet", "--json")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1


def test_duplicate_name_fails_clearly_and_writes_nothing(test_database_url):
    assert createagent(test_database_url, "twin", "--json").returncode == 0
    result = createagent(test_database_url, "twin", "--json")
    assert result.returncode != 0
    assert "already exists" in result.stderr
    assert result.stdout == ""
    assert Agent.objects.filter(name="twin").count() == 1
    assert AuditEvent.objects.filter(action="agent.created").count() == 1


def test_invalid_scope_is_rejected_with_its_name(test_database_url):
    result = createagent(test_database_url, "bad", "--scopes", "tasks:read,DROP TABLE", "--json")
    assert result.returncode != 0
    assert "invalid scope 'DROP TABLE'" in result.stderr
    assert not Agent.objects.filter(name="bad").exists()


def test_human_output_shows_id_and_secret_once(test_database_url):
    result = createagent(test_database_url, "human", "--scopes", "tasks:read")
    assert result.returncode == 0, result.stderr
    agent = Agent.objects.get(name="human")
    assert str(agent.id) in result.stdout
    secret_lines = [line for line in result.stdout.splitlines() if line.startswith("Secret: ")]
    assert len(secret_lines) == 1
    assert check_password(
        secret_lines[0].removeprefix("Secret: "), agent.credentials.get().secret_hash
    )
