"""End to end: the original's "morning briefing" pipeline over a real MCP server and LLM API."""

from __future__ import annotations

import json

import pytest
from django.utils import timezone

from pipelines.executor import execute
from pipelines.validation import validate_payload
from tasks.models import Run, RunStatus
from tests.factories import make_agent, make_task
from tests.fake_llm import FakeOpenAI
from tests.mcp_fixtures import register_stdio_server
from tests.test_pipeline_executor import finish_run

pytestmark = pytest.mark.django_db

BRIEFING = {
    "params": {"city": "Chisinau", "channel": "morning"},
    "pipeline": [
        {
            "id": "calendar",
            "uses": "mcp.brief.list_events",
            "with": {"start": "${now}", "end": "${now+24h}"},
            "save_as": "events",
        },
        {
            "id": "weather",
            "uses": "mcp.brief.forecast",
            "with": {"city": "${params.city}"},
            "save_as": "weather",
        },
        {
            "id": "email",
            "uses": "mcp.brief.unread_email",
            "with": {"limit": 2},
            "save_as": "inbox",
        },
        {
            "id": "summarize",
            "uses": "llm.plan",
            "with": {
                "instruction": "Create morning briefing",
                "calendar": "${steps.events.events}",
                "weather": "${steps.weather}",
                "email": "${steps.inbox.subjects}",
            },
            "save_as": "summary",
        },
        {
            "id": "notify",
            "uses": "mcp.brief.notify",
            "if": "steps.summary.text != ''",
            "with": {"channel": "${params.channel}", "text": "${steps.summary.text}"},
        },
    ],
    "output": {
        "briefing": "${steps.summary.text}",
        "delivered": "${steps.notify.delivered}",
        "events": "${length(steps.events.events)}",
        "temperature": "${steps.weather.temperature_c}",
    },
}


@pytest.fixture
def llm(settings):
    server = FakeOpenAI().start()
    settings.LLM_BASE_URL = server.base_url
    settings.LLM_API_KEY = server.api_key
    yield server
    server.stop()


def test_morning_briefing_runs_end_to_end(llm, tmp_path):
    notify_log = tmp_path / "notify.jsonl"
    register_stdio_server("brief", notify_log=notify_log)
    agent, _ = make_agent(scopes=["mcp:brief", "llm"])
    assert validate_payload(BRIEFING, scopes=agent.scopes) is BRIEFING
    task = make_task(agent, payload=BRIEFING, timezone="Europe/Chisinau")
    run = Run.objects.create(
        task=task, scheduled_for=timezone.now(), status=RunStatus.RUNNING, correlation_id="brief-1"
    )

    result = execute(run)
    finish_run(run, result)

    assert result.status == "succeeded", result.error
    run.refresh_from_db()
    assert [step["status"] for step in run.steps] == ["succeeded"] * 5
    # The calendar got a 24-hour window in the task's zone.
    start, end = run.steps[0]["output"]["window"]
    assert start.endswith(("+02:00", "+03:00"))
    assert end > start
    # The LLM saw every source, as JSON context after the instruction.
    prompt = llm.requests[0]["json"]["messages"][1]["content"]
    assert prompt.startswith("Create morning briefing\n\nContext:\n")
    context = json.loads(prompt.split("Context:\n", 1)[1])
    assert context["weather"]["summary"] == "sunny"
    assert [event["title"] for event in context["calendar"]] == ["Stand-up", "Design review"]
    assert context["email"] == ["Invoice 42", "Re: launch plan"]
    # The notification carried the LLM's text, once.
    briefing = result.output["briefing"]
    assert briefing.startswith("PLAN: Create morning briefing")
    deliveries = [json.loads(line) for line in notify_log.read_text().splitlines()]
    assert deliveries == [{"channel": "morning", "text": briefing}]
    assert result.output == {
        "briefing": briefing,
        "delivered": True,
        "events": 2,
        "temperature": 21.5,
    }
