"""Prometheus series: the web's state gauges equal the database, the process counters move
where the work happens, and a live stack serves each series where it is documented."""

from __future__ import annotations

import json
import sys
import threading
import urllib.request
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from ordinaut.embedded import free_port
from tasks.delivery import outbox
from tasks.delivery.webhooks import deliver_webhooks
from tasks.models import (
    Approval,
    OccurrenceState,
    OutboxMessage,
    SchedulerHeartbeat,
    WorkerHeartbeat,
)
from tasks.scheduler import Scheduler
from tasks.worker import Worker
from tests.conftest import (
    ROOT,
    command_env,
    pipeline_threads_gone,
    processes,
    run_manage,
    wait_for,
)
from tests.factories import make_agent, make_occurrence, make_task
from tests.test_outbox import stream  # noqa: F401 (fixture)
from tests.test_pipeline_executor import start_run
from tests.test_webhooks import agent_with_webhook, finish_one_run, receiver  # noqa: F401

ECHO = {"pipeline": [{"id": "hello", "uses": "debug.echo", "with": {"x": 1}}]}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of an exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def scrape(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1")
    assert response.status_code == 200
    return samples(response.content.decode())


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.django_db
def test_state_gauges_equal_the_database_and_move(client):
    agent, _ = make_agent()
    task = make_task(agent)
    make_occurrence(task, at=timezone.now() - timedelta(seconds=15))
    make_occurrence(task, at=timezone.now() + timedelta(hours=1))
    make_occurrence(task, at=timezone.now(), state=OccurrenceState.DEAD)
    run = start_run(task)
    Approval.objects.create(task=task, run=run, occurrence_id=1, step_id="ask", prompt="ok?",
                            expires_at=timezone.now() + timedelta(hours=1))  # fmt: skip
    OutboxMessage.objects.create(type="run.succeeded", task_id=task.pk, data={})
    WorkerHeartbeat.objects.create(id="w-metrics", host="h", pid=1)
    WorkerHeartbeat.objects.create(id="w-stale", host="h", pid=2,
                                   last_seen=timezone.now() - timedelta(hours=1))  # fmt: skip
    SchedulerHeartbeat.objects.create(id="s-metrics", host="h", pid=3)

    first = scrape(client)
    assert first[("ordinaut_queue_occurrences", (("state", "queued"),))] == 2
    assert first[("ordinaut_queue_occurrences", (("state", "dead"),))] == 1
    assert first[("ordinaut_queue_occurrences", (("state", "leased"),))] == 0
    assert 14 < first[("ordinaut_queue_oldest_due_lag_seconds", ())] < 600
    assert first[("ordinaut_workers_alive", ())] == 1
    assert first[("ordinaut_approvals_waiting", ())] == 1
    assert first[("ordinaut_outbox_backlog", ())] >= 1
    tick = first[("ordinaut_scheduler_last_tick_timestamp_seconds", ())]
    assert abs(tick - timezone.now().timestamp()) < 600
    assert first[("ordinaut_state_scrape_ok", ())] == 1
    # django-prometheus' own series are still there.
    assert any(name.startswith("django_http_requests") for name, _ in first)

    make_occurrence(task, at=timezone.now(), state=OccurrenceState.DEAD)
    Approval.objects.update(status="approved", decided_by="ops", decided_at=timezone.now())
    second = scrape(client)
    assert second[("ordinaut_queue_occurrences", (("state", "dead"),))] == 2
    assert second[("ordinaut_approvals_waiting", ())] == 0


@pytest.mark.django_db(transaction=True)
def test_a_worker_counts_runs_and_times_runs_and_steps():
    agent, _ = make_agent()
    task = make_task(agent, payload=ECHO)
    before = (value("ordinaut_runs_total", status="succeeded"),
              value("ordinaut_run_duration_seconds_count"),
              value("ordinaut_step_duration_seconds_count", tool="debug.echo"))  # fmt: skip
    for _ in range(3):
        make_occurrence(task, at=timezone.now() - timedelta(seconds=1))
    Worker(concurrency=1, burst=True, poll_interval=0.1).run(threading.Event())
    pipeline_threads_gone()
    after = (value("ordinaut_runs_total", status="succeeded"),
             value("ordinaut_run_duration_seconds_count"),
             value("ordinaut_step_duration_seconds_count", tool="debug.echo"))  # fmt: skip
    assert [b - a for a, b in zip(before, after, strict=True)] == [3, 3, 3]


@pytest.mark.django_db
def test_a_scheduler_tick_observes_the_enqueue_lag():
    agent, _ = make_agent()
    # Yearly: only the stored instant is due, whatever minute the tick falls in (an
    # every-minute schedule also had its next instant due when the tick crossed a minute).
    make_task(agent, schedule_kind="cron", schedule_expr="0 0 1 1 *",
              next_run_at=timezone.now() - timedelta(seconds=3))  # fmt: skip
    before = value("ordinaut_scheduler_enqueue_lag_seconds_count")
    late = value("ordinaut_scheduler_enqueue_lag_seconds_bucket", le="1.0")
    Scheduler(lookahead=0).run(threading.Event(), once=True)
    assert value("ordinaut_scheduler_enqueue_lag_seconds_count") == before + 1
    # Three seconds late: not in the 1 s bucket.
    assert value("ordinaut_scheduler_enqueue_lag_seconds_bucket", le="1.0") == late


@pytest.mark.django_db
def test_webhook_results_are_counted(receiver):  # noqa: F811
    delivered = value("ordinaut_webhook_deliveries_total", result="delivered")
    retry = value("ordinaut_webhook_deliveries_total", result="retry")
    finish_one_run(agent_with_webhook(receiver().url))
    finish_one_run(agent_with_webhook(receiver([500]).url))
    deliver_webhooks()
    assert value("ordinaut_webhook_deliveries_total", result="delivered") == delivered + 1
    assert value("ordinaut_webhook_deliveries_total", result="retry") == retry + 1


@pytest.mark.django_db
def test_relayed_events_are_counted(stream):  # noqa: F811
    _, client = stream
    agent, _ = make_agent()
    task = make_task(agent)
    OutboxMessage.objects.all().delete()
    for _ in range(4):
        OutboxMessage.objects.create(type="run.succeeded", task_id=task.pk, data={})
    before = value("ordinaut_events_published_total")
    assert outbox.relay(client) == 4
    assert value("ordinaut_events_published_total") == before + 4


# -- a live stack -----------------------------------------------------------------------------


def fetch(url: str, **headers: str) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (loopback)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.read().decode()
    except OSError as exc:
        return 0, str(exc)


@pytest.mark.django_db(transaction=True)
def test_a_live_stack_serves_each_series_where_documented(test_database_url):
    web, scheduler_port, worker_port = free_port(), free_port(), free_port()
    env = command_env(DEBUG="0", SECRET_KEY=settings.SECRET_KEY, DATABASE_URL=test_database_url,
                      REDIS_URL=settings.REDIS_URL, LOG_LEVEL="WARNING",
                      SCHEDULER_POLL_INTERVAL="0.2", METRICS_TOKEN="t" * 40)  # fmt: skip
    manage = [sys.executable, str(ROOT / "manage.py")]
    commands = [
        [sys.executable, "-m", "gunicorn", "ordinaut.wsgi", "-b", f"127.0.0.1:{web}",
         "--workers", "2"],
        [*manage, "runscheduler", "--metrics-port", str(scheduler_port)],
        [*manage, "runworker", "--concurrency", "2", "--metrics-port", str(worker_port)],
    ]  # fmt: skip
    with processes(commands, env) as stack:

        def server_log() -> str:
            return stack.output()[-4000:]

        made = run_manage("createagent", "metrics-agent", "--scopes", "tasks:write", "--json",
                          env=env)  # fmt: skip
        assert made.returncode == 0, made.stderr
        agent = json.loads(made.stdout)
        from agents.models import Agent

        owner = Agent.objects.get(pk=agent["id"])
        make_task(owner, payload=ECHO, schedule_kind="cron", schedule_expr="* * * * *",
                  next_run_at=timezone.now() - timedelta(seconds=1))  # fmt: skip

        def worker_series() -> dict:
            status, text = fetch(f"http://127.0.0.1:{worker_port}/metrics")
            return samples(text) if status == 200 else {}

        wait_for(lambda: worker_series().get(("ordinaut_runs_total", (("status", "succeeded"),))),
                 60, f"no run counted on the worker's port\n{server_log()}")  # fmt: skip
        worker = worker_series()
        assert worker[("ordinaut_step_duration_seconds_count", (("tool", "debug.echo"),))] >= 1

        status, text = fetch(f"http://127.0.0.1:{scheduler_port}/metrics")
        assert status == 200
        assert samples(text)[("ordinaut_scheduler_enqueue_lag_seconds_count", ())] >= 1

        # The web's gauges come from the database: the same from either gunicorn worker.
        for _ in range(4):
            status, text = fetch(f"http://127.0.0.1:{web}/metrics",
                                 Authorization=f"Bearer {'t' * 40}")  # fmt: skip
            assert status == 200, text
            state = samples(text)
            assert state[("ordinaut_workers_alive", ())] >= 1
            assert ("ordinaut_queue_occurrences", (("state", "queued"),)) in state
            assert ("ordinaut_scheduler_last_tick_timestamp_seconds", ()) in state
