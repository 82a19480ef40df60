"""Cross-cutting API behaviour: throttles, OpenAPI, audit endpoint, tools, errors."""

from __future__ import annotations

import json
import re

import pytest
from django.test import override_settings

from agents.throttles import AgentRateThrottle, breaker, parse_rate
from audit.models import AuditEvent
from tasks.models import Task
from tests.api_support import (  # noqa: F401 (fixtures)
    agent_with_key,
    api_fixture,
    assert_error,
    fresh_throttles,
    task_body,
)
from tests.conftest import command_env, run_manage
from tests.factories import make_agent
from tests.mcp_fixtures import register_stdio_server

pytestmark = pytest.mark.django_db


class FakeClock:
    def __init__(self, now: float = 1_000_000_020.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rates(**overrides):
    from django.conf import settings

    framework = dict(settings.REST_FRAMEWORK)
    framework["DEFAULT_THROTTLE_RATES"] = {**framework["DEFAULT_THROTTLE_RATES"], **overrides}
    return override_settings(REST_FRAMEWORK=framework)


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(AgentRateThrottle, "clock", fake)
    return fake


def test_parse_rate_accepts_drf_syntax():
    assert parse_rate("60/min") == (60, 60)
    assert parse_rate("1200/minute") == (1200, 60)
    assert parse_rate("5/10s") == (5, 10)
    assert parse_rate("100/day") == (100, 86400)
    with pytest.raises(ValueError, match="invalid rate"):
        parse_rate("fast")


def test_reads_throttle_returns_429_then_recovers_next_window(api, clock):
    _, key = agent_with_key()
    client = api.as_(key)
    with rates(reads="3/min"):
        assert [client.get("/tasks").status_code for _ in range(3)] == [200, 200, 200]
        limited = client.get("/tasks")
        assert_error(limited, 429, "throttled")
        assert 1 <= int(limited["Retry-After"]) <= 60
        clock.now += 60
        assert client.get("/tasks").status_code == 200


def test_throttle_is_per_agent(api, clock):
    _, key = agent_with_key()
    _, other_key = agent_with_key()
    with rates(reads="1/min"):
        assert api.as_(key).get("/tasks").status_code == 200
        assert api.as_(key).get("/tasks").status_code == 429
        assert api.as_(other_key).get("/tasks").status_code == 200


def test_write_bucket_is_separate_from_reads(api, clock):
    _, key = agent_with_key()
    client = api.as_(key)
    with rates(tasks="1/min"):
        assert client.post("/tasks", task_body()).status_code == 201
        assert_error(client.post("/tasks", task_body()), 429)
        assert client.get("/tasks").status_code == 200
    assert Task.objects.count() == 1


def test_token_exchange_is_throttled_per_address(api, clock):
    agent, secret = make_agent()
    with rates(auth="2/min"):
        body = {"agent_id": str(agent.id), "agent_secret": "wrong"}
        assert [api.post("/agents/auth/token", body).status_code for _ in range(2)] == [401, 401]
        good = {"agent_id": str(agent.id), "agent_secret": secret}
        assert_error(api.post("/agents/auth/token", good), 429)


@pytest.mark.slow
def test_throttling_fails_open_when_redis_is_down(api, clock, servers, caplog):
    _, key = agent_with_key()
    client = api.as_(key)
    servers.REDIS.stop()
    try:
        with rates(reads="1/min"):
            codes = [client.get("/tasks").status_code for _ in range(3)]
    finally:
        servers.REDIS.start()
        clock.now += 3600  # past the breaker's pause
    assert codes == [200, 200, 200]
    assert any("throttling disabled" in record.getMessage() for record in caplog.records)
    assert not breaker.is_open(clock.now)


def test_openapi_schema_lists_paths_scopes_and_bearer_auth(api):
    response = api.get("/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    paths = schema["paths"]
    for path in ["/tasks", "/tasks/{task_id}", "/tasks/{task_id}/snooze", "/runs",
                 "/runs/task/{task_id}/latest", "/agents/auth/token", "/audit"]:  # fmt: skip
        assert path in paths, path
    assert paths["/tasks"]["post"]["x-required-scope"] == "tasks:write"
    assert paths["/tasks"]["get"]["x-required-scope"] == "tasks:read"
    assert "422" in paths["/tasks"]["post"]["responses"]
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert "security" not in paths["/agents/auth/token"]["post"]


def test_swagger_and_redoc_pages_render(api):
    for path in ("/docs", "/redoc"):
        response = api.get(path)
        assert response.status_code == 200
        assert b"openapi.json" in response.content


def test_audit_endpoint_is_admin_only_and_filters(api):
    _, admin_key = agent_with_key(scopes=["admin"])
    _, key = agent_with_key()
    api.as_(key).post("/tasks", task_body())
    assert_error(api.as_(key).get("/audit"), 403)
    page = api.as_(admin_key).get("/audit?action=task.created").json()
    assert page["total"] == 1
    event = page["items"][0]
    assert event["actor_type"] == "agent"
    assert event["correlation_id"]
    assert event["details"]["title"] == "Every five minutes"


def test_mutation_audit_carries_request_correlation_id(api):
    _, key = agent_with_key()
    response = api.as_(key).post("/tasks", task_body(), HTTP_X_CORRELATION_ID="req-77")
    assert response["X-Correlation-ID"] == "req-77"
    assert AuditEvent.objects.get(action="task.created").correlation_id == "req-77"


def test_pipeline_schema_is_public_json_schema(api):
    schema = api.get("/schemas/pipeline").json()
    assert schema["type"] == "object"
    assert "pipeline" in schema["required"]


def test_tools_need_tools_read(api):
    _, key = agent_with_key(scopes=["tools:read"])
    response = api.as_(key).get("/tools")
    assert response.status_code == 200
    assert isinstance(response.json(), dict)
    _, other = agent_with_key(scopes=["tasks:read"])
    assert_error(api.as_(other).get("/tools"), 403)


def test_tools_show_the_scope_that_a_refused_step_names(api):
    server = register_stdio_server("calendar")
    _, key = agent_with_key(scopes=["tools:read", "tasks:write"])
    client = api.as_(key)

    tools = client.get("/tools").json()

    assert tools["http.request"]["scope"] == "http"
    mcp_tool = f"mcp.calendar.{server.tools[0]['name']}"
    assert tools[mcp_tool]["scope"] == "mcp:calendar"
    assert tools["debug.echo"]["scope"] is None
    step = {"id": "fetch", "uses": "http.request", "with": {"url": "https://example.com"}}
    refused = client.post("/tasks", task_body(payload={"pipeline": [step]}))
    body = assert_error(refused, 422)
    assert "'http'" in json.dumps(body)


def test_unknown_route_and_wrong_method_are_json_errors(api):
    response = api.get("/no/such/route")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    _, key = agent_with_key()
    assert_error(api.as_(key).delete("/tasks"), 405, "method_not_allowed")


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "application/*;q=0.9"])
def test_json_is_served_to_clients_that_accept_it(client, accept):
    _, key = agent_with_key()
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    if accept is not None:
        headers["HTTP_ACCEPT"] = accept
    response = client.get("/tasks", **headers)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json()["items"] == []


def test_unacceptable_media_type_or_format_is_refused_as_json(client):
    _, key = agent_with_key()
    auth = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    assert_error(client.get("/tasks", HTTP_ACCEPT="text/html", **auth), 406, "not_acceptable")
    assert_error(client.get("/tasks?format=xml", **auth), 404)


# -- browser sessions belong to the admin only ------------------------------------------------


def test_admin_login_with_csrf_and_session_works(django_user_model):
    from django.test import Client

    django_user_model.objects.create_superuser("operator", "op@example.com", "a long passphrase")
    browser = Client(enforce_csrf_checks=True)
    login_page = browser.get("/admin/login/")
    assert login_page.status_code == 200
    token = browser.cookies["csrftoken"].value
    refused = browser.post("/admin/login/", {"username": "operator", "password": "x"})
    assert refused.status_code == 403  # no CSRF token: CSRF protection still applies
    response = browser.post(
        "/admin/login/?next=/admin/",
        {"username": "operator", "password": "a long passphrase", "csrfmiddlewaretoken": token},
    )
    assert response.status_code == 302
    assert "sessionid" in browser.cookies
    home = browser.get("/admin/")
    assert home.status_code == 200
    assert b"operator" in home.content


def test_api_responses_never_touch_the_session(client, django_user_model):
    user = django_user_model.objects.create_superuser("op", "op@example.com", "pw-pw-pw-pw")
    client.force_login(user)  # a browser with an admin session calls the API
    response = client.get("/health/live")
    assert response.status_code == 200
    assert "sessionid" not in response.cookies
    assert "Cookie" not in response.get("Vary", "")
    unauthenticated = client.get("/tasks")
    assert unauthenticated.status_code == 401  # an admin session is not an API credential


def test_openapi_descriptions_hold_no_internal_notes(api):
    schema = api.get("/openapi.json").json()
    texts = []

    def walk(node, where):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}[{index}]")
        elif isinstance(node, str) and where.endswith(("description", "summary", "title")):
            texts.append((where, node))

    walk(schema, "")
    notes = re.compile(
        r"\bthe issue\b|\b(TODO|FIXME|XXX|serializer|docstring)\b|#\d+", re.IGNORECASE
    )
    leaked = [f"{where}: {text[:80]}" for where, text in texts if notes.search(text)]
    assert texts
    assert not leaked, "\n".join(leaked)


def test_openapi_generation_has_no_warnings(tmp_path):
    # Each enum is named after its model's choices (ENUM_NAME_OVERRIDES), not a hash.
    env = command_env(DEBUG="0", SECRET_KEY="s" * 50, DATABASE_URL="postgresql://u:p@127.0.0.1:1/d")
    target = tmp_path / "openapi.json"
    done = run_manage(
        "spectacular", "--fail-on-warn", "--format", "openapi-json", "--file", str(target), env=env
    )
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr
    schemas = json.loads(target.read_text())["components"]["schemas"]
    assert schemas["RunStatusEnum"]["enum"][-1] == "waiting_approval"
