"""Nothing secret in records: credentials in webhook and MCP server URLs and arguments are
masked in audit rows and log lines, and a pipeline secret's value reaches no audit row, run
record, outbox message, webhook payload or log line, whichever way a step lets it out."""

from __future__ import annotations

import io
import json
import logging
import threading
from datetime import timedelta

import pytest
from django.utils import timezone

from agents.services import agent_update
from audit.models import AuditEvent
from audit.services import Actor
from ordinaut.masking import MASK, mask_args, mask_url
from pipelines.services import mcp_server_upsert
from tasks.delivery.webhooks import deliver_webhooks
from tasks.models import OutboxMessage, Run, WebhookDelivery
from tasks.worker import Worker
from tests.conftest import pipeline_threads_gone
from tests.factories import make_agent, make_occurrence, make_task
from tests.security.test_bounded_http import Target, send

CREDENTIAL = "c0ffee-credential-77"
SECRET_VALUE = "pipeline-secret-0123456789"
ADMIN = Actor.system("tests")


def audit_text() -> str:
    return json.dumps(list(AuditEvent.objects.values("details")), default=str)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"https://hooks.example.com/in?token={CREDENTIAL}", "https://hooks.example.com/in?"),
        (f"https://bot:{CREDENTIAL}@hooks.example.com:8443/in", "hooks.example.com:8443/in"),
        ("https://hooks.example.com/plain", "https://hooks.example.com/plain"),
    ],
)
def test_mask_url_keeps_where_and_hides_credentials(url, shown):
    masked = mask_url(url)
    assert CREDENTIAL not in masked
    assert shown in masked


def test_mask_args_hides_option_values_and_url_credentials():
    args = ["-y", "server-pkg", "--api-key", CREDENTIAL, f"--token={CREDENTIAL}",
            f"https://x.example/?k={CREDENTIAL}", "--verbose", "./data"]  # fmt: skip
    masked = mask_args(args)
    assert CREDENTIAL not in json.dumps(masked)
    assert masked[:3] == ["-y", "server-pkg", "--api-key"]
    assert masked[3] == MASK
    assert masked[-2:] == ["--verbose", "./data"]


@pytest.mark.django_db
def test_a_webhook_urls_credentials_stay_out_of_the_audit_diff():
    agent, _ = make_agent()
    agent_update(agent_id=agent.pk, changes={"webhook_url":
                 f"https://u:{CREDENTIAL}@hooks.example.com/in?token={CREDENTIAL}"},
                 actor=ADMIN)  # fmt: skip
    [row] = AuditEvent.objects.filter(action="agent.updated", subject_id=str(agent.pk))
    after = row.details["changes"]["webhook_url"]["after"]
    assert CREDENTIAL not in after
    assert "hooks.example.com/in" in after


@pytest.mark.django_db
def test_an_mcp_servers_url_and_arguments_are_masked_in_the_audit_log():
    mcp_server_upsert(name="remote", url=f"https://mcp.example.com/mcp?key={CREDENTIAL}",
                      actor=ADMIN)  # fmt: skip
    mcp_server_upsert(name="local", command="npx", actor=ADMIN,
                      args=["-y", "pkg", "--api-key", CREDENTIAL])  # fmt: skip
    text = audit_text()
    assert CREDENTIAL not in text
    assert "mcp.example.com/mcp" in text
    assert "--api-key" in text


@pytest.mark.django_db
def test_a_failed_webhook_logs_its_url_masked(settings, caplog):
    settings.HTTP_TOOL_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.WEBHOOK_RETRY_WINDOW_SECONDS = 0
    from tests.test_webhooks import agent_with_webhook, finish_one_run

    # Port 9 (discard) is closed on loopback: the delivery fails, and for good.
    agent = agent_with_webhook(f"http://127.0.0.1:9/hook?token={CREDENTIAL}")
    finish_one_run(agent)
    with caplog.at_level(logging.WARNING):
        deliver_webhooks()
    assert WebhookDelivery.objects.get().status == "failed"
    assert "failed for good" in caplog.text
    assert CREDENTIAL not in caplog.text


@pytest.fixture
def emitted():
    """What the configured console handler writes, through its own filters and formatter."""
    console = next(h for h in logging.getLogger().handlers if h.get_name() == "console")
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(console.formatter)
    for attached in console.filters:
        handler.addFilter(attached)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)  # every line any logger would write at any level
    yield buffer
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.mark.django_db(transaction=True)
def test_a_pipeline_secret_reaches_no_record_and_no_log_line(settings, emitted):
    settings.HTTP_TOOL_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.PIPELINE_SECRETS = {"API_TOKEN": SECRET_VALUE}
    target = Target()
    # The service echoes what it was sent into a 500: the error message carries it.
    target.routes["/leak"] = lambda handler: send(
        handler, 500, json.dumps(dict(handler.headers)).encode()
    )
    agent, _ = make_agent(scopes=["tasks:write", "http", "secrets:api_token"])
    agent.webhook_url = "http://127.0.0.1:9/hook"
    agent.save(update_fields=["webhook_url"])
    payload = {"pipeline": [
        {"id": "echo", "uses": "debug.echo", "with": {"token": "${secrets.API_TOKEN}"}},
        {"id": "log", "uses": "debug.log", "with": {"message": "token ${secrets.API_TOKEN}"}},
        {"id": "call", "uses": "http.request", "with": {
            "url": f"{target.url}/leak?key=${{secrets.API_TOKEN}}",
            "headers": {"X-Token": "${secrets.API_TOKEN}"}}},
    ]}  # fmt: skip
    task = make_task(agent, payload=payload, max_retries=0)
    make_occurrence(task, at=timezone.now() - timedelta(seconds=1))
    try:
        Worker(concurrency=1, burst=True, poll_interval=0.1).run(threading.Event())
        deliver_webhooks()
    finally:
        target.stop()
        pipeline_threads_gone()
    # The secret did go out, to the service it was meant for.
    assert target.received[0]["headers"]["X-Token"] == SECRET_VALUE
    run = Run.objects.get(task=task)
    assert run.status == "failed"
    assert "answered 500" in run.error
    stored = {
        "run": json.dumps([run.output, run.steps, run.error], default=str),
        "audit": audit_text(),
        "outbox": json.dumps(list(OutboxMessage.objects.values("data")), default=str),
        "webhooks": json.dumps(list(WebhookDelivery.objects.values("payload")), default=str),
        # What the configured handlers wrote (httpx logs every request's URL, for one).
        "logs": emitted.getvalue(),
    }
    assert WebhookDelivery.objects.exists()
    assert "answered 500" in stored["logs"]
    for place, text in stored.items():
        assert SECRET_VALUE not in text, place
