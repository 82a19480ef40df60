"""Events reach only where they are allowed: two real agents over REST, MCP and the stream.

An event triggers a task when the topic matches and the task's agent is the publisher, or
holds `events:subscribe:<glob>` matching the topic, or `admin`. Publishing needs
`events:publish` or a matching `events:publish:<glob>`.
"""

from __future__ import annotations

import json
import uuid

import pytest
from asgiref.sync import async_to_sync
from mcp import Client

from agents.mcp_server import build_server
from audit.models import AuditEvent
from tasks.delivery import streams
from tasks.models import Event, Occurrence
from tests.api_support import (  # noqa: F401 (fixtures)
    agent_with_key,
    api_fixture,
    assert_error,
    fresh_throttles,
    task_body,
)
from tests.test_streams import inbound  # noqa: F401 (fixture)

pytestmark = pytest.mark.django_db

BASE = ["tasks:read", "tasks:write", "runs:read"]


def event_task(client, pattern, kind="event"):
    response = client.post("/tasks", task_body(schedule_kind=kind, schedule_expr=pattern))
    assert response.status_code == 201, response.content
    return response.json()["id"]


def queued(task_id) -> int:
    return Occurrence.objects.filter(task_id=task_id).count()


@pytest.fixture
def two_agents(api):
    """A publisher and a second agent with tasks of its own, and an admin to change scopes."""
    alice, alice_key = agent_with_key([*BASE, "events:publish"])
    bob, bob_key = agent_with_key([*BASE, "events:publish"])
    _, admin_key = agent_with_key(["admin"])
    return (alice, api.as_(alice_key)), (bob, api.as_(bob_key)), api.as_(admin_key)


def test_another_agents_event_triggers_nothing_until_it_subscribes(two_agents):
    (_, alice_api), (bob, bob_api), admin_api = two_agents
    alices = event_task(alice_api, "orders.*")
    bobs = event_task(bob_api, "orders.*")
    bobs_everything = event_task(bob_api, "*")
    bobs_condition = event_task(bob_api, "payload.amount > `10`", kind="condition")

    first = alice_api.post("/events", {"topic": "orders.paid", "payload": {"amount": 99}})
    assert first.status_code == 202, first.content
    assert first.json()["details"]["triggered_tasks"] == 1  # her own
    assert (queued(alices), queued(bobs), queued(bobs_everything), queued(bobs_condition)) == (
        1, 0, 0, 0,
    )  # fmt: skip

    granted = admin_api.patch(f"/agents/{bob.id}", {"scopes": [*BASE, "events:subscribe:orders.*"]})
    assert granted.status_code == 200, granted.content

    second = alice_api.post("/events", {"topic": "orders.paid", "payload": {"amount": 99}})
    assert second.status_code == 202
    # Bob's tasks fired, but Alice is not told about them.
    assert second.json()["details"]["triggered_tasks"] == 1
    assert Event.objects.get(pk=second.json()["details"]["event_id"]).triggered_tasks == 4
    assert (queued(alices), queued(bobs), queued(bobs_everything), queued(bobs_condition)) == (
        2, 1, 1, 1,
    )  # fmt: skip

    # The subscription covers its glob only.
    other = alice_api.post("/events", {"topic": "invoices.sent", "payload": {"amount": 99}})
    assert other.status_code == 202
    assert (queued(bobs_everything), queued(bobs_condition)) == (1, 1)


def test_an_agents_own_events_need_no_subscription(two_agents):
    _, (_, bob_api), _ = two_agents
    bobs = event_task(bob_api, "self.*")
    response = bob_api.post("/events", {"topic": "self.note", "payload": {}})
    assert response.json()["details"]["triggered_tasks"] == 1
    assert queued(bobs) == 1


def test_an_admin_agents_tasks_receive_every_event(api, two_agents):
    (_, alice_api), _, _ = two_agents
    _, key = agent_with_key(["admin"])
    watcher = event_task(api.as_(key), "*")
    alice_api.post("/events", {"topic": "anything.at.all", "payload": {}})
    assert queued(watcher) == 1


def test_a_publish_glob_allows_matching_topics_only(api):
    _, key = agent_with_key([*BASE, "events:publish:orders.*"])
    client = api.as_(key)
    assert client.post("/events", {"topic": "orders.paid", "payload": {}}).status_code == 202
    error = assert_error(client.post("/events", {"topic": "billing.run", "payload": {}}), 403)
    assert "billing.run" in error["message"]
    assert "topic" in error["details"]
    assert list(Event.objects.values_list("topic", flat=True)) == ["orders.paid"]


def test_publishing_without_any_publish_scope_is_403(api):
    _, key = agent_with_key(BASE)
    error = assert_error(api.as_(key).post("/events", {"topic": "x", "payload": {}}), 403)
    assert "events:publish" in error["message"]
    assert not Event.objects.exists()


def test_a_deactivated_agents_event_task_is_not_triggered(two_agents):
    (_, alice_api), (bob, bob_api), admin_api = two_agents
    admin_api.patch(f"/agents/{bob.id}", {"scopes": [*BASE, "events:subscribe:*"]})
    bobs = event_task(bob_api, "orders.*")
    assert admin_api.delete(f"/agents/{bob.id}").status_code in (200, 204)
    alice_api.post("/events", {"topic": "orders.paid", "payload": {}})
    assert queued(bobs) == 0


@pytest.mark.parametrize("scope", ["events:subscribe:", "events:publish:", " events:subscribe: "])
def test_an_empty_topic_glob_is_a_422_naming_scopes(api, scope):
    _, key = agent_with_key(["admin"])
    error = assert_error(
        api.as_(key).post("/agents", {"name": f"glob-{uuid.uuid4().hex[:8]}", "scopes": [scope]}),
        422,
    )
    assert "scopes" in error["details"]


def test_a_scope_that_is_not_a_string_is_a_422(api):
    _, key = agent_with_key(["admin"])
    error = assert_error(api.as_(key).post("/agents", {"name": "n", "scopes": [1]}), 422)
    assert "scopes" in error["details"]


def mcp_publish(key: str, topic: str):
    async def scenario():
        async with Client(build_server(stdio_token=key)) as client:
            return await client.call_tool("publish_event", {"topic": topic, "payload": {}})

    return async_to_sync(scenario)()


def test_over_mcp_the_same_rules_hold(api):
    from tests.api_support import api_key_for

    narrow, narrow_key = agent_with_key([*BASE, "events:publish:orders.*"])
    _, bob_key = agent_with_key(BASE)
    bobs = event_task(api.as_(bob_key), "orders.*")
    own = event_task(api.as_(narrow_key), "orders.*")

    result = mcp_publish(api_key_for(narrow), "orders.paid")
    assert not result.is_error, result.content
    assert result.structured_content["triggered_tasks"] == 1
    assert (queued(own), queued(bobs)) == (1, 0)

    refused = mcp_publish(api_key_for(narrow), "billing.run")
    assert refused.is_error
    assert "billing.run" in refused.content[0].text
    assert Event.objects.count() == 1


def stream_entry(agent_id, topic="orders.paid"):
    return {"topic": topic, "payload": json.dumps({}), "source_agent_id": str(agent_id)}


def test_the_inbound_stream_follows_the_same_rule(inbound, api):  # noqa: F811
    key, client = inbound
    alice, _ = agent_with_key([*BASE, "events:publish:orders.*"])
    _, bob_key = agent_with_key(BASE)
    bobs = event_task(api.as_(bob_key), "*")
    client.xadd(key, stream_entry(alice.id))
    client.xadd(key, stream_entry(alice.id, topic="billing.run"))
    stranger = uuid.uuid4()
    client.xadd(key, stream_entry(stranger))

    result = streams.consume(client, consumer="c1")

    assert (result.stored, result.rejected) == (1, 2)
    assert client.xpending(key, streams.group_name())["pending"] == 0
    assert queued(bobs) == 0
    rejected = AuditEvent.objects.filter(action="event.rejected").order_by("at")
    reasons = {r.details["source_agent_id"]: r.details["reason"] for r in rejected}
    assert "billing.run" in reasons[str(alice.id)]
    assert "no active agent" in reasons[str(stranger)]
