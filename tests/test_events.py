"""Events in: POST /events fans out to matching event and condition tasks, idempotently."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone
from mcp import Client

from agents.mcp_server import build_server
from audit.models import AuditEvent
from audit.services import Actor
from tasks import events
from tasks.models import Event, Occurrence, Run, RunStatus
from tasks.worker import Worker
from tests.api_support import (  # noqa: F401 (fixtures)
    agent_with_key,
    api_fixture,
    assert_error,
    fresh_throttles,
)
from tests.factories import make_agent, make_task

pytestmark = pytest.mark.django_db

SCOPES = ["tasks:read", "tasks:write", "runs:read", "events:publish"]


@pytest.fixture
def publisher(api):
    agent, key = agent_with_key(SCOPES)
    return agent, api.as_(key)


def event_task(agent, pattern, **fields):
    return make_task(agent, schedule_kind="event", schedule_expr=pattern, **fields)


def condition_task(agent, expression, **fields):
    return make_task(agent, schedule_kind="condition", schedule_expr=expression, **fields)


def test_event_fans_out_to_matching_tasks_only(publisher):
    agent, api = publisher
    exact = event_task(agent, "orders.paid")
    glob = event_task(agent, "orders.*")
    event_task(agent, "orders.refunded")
    event_task(agent, "orders.*", status="paused")
    big = condition_task(agent, "payload.amount > `100`")
    condition_task(agent, "payload.amount > `1000`")
    make_task(agent)  # a cron task never reacts to events

    response = api.post("/events", {"topic": "orders.paid", "payload": {"amount": 250}})

    assert response.status_code == 202, response.content
    body = response.json()
    assert body["success"] is True
    details = body["details"]
    assert set(details) == {"event_id", "topic", "triggered_tasks", "published_at"}
    assert (details["topic"], details["triggered_tasks"]) == ("orders.paid", 3)
    event = Event.objects.get()
    assert str(event.id) == details["event_id"]
    assert event.source_agent == agent
    queued = Occurrence.objects.filter(event=event)
    assert {o.task_id for o in queued} == {exact.id, glob.id, big.id}
    assert {(o.trigger, o.state, o.scheduled_for) for o in queued} == {
        ("event", "queued", event.published_at)
    }
    assert AuditEvent.objects.filter(action="event.published", subject_id=str(event.id)).exists()


def test_topic_no_task_listens_to_is_accepted(publisher):
    _, api = publisher
    response = api.post("/events", {"topic": "nobody.cares", "payload": {}})
    assert response.status_code == 202
    assert response.json()["details"]["triggered_tasks"] == 0
    assert Event.objects.count() == 1
    assert not Occurrence.objects.exists()


def test_same_idempotency_key_answers_the_first_response_and_stores_nothing(publisher):
    agent, api = publisher
    event_task(agent, "deploys.*")
    body = {"topic": "deploys.done", "payload": {"v": 1}, "idempotency_key": "deploy-1"}
    first = api.post("/events", body)
    again = api.post("/events", {**body, "payload": {"v": 2}})
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["details"] == first.json()["details"]
    assert Event.objects.count() == 1
    assert Occurrence.objects.count() == 1


def test_idempotency_keys_belong_to_their_source_agent(publisher, api):
    _, first_api = publisher
    _, other_key = agent_with_key(SCOPES)
    body = {"topic": "a.b", "payload": {}, "idempotency_key": "k"}
    assert first_api.post("/events", body).status_code == 202
    assert api.as_(other_key).post("/events", body).status_code == 202
    assert Event.objects.count() == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"topic": "orders.*", "payload": {}}, "topic"),
        ({"topic": "", "payload": {}}, "topic"),
        ({"topic": "x" * 101, "payload": {}}, "topic"),
        ({"topic": "has space", "payload": {}}, "topic"),
        ({"topic": "a.b", "payload": [1, 2]}, "payload"),
        ({"topic": "a.b", "payload": {"s": "nul\x00"}}, "payload"),
        ({"topic": "a.b", "payload": {}, "colour": "red"}, "colour"),
    ],
)
def test_bad_events_are_422_naming_the_field_and_store_nothing(publisher, body, field):
    agent, api = publisher
    event_task(agent, "*")
    error = assert_error(api.post("/events", body), 422, "validation_error")
    assert field in str(error["details"]) or field in error["message"]
    assert not Event.objects.exists()
    assert not Occurrence.objects.exists()


def test_oversized_payload_is_refused_with_the_limit(publisher, settings):
    settings.EVENT_MAX_PAYLOAD_BYTES = 1024
    _, api = publisher
    error = assert_error(api.post("/events", {"topic": "a.b", "payload": {"x": "y" * 2000}}), 422)
    assert "1024" in error["message"]
    assert not Event.objects.exists()


def test_malformed_json_is_400(publisher):
    _, api = publisher
    assert_error(api.post("/events", '{"topic": "a.b", '), 400, "parse_error")
    assert not Event.objects.exists()


def test_publishing_needs_the_events_publish_scope(api):
    _, key = agent_with_key(["tasks:read", "tasks:write"])
    assert_error(api.as_(key).post("/events", {"topic": "a.b", "payload": {}}), 403)
    assert not Event.objects.exists()


def test_source_agent_id_must_be_the_caller(publisher):
    _, api = publisher
    other, _ = make_agent()
    body = {"topic": "a.b", "payload": {}, "source_agent_id": str(other.id)}
    assert_error(api.post("/events", body), 403, "forbidden")


def test_two_events_in_the_same_microsecond_both_enqueue():
    agent, _ = make_agent()
    task = event_task(agent, "tick")
    at = timezone.now()
    for _ in range(3):
        events.event_publish(
            topic="tick", payload={}, source=agent, granted=SCOPES, actor=Actor.system("t"), now=at
        )
    instants = sorted(Occurrence.objects.filter(task=task).values_list("scheduled_for", flat=True))
    assert instants == [at, at + timedelta(microseconds=1), at + timedelta(microseconds=2)]


def test_mcp_publish_event_calls_the_service():
    agent, _ = make_agent(scopes=["events:publish"])
    task = event_task(agent, "mcp.*")
    from tests.api_support import api_key_for

    key = api_key_for(agent)

    async def scenario():
        async with Client(build_server(stdio_token=key)) as client:
            return await client.call_tool(
                "publish_event", {"topic": "mcp.hello", "payload": {"n": 1}}
            )

    result = async_to_sync(scenario)()
    assert not result.is_error, result.content
    event = Event.objects.get()
    assert (event.topic, event.source_agent) == ("mcp.hello", agent)
    assert Occurrence.objects.get().task_id == task.id


@pytest.mark.django_db(transaction=True)
def test_the_pipeline_reads_the_triggering_event():
    agent, _ = make_agent()
    task = event_task(
        agent,
        "orders.paid",
        payload={
            "pipeline": [
                {
                    "id": "seen",
                    "uses": "debug.echo",
                    "with": {"topic": "${event.topic}", "order": "${event.payload.order_id}"},
                }
            ]
        },
    )
    event, _ = events.event_publish(
        topic="orders.paid",
        payload={"order_id": 42},
        source=agent,
        granted=SCOPES,
        actor=Actor.system("t"),
    )
    Worker(concurrency=1, burst=True, poll_interval=0.2).run(threading.Event())
    run = Run.objects.get(task=task)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.trigger == "event"
    assert run.output["steps"]["seen"] == {"topic": "orders.paid", "order": 42}
    assert not Occurrence.objects.filter(event=event).exists()
