"""Per-agent budgets: what each one counts, and the checks the use cases call.

The limits live on the agent (agents.models.BUDGETS; NULL is unlimited). Each is enforced
where its work starts:

- `max_active_tasks`: creating, resuming or re-activating a task (`require_active_task_room`,
  under a per-agent advisory lock so two racing creates cannot both take the last place);
- `max_concurrent_runs`: the claim passes over an agent already running that many
  (the claim statements in tasks/queue.py);
- `max_runs_per_hour`: the scheduler and the event fan-out queue an agent's occurrences only
  while its runs of the past hour plus its queued ones stay under the budget; the others
  are ledgered as `budget_exceeded` (`hourly_room`); a run-now past it is refused
  (`require_hourly_room`);
- `max_llm_tokens_per_day`: an `llm.*` step checks the tokens used today before it calls
  the endpoint and adds what the endpoint reports after (pipelines/executor.py).

`agent_usage` is what GET /agents/{id}/usage reports.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.utils import timezone

from agents.models import Agent
from ordinaut.database import advisory_xact_lock
from ordinaut.errors import BudgetExceeded
from tasks.models import AgentLlmUsage, Occurrence, OccurrenceState, Task, TaskStatus

HOUR = timedelta(hours=1)


def exceeded(budget: str, limit: int, usage: int, what: str) -> BudgetExceeded:
    """The 403 for an agent at its `budget`."""
    return BudgetExceeded(
        f"{budget} budget reached: {usage} {what} of {limit}",
        details={"budget": budget, "limit": limit, "usage": usage},
    )


def active_tasks(agent_id: Any) -> int:
    return Task.objects.filter(created_by_id=agent_id, status=TaskStatus.ACTIVE).count()


def require_active_task_room(agent_id: Any) -> None:
    """Raise BudgetExceeded when one more active task would pass the agent's budget.

    Call inside the transaction that makes the task active: the advisory lock serialises it
    with the agent's other creates and resumes until commit.
    """
    limit = Agent.objects.filter(pk=agent_id).values_list("max_active_tasks", flat=True).first()
    if limit is None:
        return
    advisory_xact_lock(f"agent-active-tasks:{agent_id}")
    usage = active_tasks(agent_id)
    if usage >= limit:
        raise exceeded("max_active_tasks", limit, usage, "active tasks")


# For each of `ids` that has a max_runs_per_hour budget: the budget, and what counts
# against it — the runs started in the past hour and the occurrences waiting in the queue.
HOURLY_USE = """
SELECT a.id, a.max_runs_per_hour,
       (SELECT count(*) FROM tasks_run AS r JOIN tasks_task AS t ON t.id = r.task_id
        WHERE t.created_by_id = a.id AND r.started_at > %(since)s)
       + (SELECT count(*) FROM tasks_occurrence AS o
          WHERE o.agent_id = a.id AND o.state = 'queued')
FROM agents_agent AS a
WHERE a.id = ANY(%(ids)s::uuid[]) AND a.max_runs_per_hour IS NOT NULL
"""


def _hourly_use(agent_ids: Iterable[Any], now: datetime | None) -> dict[str, tuple[int, int]]:
    """{agent id: (max_runs_per_hour, runs of the past hour + queued)} for budgeted agents."""
    ids = sorted({str(agent_id) for agent_id in agent_ids})
    if not ids:
        return {}
    since = (now or timezone.now()) - HOUR
    with connection.cursor() as cursor:
        cursor.execute(HOURLY_USE, {"ids": ids, "since": since})
        return {str(agent_id): (limit, used) for agent_id, limit, used in cursor.fetchall()}


def hourly_room(agent_ids: Iterable[Any], *, now: datetime | None = None) -> dict[str, int]:
    """{agent id: occurrences it may still queue this hour} for the agents that have a
    max_runs_per_hour budget (the others are unlimited and absent)."""
    return {
        agent_id: max(limit - used, 0)
        for agent_id, (limit, used) in _hourly_use(agent_ids, now).items()
    }


def take_room(room: dict[str, int], agent_id: str, wanted: int) -> int:
    """How many of `wanted` new occurrences `agent_id` may queue, taken from `room` (what
    `hourly_room` answered; an agent absent from it is unlimited)."""
    if agent_id not in room:
        return wanted
    granted = min(wanted, room[agent_id])
    room[agent_id] -= granted
    return granted


def require_hourly_room(agent_id: Any, *, now: datetime | None = None) -> None:
    """Raise BudgetExceeded when the agent may queue no more runs this hour (run now)."""
    found = _hourly_use([agent_id], now).get(str(agent_id))
    if found is not None and found[1] >= found[0]:
        raise exceeded("max_runs_per_hour", found[0], found[1], "runs this hour (with queued)")


def agent_usage(agent: Agent, *, now: datetime | None = None) -> dict[str, Any]:
    """Each budget's limit (None: unlimited) and the agent's usage of it now."""
    now = now or timezone.now()
    runs_past_hour = (
        Task.objects.filter(created_by=agent, runs__started_at__gt=now - HOUR)
        .values("runs")
        .count()
    )
    usage = {
        "max_active_tasks": active_tasks(agent.pk),
        "max_runs_per_hour": runs_past_hour,
        "max_concurrent_runs": Occurrence.objects.filter(
            agent=agent, state=OccurrenceState.LEASED
        ).count(),
        "max_llm_tokens_per_day": AgentLlmUsage.tokens_on(agent.pk, now),
    }
    return {
        "agent_id": str(agent.pk),
        "at": now.isoformat(),
        "budgets": {
            name: {"limit": limit, "usage": usage[name]} for name, limit in agent.budgets.items()
        },
    }
