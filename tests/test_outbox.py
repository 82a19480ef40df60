"""The outbox: lifecycle changes written with the change, relayed in order to a Redis stream."""

from __future__ import annotations

import threading
import uuid

import pytest
import redis
from django.conf import settings as django_settings

from audit.services import Actor
from ordinaut.errors import Conflict
from tasks import queue, services
from tasks.delivery import outbox
from tasks.models import OutboxMessage
from tasks.scheduler import Scheduler
from tests.factories import make_agent, make_occurrence, make_task

pytestmark = pytest.mark.django_db

ACTOR = Actor.system("tests")
PIPELINE = {"pipeline": [{"id": "hello", "uses": "debug.echo", "with": {"x": 1}}]}


@pytest.fixture
def stream(settings):
    """A fresh stream key for this test, and a client for the session's Redis."""
    settings.OUTBOX_STREAM = f"test:outbox:{uuid.uuid4().hex}"
    client = redis.Redis.from_url(django_settings.REDIS_URL, decode_responses=True)
    yield settings.OUTBOX_STREAM, client
    client.delete(settings.OUTBOX_STREAM)
    client.close()


def types(**filters):
    rows = OutboxMessage.objects.filter(**filters).order_by("id")
    return list(rows.values_list("type", flat=True))


def test_task_lifecycle_changes_write_outbox_messages_with_the_task_id():
    agent, _ = make_agent()
    task = services.task_create(
        created_by=agent, actor=ACTOR, title="t", schedule_kind="cron",
        schedule_expr="*/5 * * * *", payload=PIPELINE,
    )  # fmt: skip
    services.task_update(task_id=task.id, changes={"title": "u"}, actor=ACTOR)
    services.task_pause(task_id=task.id, actor=ACTOR)
    services.task_resume(task_id=task.id, actor=ACTOR)
    services.task_cancel(task_id=task.id, actor=ACTOR)
    assert types(task_id=task.id) == [
        "task.created", "task.updated", "task.paused", "task.resumed", "task.canceled",
    ]  # fmt: skip


def test_a_refused_change_writes_no_outbox_message():
    agent, _ = make_agent()
    task = make_task(agent, status="canceled")
    with pytest.raises(Conflict):
        services.task_resume(task_id=task.id, actor=ACTOR)
    assert not OutboxMessage.objects.exists()


def test_run_start_success_failure_and_dead_letter_are_in_the_outbox():
    task = make_task(make_agent()[0], max_retries=0)
    make_occurrence(task, at=make_occurrence_time(-5))
    make_occurrence(task, at=make_occurrence_time(-4))
    first, second = queue.claim("w1", 10)
    assert types(type="run.started") == ["run.started", "run.started"]
    assert set(OutboxMessage.objects.values_list("run_id", flat=True)) == {
        first.run_id, second.run_id,
    }  # fmt: skip
    outcome = {"max_retries": 0, "backoff_strategy": "fixed"}
    queue.finish("w1", [
        queue.Outcome(claimed=first, status="succeeded", **outcome),
        queue.Outcome(claimed=second, status="failed", error="boom", **outcome),
    ])  # fmt: skip
    assert types(run_id=first.run_id) == ["run.started", "run.succeeded"]
    assert types(run_id=second.run_id) == ["run.started", "run.failed", "run.dead"]
    assert set(OutboxMessage.objects.values_list("task_id", flat=True)) == {task.id}


def make_occurrence_time(seconds):
    from datetime import timedelta

    from django.utils import timezone

    return timezone.now() + timedelta(seconds=seconds)


def test_relay_publishes_in_id_order_with_ids_and_marks_sent(stream):
    key, client = stream
    agent, _ = make_agent()
    task = make_task(agent)
    for n in range(5):
        outbox.outbox_add(type=f"test.{n}", task_id=task.id, run_id=uuid.uuid4())
    ids = list(OutboxMessage.objects.order_by("id").values_list("id", flat=True))

    assert outbox.relay(outbox.redis_client(), batch=2) == 5

    entries = client.xrange(key)
    assert [int(fields["outbox_id"]) for _, fields in entries] == ids
    assert [fields["type"] for _, fields in entries] == [f"test.{n}" for n in range(5)]
    assert {fields["task_id"] for _, fields in entries} == {str(task.id)}
    assert all(fields["run_id"] for _, fields in entries)
    assert not OutboxMessage.objects.filter(sent_at__isnull=True).exists()
    assert outbox.relay(outbox.redis_client()) == 0
    assert client.xlen(key) == 5


def test_scheduler_tick_relays_the_outbox(stream):
    key, client = stream
    agent, _ = make_agent()
    services.task_create(
        created_by=agent, actor=ACTOR, title="t", schedule_kind="event",
        schedule_expr="a.*", payload=PIPELINE,
    )  # fmt: skip
    Scheduler(poll_interval=0.1).run(threading.Event(), once=True)
    assert [fields["type"] for _, fields in client.xrange(key)] == ["task.created"]


def test_redis_down_keeps_the_backlog_then_publishes_everything_in_order(stream, servers):
    key, client = stream
    task = make_task(make_agent()[0])
    scheduler = Scheduler(poll_interval=0.1)
    outbox.outbox_add(type="before", task_id=task.id)
    scheduler.run(threading.Event(), once=True)
    servers.REDIS.stop()
    try:
        for n in range(3):
            outbox.outbox_add(type=f"while-down.{n}", task_id=task.id)
        # Scheduling goes on; the relay logs and keeps the backlog.
        scheduler.run(threading.Event(), once=True)
        assert OutboxMessage.objects.filter(sent_at__isnull=True).count() == 3
    finally:
        servers.REDIS.start()
    outbox.outbox_add(type="after", task_id=task.id)
    scheduler.run(threading.Event(), once=True)
    published = [fields["type"] for _, fields in client.xrange(key)]
    # The embedded Redis has no persistence: what it held before the restart is gone, and
    # everything written since arrives, in order.
    assert published[-4:] == ["while-down.0", "while-down.1", "while-down.2", "after"]
    assert not OutboxMessage.objects.filter(sent_at__isnull=True).exists()


# -- retention --------------------------------------------------------------------------------


def test_prune_deletes_only_published_messages_past_retention(settings):
    from datetime import timedelta

    from django.utils import timezone

    settings.OUTBOX_RETENTION_SECONDS = 3600
    now = timezone.now()
    old, recent = now - timedelta(hours=2), now - timedelta(minutes=5)

    def message(type_: str, *, created: object, sent: object, webhooked: object = None) -> int:
        return OutboxMessage.objects.create(
            type=type_, created_at=created, sent_at=sent, webhooked_at=webhooked
        ).id

    gone = message("task.created", created=old, sent=old)
    gone_outcome = message("run.succeeded", created=old, sent=old, webhooked=old)
    kept = {
        "unsent": message("task.created", created=old, sent=None),
        "recently sent": message("task.created", created=old, sent=recent),
        "recent": message("task.created", created=recent, sent=recent),
        "webhooks pending": message("run.failed", created=old, sent=old),
    }
    assert outbox.outbox_prune(now=now) == 2
    remaining = set(OutboxMessage.objects.values_list("id", flat=True))
    assert remaining == set(kept.values())
    assert not remaining & {gone, gone_outcome}
    assert outbox.outbox_prune(now=now) == 0


def test_scheduler_housekeeping_prunes_outbox_and_dead_revocations(settings):
    from datetime import timedelta

    from django.utils import timezone

    from agents.models import RevokedToken

    settings.OUTBOX_RETENTION_SECONDS = 60
    agent = make_agent()[0]
    long_ago = timezone.now() - timedelta(days=2)
    OutboxMessage.objects.create(type="task.created", created_at=long_ago, sent_at=long_ago)
    RevokedToken.objects.create(
        jti="expired", agent=agent, token_type="access", expires_at=long_ago
    )
    RevokedToken.objects.create(
        jti="live", agent=agent, token_type="refresh", expires_at=timezone.now() + timedelta(days=1)
    )
    Scheduler().housekeeping()
    assert not OutboxMessage.objects.filter(created_at=long_ago).exists()
    assert list(RevokedToken.objects.values_list("jti", flat=True)) == ["live"]
