"""The executor against the real database: steps recorded as they go, resume, timeouts."""

from __future__ import annotations

import json
import time
from itertools import count

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from pipelines.executor import ExecutionResult, execute, record_decision
from tasks.models import Run, RunStatus, Task
from tests.factories import make_agent, make_task
from tests.fake_llm import FakeOpenAI

pytestmark = pytest.mark.django_db
_occurrences = count(10_000)


@pytest.fixture(scope="module")
def fake_server():
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture
def local_http(settings, fake_server):
    """The fake server, reachable by http.request (loopback allow-listed) and llm.*."""
    settings.HTTP_TOOL_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.LLM_BASE_URL = fake_server.base_url
    settings.LLM_API_KEY = fake_server.api_key
    settings.LLM_MODEL = "fake-model"
    fake_server.requests.clear()
    fake_server.fail_next.clear()
    fake_server.flaky_failures = 0
    return fake_server


def start_run(task: Task, *, occurrence_id: int | None = None, attempt: int = 1) -> Run:
    """What the worker does before calling execute()."""
    return Run.objects.create(
        task=task,
        occurrence_id=occurrence_id,
        attempt=attempt,
        scheduled_for=timezone.now(),
        status=RunStatus.RUNNING,
        correlation_id=f"corr-{attempt}",
    )


def finish_run(run: Run, result: ExecutionResult) -> None:
    """What the worker does with the result."""
    status = result.status if result.status in RunStatus.values else RunStatus.CANCELED
    fields = {"status": status, "finished_at": timezone.now(), "output": result.output,
              "error": result.error}  # fmt: skip
    if result.steps is not None:
        # The final step's record travels with the result (see ExecutionResult.steps).
        fields["steps"] = result.steps
    Run.objects.filter(pk=run.pk).update(**fields)


def run_payload(
    payload: dict, *, scopes: list[str] | None = None, **kwargs
) -> tuple[Run, ExecutionResult]:
    agent, _ = make_agent(scopes=scopes if scopes is not None else ["tasks:write", "http", "llm"])
    run = start_run(make_task(agent, payload=payload))
    result = execute(run, **kwargs)
    # The executor never sets the run's status: the worker does, from the result.
    assert Run.objects.get(pk=run.pk).status == RunStatus.RUNNING
    finish_run(run, result)
    run.refresh_from_db()
    return run, result


QUICK_START = {
    "params": {"user_name": "Ordinaut User"},
    "pipeline": [
        {
            "id": "get_data",
            "uses": "debug.echo",
            "with": {"message": "Hello, ${params.user_name}!", "details": {"at": "${now}"}},
            "save_as": "greeting",
        },
        {
            "id": "process_data",
            "uses": "debug.log",
            "with": {"message": "Step 1 said: '${steps.greeting.message}'"},
        },
    ],
}


def test_quick_start_pipeline_records_every_step_and_the_default_output():
    run, result = run_payload(QUICK_START)
    assert result.status == "succeeded", result.error
    assert result.error is None
    greeting = result.output["steps"]["greeting"]
    assert greeting["message"] == "Hello, Ordinaut User!"
    assert result.output["steps"]["process_data"] == {
        "logged": "Step 1 said: 'Hello, Ordinaut User!'"
    }
    assert [s["status"] for s in run.steps] == ["succeeded", "succeeded"]
    first = run.steps[0]
    assert first["id"] == "get_data"
    assert first["uses"] == "debug.echo"
    assert first["input"] == first["output"] == greeting
    assert first["attempts"] == 1
    assert first["duration_ms"] >= 0
    assert first["started_at"] <= first["finished_at"]


def test_output_template_becomes_the_run_output():
    payload = {
        **QUICK_START,
        "output": {"text": "${steps.greeting.message}", "n": "${run.attempt}"},
    }
    _, result = run_payload(payload)
    assert result.output == {"text": "Hello, Ordinaut User!", "n": 1}


def test_falsy_condition_skips_the_step():
    payload = {
        "params": {"hot": False},
        "pipeline": [
            {"id": "alert", "uses": "debug.log", "if": "params.hot", "with": {"message": "hot"}},
            {"id": "after", "uses": "debug.echo", "with": {"alert": "${steps.alert}"}},
        ],
    }
    run, result = run_payload(payload)
    assert result.status == "succeeded"
    assert [s["status"] for s in run.steps] == ["skipped", "succeeded"]
    assert result.output == {"steps": {"after": {"alert": None}}}


def test_template_error_fails_the_step_with_tool_name_and_correlation_id():
    payload = {"pipeline": [{"id": "a", "uses": "debug.echo", "with": {"x": "${steps.nope.y}"}}]}
    run, result = run_payload(payload)
    assert result.status == "failed"
    assert result.retryable is False
    assert result.error == (
        "step 'a' (debug.echo) failed: ${steps.nope.y}: unknown step 'nope': no earlier step "
        "has that id or save_as (correlation id corr-1)"
    )
    assert run.steps[0]["status"] == "failed"
    assert "debug.echo" in run.steps[0]["error"]
    assert "corr-1" in run.steps[0]["error"]


def test_unknown_tool_at_run_time_is_not_retryable():
    _run, result = run_payload({"pipeline": [{"id": "a", "uses": "mcp.gone.tool"}]})
    assert result.status == "failed"
    assert result.retryable is False
    assert "MCP server 'gone' is not configured" in result.error


def test_invalid_stored_payload_fails_without_running_anything():
    run, result = run_payload({"pipeline": [{"id": "a"}]})
    assert result.status == "failed"
    assert result.retryable is False
    assert result.error.startswith("invalid pipeline: payload.pipeline[0].uses: required")
    assert run.steps == []


def test_agent_without_the_tool_scope_cannot_run_it():
    payload = {"pipeline": [{"id": "h", "uses": "http.request", "with": {"url": "https://a.b"}}]}
    _, result = run_payload(payload, scopes=["tasks:write"])
    assert result.status == "failed"
    assert result.retryable is False
    assert "lacks scope 'http'" in result.error


def test_on_error_continue_records_the_failure_and_goes_on():
    payload = {
        "pipeline": [
            {"id": "bad", "uses": "debug.sleep", "with": {"seconds": -1}, "on_error": "continue"},
            {"id": "good", "uses": "debug.echo", "with": {"ok": True}},
        ]
    }
    run, result = run_payload(payload)
    assert result.status == "succeeded"
    assert [s["status"] for s in run.steps] == ["failed", "succeeded"]
    assert "seconds: -1 is less than the minimum of 0" in run.steps[0]["error"]


def test_step_retry_recovers_from_a_transient_failure(local_http):
    local_http.flaky_failures = 1
    payload = {
        "pipeline": [
            {
                "id": "call",
                "uses": "http.request",
                "with": {"method": "POST", "url": f"{local_http.root_url}/flaky", "json": {}},
                "retry": {"attempts": 3, "backoff_seconds": 0.01},
            }
        ]
    }
    run, result = run_payload(payload)
    assert result.status == "succeeded", result.error
    assert run.steps[0]["attempts"] == 2
    assert result.output["steps"]["call"]["json"]["ok"] is True


def test_step_timeout_fails_the_step():
    payload = {
        "pipeline": [
            {"id": "nap", "uses": "debug.sleep", "with": {"seconds": 5}, "timeout_seconds": 0.2}
        ]
    }
    started = time.monotonic()
    _run, result = run_payload(payload)
    assert time.monotonic() - started < 2
    assert result.status == "failed"
    assert result.retryable is True
    assert "exceeds the 0.2s timeout" in result.error


def test_run_deadline_stops_the_run_as_timed_out():
    payload = {
        "pipeline": [
            {"id": f"nap{i}", "uses": "debug.sleep", "with": {"seconds": 0.2}} for i in range(5)
        ]
    }
    started = time.monotonic()
    run, result = run_payload(payload, deadline=started + 0.5)
    assert result.status == "timed_out"
    assert time.monotonic() - started < 1.5
    assert [s["status"] for s in run.steps][:2] == ["succeeded", "succeeded"]
    assert len(run.steps) < 5


def test_secrets_never_reach_the_stored_run(monkeypatch):
    monkeypatch.setenv("ORDINAUT_SECRET_API_TOKEN", "s3cr3t-value-42")
    payload = {
        "pipeline": [
            {"id": "e", "uses": "debug.echo", "with": {"auth": "Bearer ${secrets.API_TOKEN}"}},
            {"id": "f", "uses": "debug.echo", "with": {"x": "${steps.nope}"}},
        ],
    }
    run, result = run_payload(payload, scopes=["secrets:api_token"])
    stored = json.dumps(list(Run.objects.filter(pk=run.pk).values("steps", "output", "error")))
    assert "s3cr3t-value-42" not in stored
    assert "s3cr3t-value-42" not in json.dumps([result.output, result.error])
    assert run.steps[0]["input"] == {"auth": "Bearer [redacted]"}


def test_resume_after_crash_does_not_repeat_finished_steps(local_http):
    local_http.flaky_failures = 1
    agent, _ = make_agent(scopes=["http"])
    task = make_task(
        agent,
        payload={
            "pipeline": [
                {
                    "id": "side_effect",
                    "uses": "http.request",
                    "with": {"method": "POST", "url": f"{local_http.root_url}/echo", "json": {}},
                },
                {"id": "skip_me", "uses": "debug.log", "if": "`false`", "with": {"message": "-"}},
                {
                    "id": "flaky",
                    "uses": "http.request",
                    "with": {"method": "POST", "url": f"{local_http.root_url}/flaky", "json": {}},
                },
                {"id": "last", "uses": "debug.echo", "with": {"s": "${steps.side_effect.status}"}},
            ]
        },
    )
    occurrence_id = next(_occurrences)
    first = start_run(task, occurrence_id=occurrence_id, attempt=1)
    result = execute(first)
    finish_run(first, result)
    assert result.status == "failed"
    assert result.retryable is True
    assert "answered 503" in result.error

    second = start_run(task, occurrence_id=occurrence_id, attempt=2)
    result = execute(second)
    finish_run(second, result)
    second.refresh_from_db()
    assert result.status == "succeeded", result.error
    assert [s["status"] for s in second.steps] == ["reused", "reused", "succeeded", "succeeded"]
    assert second.steps[0]["reused_from"] == str(first.pk)
    assert result.output["steps"]["last"] == {"s": 200}
    echo_posts = [r for r in local_http.requests if r["path"] == "/echo"]
    assert len(echo_posts) == 1


def test_a_run_that_lost_its_lease_stops_and_writes_nothing():
    agent, _ = make_agent()
    run = start_run(make_task(agent, payload=QUICK_START))
    # Another worker reclaimed the occurrence: this attempt was marked lost.
    Run.objects.filter(pk=run.pk).update(status=RunStatus.LOST, finished_at=timezone.now())
    result = execute(run)
    assert result.status == "failed"
    assert "lease was lost" in result.error
    run.refresh_from_db()
    assert run.steps == []


def test_approval_parks_the_run_and_the_decision_resumes_it():
    agent, _ = make_agent()
    task = make_task(
        agent,
        payload={
            "pipeline": [
                {"id": "draft", "uses": "debug.echo", "with": {"items": [1, 2]}},
                {
                    "id": "approval",
                    "uses": "approval.request",
                    "with": {"message": "Send?", "data": "${steps.draft.items}"},
                },
                {
                    "id": "send",
                    "uses": "debug.echo",
                    "if": "steps.approval.status == 'approved'",
                    "with": {"sent": "${steps.approval.approved_items}"},
                },
            ]
        },
    )
    occurrence_id = next(_occurrences)
    first = start_run(task, occurrence_id=occurrence_id)
    parked = execute(first)
    assert parked.status == "waiting"
    assert parked.error is None
    assert parked.output["waiting"]["step"] == "approval"
    finish_run(first, parked)
    first.refresh_from_db()
    assert [s["status"] for s in first.steps] == ["succeeded", "waiting"]

    decision = {"status": "approved", "decided_by": "cto@example.com"}
    assert record_decision(run_id=first.pk, step_id="approval", decision=decision)
    second = start_run(task, occurrence_id=occurrence_id, attempt=2)
    result = execute(second)
    finish_run(second, result)
    second.refresh_from_db()
    assert result.status == "succeeded", result.error
    assert [s["status"] for s in second.steps] == ["reused", "succeeded", "succeeded"]
    assert result.output["steps"]["send"] == {"sent": [1, 2]}
    assert second.steps[1]["output"]["decided_by"] == "cto@example.com"


def test_task_create_schedules_a_follow_up_as_the_owning_agent():
    agent, _ = make_agent(scopes=["tasks:write"])
    payload = {
        "pipeline": [
            {
                "id": "follow_up",
                "uses": "task.create",
                "with": {
                    "title": "Follow up for ${task.title}",
                    "schedule_kind": "once",
                    "schedule_expr": "${now+1d}",
                    "payload": {"pipeline": []},
                },
            }
        ]
    }
    task = make_task(agent, payload=payload, title="parent")
    run = start_run(task, occurrence_id=next(_occurrences))
    result = execute(run)
    assert result.status == "succeeded", result.error
    created = Task.objects.get(pk=result.output["steps"]["follow_up"]["task_id"])
    assert created.title == "Follow up for parent"
    assert created.created_by == agent
    assert created.next_run_at is not None
    event = AuditEvent.objects.get(action="task.created", subject_id=str(created.pk))
    assert event.actor_id == str(agent.pk)


def test_transform_jmespath_reshapes_data():
    payload = {
        "params": {"people": [{"name": "a", "age": 30}, {"name": "b", "age": 17}]},
        "pipeline": [
            {
                "id": "adults",
                "uses": "transform.jmespath",
                "with": {"data": "${params.people}", "expression": "[?age >= `18`].name"},
            }
        ],
    }
    _, result = run_payload(payload)
    assert result.output == {"steps": {"adults": ["a"]}}


def test_http_request_refuses_loopback_unless_allow_listed(local_http, settings):
    url = f"{local_http.root_url}/echo?q=1"
    payload = {"pipeline": [{"id": "get", "uses": "http.request", "with": {"url": url}}]}
    settings.HTTP_TOOL_ALLOWED_HOSTS = []
    _, refused = run_payload(payload)
    assert refused.status == "failed"
    assert refused.retryable is False
    assert "127.0.0.1 is not a public address" in refused.error
    assert "HTTP_TOOL_ALLOWED_HOSTS" in refused.error
    assert local_http.requests == []
    settings.HTTP_TOOL_ALLOWED_HOSTS = ["127.0.0.1"]
    _, allowed = run_payload(payload)
    assert allowed.status == "succeeded", allowed.error
    assert allowed.output["steps"]["get"]["json"] == {"method": "GET", "query": {"q": ["1"]}}


def test_http_request_refuses_a_redirect_to_an_internal_address(local_http):
    url = f"{local_http.root_url}/redirect-internal"
    payload = {"pipeline": [{"id": "get", "uses": "http.request", "with": {"url": url}}]}
    _, result = run_payload(payload)
    assert result.status == "failed"
    assert "169.254.169.254 is not a public address" in result.error


def test_llm_chat_calls_the_openai_compatible_endpoint(local_http):
    payload = {
        "pipeline": [
            {
                "id": "ask",
                "uses": "llm.chat",
                "with": {"messages": [{"role": "user", "content": "Summarise the day"}]},
            },
            {
                "id": "structured",
                "uses": "llm.chat",
                "with": {
                    "messages": [{"role": "user", "content": "Classify"}],
                    "json_schema": {"type": "object"},
                },
            },
        ]
    }
    _, result = run_payload(payload)
    assert result.status == "succeeded", result.error
    assert result.output["steps"]["ask"]["text"] == "PLAN: Summarise the day"
    assert result.output["steps"]["structured"]["json"] == {
        "summary": "Classify",
        "priority": "high",
    }
    sent = local_http.requests[0]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["Authorization"] == f"Bearer {local_http.api_key}"
    assert sent["json"]["model"] == "fake-model"


def test_llm_errors_fail_the_step_and_5xx_is_retryable(local_http):
    local_http.fail_next.extend([500])
    payload = {"pipeline": [{"id": "p", "uses": "llm.plan", "with": {"instruction": "Plan"}}]}
    _, result = run_payload(payload)
    assert result.status == "failed"
    assert result.retryable is True
    assert "answered 500" in result.error


def test_a_whole_template_becomes_text_where_the_tool_asks_for_a_string(local_http):
    # The original rendered every template as text; llm.plan's `instruction` is a string, so a
    # number from an earlier step arrives as "25.5", while debug.echo (any type) keeps 25.5.
    payload = {
        "pipeline": [
            {"id": "w", "uses": "debug.echo", "with": {"temp": 25.5}, "save_as": "weather"},
            {"id": "keep", "uses": "debug.echo", "with": {"temp": "${steps.weather.temp}"}},
            {"id": "ask", "uses": "llm.plan", "with": {"instruction": "${steps.weather.temp}"}},
        ]
    }
    run, result = run_payload(payload)
    assert result.status == "succeeded", result.error
    assert result.output["steps"]["keep"] == {"temp": 25.5}
    assert result.output["steps"]["ask"]["text"] == "PLAN: 25.5"
    assert [step["input"] for step in run.steps][1:] == [{"temp": 25.5}, {"instruction": "25.5"}]
