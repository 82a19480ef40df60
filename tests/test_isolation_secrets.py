"""Secrets need a scope: `${secrets.NAME}` is for agents holding `secrets:<name>` or
`secrets:*`, checked at create, at update and again when the step runs; secret values are
redacted from every log line; a secret too short to redact stops start-up."""

from __future__ import annotations

import io
import logging
import threading

import pytest
from asgiref.sync import async_to_sync
from mcp import Client

from agents.mcp_server import build_server
from pipelines.secrets import REDACTED, RedactSecretsFilter
from tasks.models import Occurrence, OccurrenceState, Run, RunStatus, Task
from tasks.worker import Worker
from tests.api_support import (  # noqa: F401 (fixtures)
    agent_with_key,
    api_fixture,
    assert_error,
    fresh_throttles,
    task_body,
)
from tests.conftest import command_env, run_manage

pytestmark = pytest.mark.django_db

BASE = ["tasks:read", "tasks:write", "runs:read"]
TOKEN = "xoxb-0123456789-secret"
USES_SECRET = {
    "pipeline": [
        {"id": "call", "uses": "debug.echo", "with": {"auth": "Bearer ${secrets.SLACK_TOKEN}"}}
    ]
}


@pytest.fixture(autouse=True)
def slack_token(settings):
    settings.PIPELINE_SECRETS = {"SLACK_TOKEN": TOKEN}


def test_a_secret_without_its_scope_is_a_422_naming_secret_and_scope(api):
    _, key = agent_with_key(BASE)
    error = assert_error(api.as_(key).post("/tasks", task_body(payload=USES_SECRET)), 422)
    reasons = error["details"]["payload.pipeline[0].with.auth"]
    assert any("SLACK_TOKEN" in r and "secrets:slack_token" in r for r in reasons), reasons
    assert not Task.objects.exists()


@pytest.mark.parametrize("scope", ["secrets:slack_token", "secrets:*"])
def test_the_secrets_scope_allows_it(api, scope):
    _, key = agent_with_key([*BASE, scope])
    assert api.as_(key).post("/tasks", task_body(payload=USES_SECRET)).status_code == 201


def test_another_secrets_scope_does_not(api):
    _, key = agent_with_key([*BASE, "secrets:github_token"])
    assert_error(api.as_(key).post("/tasks", task_body(payload=USES_SECRET)), 422)


def test_an_update_adding_a_secret_is_checked_too(api):
    _, key = agent_with_key(BASE)
    client = api.as_(key)
    task = client.post("/tasks", task_body()).json()
    error = assert_error(client.patch(f"/tasks/{task['id']}", {"payload": USES_SECRET}), 422)
    assert "payload.pipeline[0].with.auth" in error["details"]
    assert "secrets" not in str(Task.objects.get(pk=task["id"]).payload)


def test_the_task_output_template_is_checked_too(api):
    _, key = agent_with_key(BASE)
    payload = {
        "pipeline": [{"id": "a", "uses": "debug.echo", "with": {}}],
        "output": {"leak": "${secrets.SLACK_TOKEN}"},
    }
    error = assert_error(api.as_(key).post("/tasks", task_body(payload=payload)), 422)
    assert "payload.output.leak" in error["details"]


def test_over_mcp_create_task_is_refused_the_same_way():
    _, key = agent_with_key(BASE)

    async def scenario():
        async with Client(build_server(stdio_token=key)) as client:
            return await client.call_tool(
                "create_task",
                {"title": "t", "schedule_kind": "once",
                 "schedule_expr": "2099-01-01T00:00:00Z", "payload": USES_SECRET},
            )  # fmt: skip

    result = async_to_sync(scenario)()
    assert result.is_error
    assert "secrets:slack_token" in result.content[0].text
    assert not Task.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_at_run_time_a_revoked_secrets_scope_fails_the_step_without_retrying(api):
    agent, key = agent_with_key([*BASE, "secrets:slack_token"])
    client = api.as_(key)
    task = client.post("/tasks", task_body(payload=USES_SECRET, max_retries=3)).json()
    # The scope is narrowed after the task was saved: the run must check again.
    agent.scopes = BASE
    agent.save(update_fields=["scopes"])
    assert client.post(f"/tasks/{task['id']}/run_now").status_code == 200

    Worker(concurrency=1, burst=True, poll_interval=0.2).run(threading.Event())

    runs = list(Run.objects.filter(task_id=task["id"]))
    assert [run.status for run in runs] == [RunStatus.FAILED]
    assert "secrets:slack_token" in runs[0].error
    assert TOKEN not in (runs[0].error + str(runs[0].steps))
    assert Occurrence.objects.get(task_id=task["id"]).state == OccurrenceState.DEAD


def console_handler() -> logging.Handler:
    """The handler settings.LOGGING configured for the servers."""
    for handler in logging.getLogger().handlers:
        if any(isinstance(f, RedactSecretsFilter) for f in handler.filters):
            return handler
    raise AssertionError("no handler carries RedactSecretsFilter")


@pytest.fixture
def log_lines():
    handler = console_handler()
    for f in handler.filters:
        if isinstance(f, RedactSecretsFilter):
            f._needles = None  # re-read the secrets this test configured
    stream = io.StringIO()
    previous = handler.setStream(stream)
    try:
        yield stream
    finally:
        handler.setStream(previous)
        for f in handler.filters:
            if isinstance(f, RedactSecretsFilter):
                f._needles = None


def test_every_log_line_is_redacted_message_arguments_extras_and_traceback(log_lines):
    log = logging.getLogger("tests.secrets")
    log.warning("token is %s", TOKEN, extra={"header": f"Bearer {TOKEN}"})
    try:
        raise RuntimeError(f"refused {TOKEN}")
    except RuntimeError:
        log.exception("call failed")
    text = log_lines.getvalue()
    assert TOKEN not in text
    assert text.count(REDACTED) >= 3, text
    assert "refused [redacted]" in text


@pytest.mark.django_db(transaction=True)
def test_the_debug_log_tool_cannot_print_a_secret(api, log_lines):
    _, key = agent_with_key([*BASE, "secrets:slack_token"])
    payload = {
        "pipeline": [
            {"id": "say", "uses": "debug.log", "with": {"message": "t=${secrets.SLACK_TOKEN}"}}
        ]
    }
    client = api.as_(key)
    task = client.post("/tasks", task_body(payload=payload)).json()
    client.post(f"/tasks/{task['id']}/run_now")
    Worker(concurrency=1, burst=True, poll_interval=0.2).run(threading.Event())
    assert Run.objects.get(task_id=task["id"]).status == RunStatus.SUCCEEDED
    text = log_lines.getvalue()
    assert "t=[redacted]" in text, text
    assert TOKEN not in text


def start_up_with(pin: str):
    # Production settings (DEBUG off, so no embedded servers start); `check` connects to
    # no database.
    env = command_env(
        DEBUG="0", SECRET_KEY="k" * 60, DATABASE_URL="postgresql://u:p@127.0.0.1:1/db",
        ORDINAUT_SECRET_PIN=pin,
    )  # fmt: skip
    return run_manage("check", env=env)


def test_a_secret_shorter_than_eight_characters_stops_start_up():
    done = start_up_with("1234")
    assert done.returncode != 0
    assert "PIN" in done.stderr, done.stderr
    assert "8 characters" in done.stderr
    fine = start_up_with("12345678")
    assert fine.returncode == 0, fine.stderr
