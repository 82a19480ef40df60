"""Rows for tests, written through the project's own services where one exists."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from agents.models import Agent
from agents.services import agent_create
from audit.services import Actor
from tasks.models import Occurrence, Task

_names = itertools.count(1)


def make_agent(*, scopes: list[str] | None = None) -> tuple[Agent, str]:
    """A fresh agent and its secret."""
    return agent_create(
        name=f"agent-{next(_names)}",
        scopes=scopes if scopes is not None else ["tasks:read", "tasks:write"],
        actor=Actor.system("tests"),
    )


def make_task(agent: Agent, **fields: Any) -> Task:
    """A task row with sane defaults (the task service arrives with the scheduler issue)."""
    values = {
        "title": "test task",
        "created_by": agent,
        "schedule_kind": "cron",
        "schedule_expr": "*/5 * * * *",
        "payload": {"pipeline": [{"id": "hello", "uses": "debug.echo", "with": {"x": 1}}]},
    }
    values.update(fields)
    return Task.objects.create(**values)


def make_occurrence(task: Task, *, at: datetime | None = None, **fields: Any) -> Occurrence:
    at = at or timezone.now().replace(microsecond=0) + timedelta(minutes=next(_names))
    values = {
        "task": task, "scheduled_for": at, "run_at": at, "priority": task.priority,
        "agent_id": task.created_by_id,
    }  # fmt: skip
    values.update(fields)
    return Occurrence.objects.create(**values)
