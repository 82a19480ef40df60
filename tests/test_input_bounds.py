"""Every number that reaches a timedelta, a float or SQL has a maximum: beyond it, a 422
naming the field at create or update time (issue: no input can crash a worker)."""

from __future__ import annotations

import pytest

from tasks.models import Task
from tests.api_support import (  # noqa: F401 (fixtures)
    agent_with_key,
    api_fixture,
    assert_error,
    fresh_throttles,
    task_body,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def client_(api):
    _, key = agent_with_key()
    return api.as_(key)


def one_step(uses: str, **with_: object) -> dict:
    return {"pipeline": [{"id": "s", "uses": uses, "with": with_}]}


@pytest.mark.parametrize(
    ("field", "value", "maximum"),
    [
        ("max_retries", 21, 20),
        ("timeout_seconds", 24 * 3600 + 1, 24 * 3600),
        ("dedupe_window_seconds", 30 * 86400 + 1, 30 * 86400),
        ("timeout_seconds", 10**400, 24 * 3600),
    ],
)
def test_a_task_field_past_its_maximum_is_a_422_naming_it(client_, field, value, maximum):
    body = task_body(**{field: 0})
    raw = json_with(body, field, value)
    error = assert_error(client_.post("/tasks", raw), 422, "validation_error")
    assert field in error["details"], error
    assert str(maximum) in " ".join(error["details"][field]), error
    assert not Task.objects.exists()


def test_the_maximum_itself_is_accepted(client_):
    response = client_.post(
        "/tasks", task_body(max_retries=20, timeout_seconds=86400, dedupe_window_seconds=2592000)
    )
    assert response.status_code == 201, response.content


def test_an_update_past_a_maximum_is_a_422_and_changes_nothing(client_):
    created = client_.post("/tasks", task_body()).json()
    error = assert_error(client_.patch(f"/tasks/{created['id']}", {"max_retries": 50}), 422)
    assert "max_retries" in error["details"]
    assert Task.objects.get(pk=created["id"]).max_retries == 3


@pytest.mark.parametrize(
    ("payload", "path", "maximum"),
    [
        (one_step("debug.sleep", seconds=301), "payload.pipeline[0].with.seconds", "300"),
        (one_step("debug.sleep", seconds=1e308), "payload.pipeline[0].with.seconds", "300"),
        (
            one_step("llm.chat", prompt="hi", max_tokens=10**7),
            "payload.pipeline[0].with.max_tokens",
            "1000000",
        ),
        (
            one_step("approval.request", prompt="ok?", expires_in_seconds=10**13),
            "payload.pipeline[0].with.expires_in_seconds",
            str(30 * 86400),
        ),
        (
            {"pipeline": [{"id": "s", "uses": "debug.echo", "timeout_seconds": 10**6}]},
            "payload.pipeline[0].timeout_seconds",
            "",
        ),
    ],
)
def test_a_tool_input_past_its_maximum_is_a_422_naming_it(client_, payload, path, maximum):
    error = assert_error(client_.post("/tasks", task_body(payload=payload)), 422)
    assert path in error["details"], error
    assert "maximum" in " ".join(error["details"][path])
    assert maximum in " ".join(error["details"][path])
    assert not Task.objects.exists()


def test_a_number_json_cannot_hold_as_a_float_is_a_422_not_a_crash(client_):
    """1e400 is valid JSON that Python reads as infinity; it is refused like any other."""
    raw = (
        '{"title": "t", "schedule_kind": "once", "schedule_expr": "2099-01-01T00:00:00Z",'
        ' "payload": {"pipeline": [{"id": "ask", "uses": "approval.request",'
        ' "with": {"prompt": "ok?", "expires_in_seconds": 1e400}}]}}'
    )
    error = assert_error(client_.post("/tasks", raw), 422)
    assert error["details"], error
    assert not Task.objects.exists()


def json_with(body: dict, field: str, value: int) -> str:
    """`body` as JSON text with `field` set to `value` written out exactly (huge ints too)."""
    import json

    text = json.dumps(body)
    return text.replace(f'"{field}": 0', f'"{field}": {value}')


def test_over_mcp_the_same_maxima_hold(client_):
    from asgiref.sync import async_to_sync
    from mcp import Client

    from agents.mcp_server import build_server

    async def scenario():
        async with Client(build_server(stdio_token=client_.token)) as client:
            return await client.call_tool(
                "create_task",
                {"title": "t", "schedule_kind": "once", "schedule_expr": "2099-01-01T00:00:00Z",
                 "max_retries": 21, "payload": one_step("debug.sleep", seconds=1)},
            )  # fmt: skip

    result = async_to_sync(scenario)()
    assert result.is_error
    assert "422" in result.content[0].text
    assert "max_retries" in result.content[0].text
    assert not Task.objects.exists()
