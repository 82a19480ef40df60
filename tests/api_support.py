"""Helpers for the API tests: agents with credentials, authenticated requests, fresh throttles."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from agents.services import credential_issue_api_key, token_exchange
from audit.services import Actor
from tests.factories import make_agent

ALL_SCOPES = ["tasks:read", "tasks:write", "runs:read", "tools:read"]


class Api:
    """A Django test client that speaks JSON with an optional Bearer token."""

    def __init__(self, client: Client, token: str | None = None) -> None:
        self.client = client
        self.token = token

    def as_(self, token: str | None) -> Api:
        return Api(self.client, token)

    def request(self, method: str, path: str, body: Any = None, **headers: str) -> Any:
        if self.token is not None:
            headers.setdefault("HTTP_AUTHORIZATION", f"Bearer {self.token}")
        # No body: like `curl -X POST` (Django's test client would send an empty multipart form).
        kwargs: dict[str, Any] = {"data": "", "content_type": "application/json"}
        if body is not None:
            kwargs["data"] = body if isinstance(body, (str, bytes)) else json.dumps(body)
            kwargs["content_type"] = "application/json"
        return getattr(self.client, method.lower())(path, **kwargs, **headers)

    def get(self, path: str, **headers: str) -> Any:
        return self.request("GET", path, **headers)

    def post(self, path: str, body: Any = None, **headers: str) -> Any:
        return self.request("POST", path, {} if body is None else body, **headers)

    def put(self, path: str, body: Any, **headers: str) -> Any:
        return self.request("PUT", path, body, **headers)

    def patch(self, path: str, body: Any, **headers: str) -> Any:
        return self.request("PATCH", path, body, **headers)

    def delete(self, path: str, **headers: str) -> Any:
        return self.request("DELETE", path, **headers)


def api_key_for(agent: Any) -> str:
    """A fresh API key for `agent`."""
    _, key = credential_issue_api_key(agent=agent, actor=Actor.system("tests"))
    return key


def jwt_for(agent: Any, secret: str) -> tuple[str, str]:
    """(access, refresh) for `agent` from its secret."""
    _, pair = token_exchange(agent_id=str(agent.id), agent_secret=secret)
    return pair.access, pair.refresh


def agent_with_key(scopes: list[str] | None = None) -> tuple[Any, str]:
    agent, _ = make_agent(scopes=ALL_SCOPES if scopes is None else scopes)
    return agent, api_key_for(agent)


def task_body(**overrides: Any) -> dict[str, Any]:
    body = {
        "title": "Every five minutes",
        "description": "test task",
        "schedule_kind": "cron",
        "schedule_expr": "*/5 * * * *",
        "timezone": "Europe/Chisinau",
        "payload": {"pipeline": [{"id": "hello", "uses": "debug.echo", "with": {"x": 1}}]},
    }
    body.update(overrides)
    return body


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is `status` with the error envelope (and `code`, when given)."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details", "correlation_id"}
    assert error["correlation_id"] == response["X-Correlation-ID"]
    if code is not None:
        assert error["code"] == code, error
    return error


@pytest.fixture(autouse=True)
def fresh_throttles():
    """Each test starts with empty rate-limit windows (they live in the session's Redis)."""
    from django_redis import get_redis_connection

    client = get_redis_connection("default")
    for key in client.scan_iter("ordinaut:throttle:*"):
        client.delete(key)


@pytest.fixture(name="api")
def api_fixture(client) -> Api:
    return Api(client)
