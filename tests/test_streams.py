"""The inbound stream: entries become Events through a consumer group, acked after commit."""

from __future__ import annotations

import json
import logging
import threading
import uuid

import pytest
import redis
from django.conf import settings as django_settings
from django.db import connections

from audit.services import Actor
from tasks import services
from tasks.delivery import streams
from tasks.models import Event, Occurrence
from tasks.scheduler import Scheduler
from tests.factories import make_agent

pytestmark = pytest.mark.django_db

ACTOR = Actor.system("tests")
PIPELINE = {"pipeline": [{"id": "hello", "uses": "debug.echo", "with": {"x": 1}}]}


@pytest.fixture
def inbound(settings):
    """A fresh inbound stream key for this test, and a client for the session's Redis."""
    settings.INBOUND_EVENT_STREAM = f"test:in:{uuid.uuid4().hex}"
    client = redis.Redis.from_url(django_settings.REDIS_URL, decode_responses=True)
    yield settings.INBOUND_EVENT_STREAM, client
    client.delete(settings.INBOUND_EVENT_STREAM)
    client.close()


@pytest.fixture
def publisher():
    agent, _ = make_agent(scopes=["events:publish", "tasks:write"])
    return agent


def entry(agent, topic="orders.paid", payload=None, key=None) -> dict[str, str]:
    fields = {
        "topic": topic,
        "payload": json.dumps(payload if payload is not None else {"order": 42}),
        "source_agent_id": str(agent.id),
    }
    if key:
        fields["idempotency_key"] = key
    return fields


def event_task(agent, pattern="orders.*"):
    return services.task_create(
        created_by=agent, actor=ACTOR, title=f"on {pattern}", schedule_kind="event",
        schedule_expr=pattern, payload=PIPELINE,
    )  # fmt: skip


def pending(client, key) -> int:
    return client.xpending(key, streams.group_name())["pending"]


def test_entry_becomes_an_event_and_triggers_the_matching_task(inbound, publisher):
    key, client = inbound
    matching = event_task(publisher, "orders.*")
    event_task(publisher, "invoices.*")
    client.xadd(key, entry(publisher, payload={"order": 7}))

    result = streams.consume(client, consumer="c1")

    assert (result.stored, result.rejected) == (1, 0)
    event = Event.objects.get()
    assert (event.topic, event.payload, event.source_agent_id) == (
        "orders.paid", {"order": 7}, publisher.id,
    )  # fmt: skip
    assert list(Occurrence.objects.values_list("task_id", "event_id")) == [(matching.id, event.id)]
    assert pending(client, key) == 0


def test_scheduler_tick_reads_the_inbound_stream(inbound, publisher):
    key, client = inbound
    client.xadd(key, entry(publisher, key="tick-1"))

    Scheduler(poll_interval=0.1).run(threading.Event(), once=True)

    assert Event.objects.get().idempotency_key == "tick-1"


def test_entry_read_by_a_crashed_consumer_is_reclaimed_and_stored_once(inbound, publisher):
    key, client = inbound
    streams.ensure_group(client)
    client.xadd(key, entry(publisher, key="order-42"))
    # The crash: another consumer reads the entry and dies before storing or acking it.
    read = client.xreadgroup(streams.group_name(), "crashed", {key: ">"}, count=10)
    assert len(read[0][1]) == 1

    # Not idle long enough yet: the entry stays with the crashed consumer.
    assert streams.consume(client, consumer="c1", claim_idle_seconds=60).stored == 0
    result = streams.consume(client, consumer="c1", claim_idle_seconds=0)

    assert (result.stored, result.reclaimed) == (1, 1)
    assert streams.consume(client, consumer="c1", claim_idle_seconds=0).stored == 0
    assert Event.objects.filter(idempotency_key="order-42").count() == 1
    assert pending(client, key) == 0


def test_entry_stored_but_not_acked_before_a_crash_is_not_stored_twice(inbound, publisher):
    key, client = inbound
    streams.ensure_group(client)
    client.xadd(key, entry(publisher, key="order-43"))
    ((_, ((_, fields),)),) = client.xreadgroup(streams.group_name(), "crashed", {key: ">"})
    streams.store_entry(fields)  # committed; the consumer dies before XACK

    result = streams.consume(client, consumer="c1", claim_idle_seconds=0)

    assert (result.stored, result.duplicates) == (0, 1)
    assert Event.objects.filter(idempotency_key="order-43").count() == 1
    assert pending(client, key) == 0


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"topic": "orders.paid", "payload": "{}"}, "no source agent"),
        ({"topic": "orders.paid", "source_agent_id": str(uuid.uuid4())}, "unknown agent"),
        ({"topic": "orders paid!", "source_agent_id": "AGENT"}, "malformed topic"),
        ({"topic": "orders.paid", "payload": "{nope", "source_agent_id": "AGENT"}, "bad JSON"),
        ({"topic": "orders.paid", "payload": "[1]", "source_agent_id": "AGENT"}, "not object"),
        (
            {"topic": "orders.paid", "payload": '{"a": "\\u0000"}', "source_agent_id": "AGENT"},
            "NUL character PostgreSQL refuses",
        ),
    ],
)
def test_invalid_entry_is_acknowledged_as_rejected_and_not_retried(
    inbound, publisher, fields, reason
):
    key, client = inbound
    fields = {k: (str(publisher.id) if v == "AGENT" else v) for k, v in fields.items()}
    client.xadd(key, fields)

    result = streams.consume(client, consumer="c1", claim_idle_seconds=0)

    assert result.rejected == 1, reason
    assert not Event.objects.exists()
    assert pending(client, key) == 0
    assert streams.consume(client, consumer="c1", claim_idle_seconds=0).rejected == 0


def test_agent_without_publish_scope_is_rejected(inbound):
    key, client = inbound
    reader, _ = make_agent(scopes=["tasks:read"])
    client.xadd(key, entry(reader))

    assert streams.consume(client, consumer="c1").rejected == 1
    assert not Event.objects.exists()


def test_lost_group_is_recreated(inbound, publisher):
    key, client = inbound
    client.xadd(key, entry(publisher, key="before"))
    streams.consume(client, consumer="c1")
    # What Redis restarted without persistence looks like: the group (and stream) is gone.
    client.delete(key)
    client.xadd(key, entry(publisher, key="after"))
    assert client.xinfo_groups(key) == []

    result = streams.consume(client, consumer="c1")

    assert result.stored == 1
    assert [g["name"] for g in client.xinfo_groups(key)] == [streams.group_name()]
    assert set(Event.objects.values_list("idempotency_key", flat=True)) == {"before", "after"}


def test_a_fresh_install_creates_the_group_without_a_warning(inbound, caplog):
    key, client = inbound
    assert not client.exists(key)

    with caplog.at_level("INFO", logger="tasks.delivery.streams"):
        result = streams.consume(client, consumer="c1")

    assert result.stored == 0
    assert [g["name"] for g in client.xinfo_groups(key)] == [streams.group_name()]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("creating group" in r.getMessage() for r in caplog.records)


def test_a_group_missing_beside_entries_is_a_warning(inbound, publisher, caplog):
    key, client = inbound
    client.xadd(key, entry(publisher, key="orphan"))

    with caplog.at_level("INFO", logger="tasks.delivery.streams"):
        assert streams.consume(client, consumer="c1").stored == 1

    assert [r.levelname for r in caplog.records if "recreating" in r.getMessage()] == ["WARNING"]


def test_destroyed_group_is_recreated_and_idempotency_keys_stop_duplicates(inbound, publisher):
    key, client = inbound
    client.xadd(key, entry(publisher, key="one"))
    streams.consume(client, consumer="c1")
    client.xgroup_destroy(key, streams.group_name())
    client.xadd(key, entry(publisher, key="two"))

    result = streams.consume(client, consumer="c1")

    # Recreated from the stream's start: "one" comes again and is recognised.
    assert (result.stored, result.duplicates) == (1, 1)
    assert Event.objects.count() == 2
    assert pending(client, key) == 0


@pytest.mark.django_db(transaction=True)
def test_concurrent_consumers_store_each_entry_once(inbound, publisher):
    key, client = inbound
    streams.ensure_group(client)
    for n in range(60):
        client.xadd(key, entry(publisher, payload={"n": n}))  # no idempotency key
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def consumer(name: str) -> None:
        own = redis.Redis.from_url(django_settings.REDIS_URL)
        barrier.wait()
        try:
            while streams.consume(own, consumer=name, count=7).stored:
                pass
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            own.close()
            connections.close_all()

    threads = [threading.Thread(target=consumer, args=(f"c{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sorted(e.payload["n"] for e in Event.objects.all()) == list(range(60))
    assert pending(client, key) == 0
