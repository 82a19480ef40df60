"""The original project's documented example requests, replayed from tests/api_examples.json.

Each works against Ordinaut with only the Bearer token changed: the token is an API key of
the original's seeded agent 00000000-0000-0000-0000-000000000001, which its examples name.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from django.utils import timezone

from agents.models import Agent
from tasks.models import Run
from tests.api_support import Api, api_key_for, fresh_throttles  # noqa: F401 (fixtures)

EXAMPLES = json.loads((Path(__file__).parent / "api_examples.json").read_text())["steps"]
SYSTEM_AGENT_ID = uuid.UUID("00000000-0000-0000-0000-000000000001")


def fill(value, saved):
    """Replace {name} placeholders in strings (recursively) with captured values."""
    if isinstance(value, str):
        return re.sub(r"\{(\w+)\}", lambda m: str(saved.get(m.group(1), m.group(0))), value)
    if isinstance(value, dict):
        return {key: fill(item, saved) for key, item in value.items()}
    if isinstance(value, list):
        return [fill(item, saved) for item in value]
    return value


@pytest.mark.django_db
def test_documented_examples_work_with_only_the_token_changed(client):
    system = Agent.objects.create(id=SYSTEM_AGENT_ID, name="system", scopes=["admin", "system"])
    token = api_key_for(system)
    saved: dict[str, str] = {}
    replayed = 0
    for step in EXAMPLES:
        api = Api(client, token if step.get("auth", True) else None)
        path = fill(step["path"], saved)
        body = fill(step.get("body"), saved)
        response = api.request(step["method"], path, body)
        where = f"{step['method']} {path} ({step['source']})"
        assert response.status_code in step["expect"], (where, response.content[:500])
        data = response.json() if response["Content-Type"].startswith("application/json") else {}
        for field in step.get("expect_fields", []):
            assert field in data, (where, field)
        for name, field in step.get("save", {}).items():
            saved[name] = data[field]
        if step.get("then") == "run":
            # The worker is not part of this test; record the run it would have written.
            now = timezone.now()
            run = Run.objects.create(
                task_id=saved["task_id"], scheduled_for=now, attempt=1, status="succeeded",
                started_at=now, finished_at=now, output={"greeting": "Hello, Ordinaut User!"},
            )  # fmt: skip
            saved["run_id"] = str(run.id)
        replayed += 1
    assert replayed == len(EXAMPLES)
