"""Webhooks: run outcomes POSTed, signed, to a real HTTP receiver on a loopback port."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import connections
from django.utils import timezone

from tasks import queue
from tasks.delivery.webhooks import deliver_webhooks
from tasks.models import WEBHOOK_EVENT_TYPES, OutboxMessage, WebhookAttempt, WebhookDelivery
from tasks.scheduler import Scheduler
from tests.factories import make_agent, make_occurrence, make_task

pytestmark = pytest.mark.django_db

SECRET = "whsec-test-secret"


def verify(secret: str, headers: dict[str, str], raw_body: bytes, tolerance: int = 300) -> bool:
    """The receiver's recipe, exactly as docs/events.md documents it."""
    timestamp = headers["X-Ordinaut-Timestamp"]
    signature = headers["X-Ordinaut-Signature"]
    if abs(time.time() - int(timestamp)) > tolerance:
        return False  # too old (or from the future): a replay
    expected = hmac.new(
        secret.encode(), timestamp.encode() + b"." + raw_body, hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(signature, f"v1={expected}")


class Receiver:
    """A webhook receiver on 127.0.0.1 answering scripted statuses (then 200)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/ordinaut"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(settings):
    settings.HTTP_TOOL_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.WEBHOOK_SIGNING_SECRET = SECRET
    made: list[Receiver] = []

    def make(statuses: list[int] | None = None) -> Receiver:
        made.append(Receiver(statuses or []))
        return made[-1]

    yield make
    for each in made:
        each.close()


def agent_with_webhook(url: str):
    agent, _ = make_agent()
    agent.webhook_url = url
    agent.save(update_fields=["webhook_url"])
    return agent


def finish_one_run(agent, status: str = "succeeded", **outcome):
    """Claim one occurrence of a fresh task of `agent` and finish it with `status`."""
    task = make_task(agent, max_retries=0)
    make_occurrence(task, at=timezone.now() - timedelta(seconds=5))
    (claimed,) = queue.claim(f"w-{task.id}", 1)
    queue.finish(
        f"w-{task.id}",
        [
            queue.Outcome(
                claimed=claimed, status=status, max_retries=0, backoff_strategy="fixed", **outcome
            )
        ],
    )
    return task, claimed.run_id


def test_run_outcome_is_posted_with_a_signature_the_documented_recipe_verifies(receiver):
    hook = receiver()
    agent = agent_with_webhook(hook.url)
    task, run_id = finish_one_run(agent, output={"summary": "all good"})

    result = deliver_webhooks()

    assert (result.created, result.delivered) == (1, 1)
    ((headers, body),) = hook.requests
    assert verify(SECRET, headers, body)
    assert not verify("another-secret", headers, body)
    assert not verify(SECRET, headers, body.replace(b"all good", b"all bad"))
    document = json.loads(body)
    assert document["type"] == "run.succeeded"
    assert document["run_id"] == str(run_id)
    assert document["task_id"] == str(task.id)
    assert document["status"] == "succeeded"
    assert document["finished_at"]
    assert document["output"] == {"summary": "all good"}
    assert headers["X-Ordinaut-Event"] == "run.succeeded"
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 200)
    assert delivery.delivered_at is not None


def test_failed_run_posts_its_error_and_the_dead_letter(receiver):
    hook = receiver()
    agent = agent_with_webhook(hook.url)
    _, run_id = finish_one_run(agent, status="failed", error="boom: upstream said no")

    deliver_webhooks()

    documents = [json.loads(body) for _, body in hook.requests]
    assert sorted(d["type"] for d in documents) == ["run.dead", "run.failed"]
    assert {d["run_id"] for d in documents} == {str(run_id)}
    assert {d["error"] for d in documents} == {"boom: upstream said no"}


def test_500_then_200_is_retried_with_backoff_then_delivered_with_both_attempts_recorded(
    receiver,
):
    hook = receiver([500])
    agent = agent_with_webhook(hook.url)
    finish_one_run(agent)
    now = timezone.now()

    deliver_webhooks(now=now)
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("pending", 1, 500)
    assert delivery.next_attempt_at > now

    deliver_webhooks(now=now + timedelta(seconds=5))  # still backing off: nothing sent
    assert len(hook.requests) == 1

    deliver_webhooks(now=delivery.next_attempt_at)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 2, 200)
    attempts = list(WebhookAttempt.objects.filter(delivery=delivery).order_by("number"))
    assert [(a.number, a.status_code) for a in attempts] == [(1, 500), (2, 200)]
    assert attempts[0].error == "HTTP 500"
    first, second = (json.loads(body) for _, body in hook.requests)
    assert first == second  # the same delivery: receivers de-duplicate on "id"


def test_delivery_fails_once_the_retry_window_is_over(receiver, settings):
    settings.WEBHOOK_RETRY_WINDOW_SECONDS = 30
    hook = receiver([500, 500, 500])
    finish_one_run(agent_with_webhook(hook.url))
    now = timezone.now()

    deliver_webhooks(now=now)  # attempt 1, next in 10 s
    deliver_webhooks(now=now + timedelta(seconds=11))  # attempt 2, next in 20 s: past 30 s

    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("failed", 2)
    deliver_webhooks(now=now + timedelta(days=1))
    assert len(hook.requests) == 2


def test_agent_without_webhook_url_gets_nothing(receiver):
    hook = receiver()
    with_hook = agent_with_webhook(hook.url)
    without_hook, _ = make_agent()
    task_with, _ = finish_one_run(with_hook)
    finish_one_run(without_hook)

    deliver_webhooks()

    assert [json.loads(body)["task_id"] for _, body in hook.requests] == [str(task_with.id)]
    assert list(WebhookDelivery.objects.values_list("agent", flat=True)) == [with_hook.id]
    # Every run outcome was looked at once, with or without a delivery.
    unhandled = OutboxMessage.objects.filter(type__in=WEBHOOK_EVENT_TYPES, webhooked_at=None)
    assert not unhandled.exists()
    assert OutboxMessage.objects.filter(type="run.succeeded").count() == 2
    assert deliver_webhooks().created == 0


def test_private_target_not_allow_listed_is_refused_without_a_request(receiver, settings):
    hook = receiver()
    settings.HTTP_TOOL_ALLOWED_HOSTS = []
    finish_one_run(agent_with_webhook(hook.url))

    deliver_webhooks()

    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "failed"
    assert "127.0.0.1 is not a public address" in delivery.last_error
    assert hook.requests == []


def test_scheduler_tick_delivers_webhooks(receiver):
    hook = receiver()
    finish_one_run(agent_with_webhook(hook.url))

    Scheduler(poll_interval=0.1).run(threading.Event(), once=True)

    assert len(hook.requests) == 1
    assert WebhookDelivery.objects.get().status == "delivered"


def test_webhook_errors_do_not_stop_the_scheduler(receiver, settings):
    hook = receiver()
    finish_one_run(agent_with_webhook(hook.url))
    settings.WEBHOOK_CONCURRENCY = "not a number"  # the send step raises

    Scheduler(poll_interval=0.1).run(threading.Event(), once=True)  # does not raise

    assert hook.requests == []
    assert WebhookDelivery.objects.get().status == "pending"


@pytest.mark.django_db(transaction=True)
def test_concurrent_schedulers_fan_out_and_post_each_outcome_once(receiver, settings):
    settings.WEBHOOK_FANOUT_BATCH = 5
    settings.WEBHOOK_CONCURRENCY = 2
    hook = receiver()
    agent = agent_with_webhook(hook.url)
    task = make_task(agent, max_retries=0)
    for n in range(30):
        make_occurrence(task, at=timezone.now() - timedelta(seconds=n + 1))
    claimed = queue.claim("w1", 30)
    queue.finish(
        "w1",
        [queue.Outcome(claimed=c, status="succeeded", backoff_strategy="fixed") for c in claimed],
    )
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def scheduler() -> None:
        barrier.wait()
        try:
            for _ in range(10):
                deliver_webhooks()
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=scheduler) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    ids = [json.loads(body)["id"] for _, body in hook.requests]
    assert len(ids) == len(set(ids)) == 30
    assert WebhookDelivery.objects.filter(status="delivered").count() == 30
    assert WebhookAttempt.objects.count() == 30


def test_each_attempt_is_visible_read_only_in_the_admin(receiver, admin_client):
    hook = receiver([503])
    finish_one_run(agent_with_webhook(hook.url))
    now = timezone.now()
    deliver_webhooks(now=now)
    deliver_webhooks(now=now + timedelta(seconds=11))
    delivery = WebhookDelivery.objects.get()

    page = admin_client.get(f"/admin/tasks/webhookdelivery/{delivery.pk}/change/")

    assert page.status_code == 200
    html = page.content.decode()
    assert "HTTP 503" in html
    assert ">503<" in html
    assert ">200<" in html
    assert admin_client.get("/admin/tasks/webhookattempt/").status_code == 200
    assert admin_client.get("/admin/tasks/webhookdelivery/add/").status_code == 403
