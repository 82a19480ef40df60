"""Retention: runs, ledger rows, events and finished webhook deliveries past their age are
deleted in batches by the scheduler; what is in use, and the audit log, never."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from tasks import retention
from tasks.models import (
    Approval,
    Event,
    OutboxMessage,
    Run,
    SkippedOccurrence,
    WebhookAttempt,
    WebhookDelivery,
)
from tasks.scheduler import Scheduler
from tests.factories import make_agent, make_occurrence, make_task

pytestmark = pytest.mark.django_db

OLD = timedelta(days=91)
RECENT = timedelta(days=1)


def run_at(task, age: timedelta, status: str = "succeeded") -> Run:
    started = timezone.now() - age
    finished = None if status == "running" else started
    return Run.objects.create(task=task, scheduled_for=started, started_at=started,
                              finished_at=finished, status=status)  # fmt: skip


def delivery_at(agent, task, age: timedelta, status: str) -> WebhookDelivery:
    created = timezone.now() - age
    message = OutboxMessage.objects.create(type="run.succeeded", task_id=task.pk, data={})
    delivery = WebhookDelivery.objects.create(
        outbox_message=message, agent=agent, url="http://127.0.0.1:9/hook",
        event_type="run.succeeded", payload={}, status=status, created_at=created,
        next_attempt_at=created, delivered_at=created if status == "delivered" else None,
    )  # fmt: skip
    WebhookAttempt.objects.create(delivery=delivery, number=1, started_at=created)
    return delivery


@pytest.fixture
def history():
    agent, _ = make_agent()
    task = make_task(agent)
    rows = {
        "old_run": run_at(task, OLD),
        "old_failed_run": run_at(task, OLD, "failed"),
        "recent_run": run_at(task, RECENT),
        "old_running": run_at(task, OLD, "running"),
        "old_parked": run_at(task, OLD, "waiting_approval"),
        "old_delivered": delivery_at(agent, task, timedelta(days=31), "delivered"),
        "old_pending": delivery_at(agent, task, timedelta(days=31), "pending"),
        "recent_failed": delivery_at(agent, task, RECENT, "failed"),
    }
    approved = run_at(task, OLD)
    rows["old_approval"] = Approval.objects.create(
        task=task, run=approved, occurrence_id=1, step_id="ask", prompt="ok?",
        status="approved", decided_by="ops", decided_at=timezone.now() - OLD,
        expires_at=timezone.now() - OLD, created_at=timezone.now() - OLD,
    )  # fmt: skip
    rows["approved_run"] = approved
    for name, age in (("old_ledger", OLD), ("recent_ledger", RECENT)):
        rows[name] = SkippedOccurrence.objects.create(
            task=task, scheduled_for=timezone.now() - age, reason="coalesced",
            recorded_at=timezone.now() - age,
        )  # fmt: skip
    for name, age in (("old_event", timedelta(days=31)), ("recent_event", RECENT)):
        rows[name] = Event.objects.create(topic="t", published_at=timezone.now() - age)
    rows["used_event"] = Event.objects.create(topic="t", published_at=timezone.now() - OLD)
    make_occurrence(task, event=rows["used_event"], trigger="event")
    return rows


def alive(row) -> bool:
    return type(row).objects.filter(pk=row.pk).exists()


def test_history_past_retention_goes_and_the_rest_stays(history):
    audit_before = AuditEvent.objects.count()
    deleted = retention.prune()
    gone = {"old_run", "old_failed_run", "old_delivered", "old_approval", "approved_run",
            "old_ledger", "old_event"}  # fmt: skip
    assert {name for name, row in history.items() if not alive(row)} == gone
    assert deleted["runs"] == 3  # the approved one goes with its approval
    assert deleted["webhook_deliveries"] == 1
    assert not WebhookAttempt.objects.filter(delivery_id=history["old_delivered"].pk).exists()
    assert AuditEvent.objects.count() == audit_before


def test_a_batch_deletes_at_most_its_size_oldest_first(history):
    retention.prune(batch=1)
    assert not alive(history["old_run"]) or not alive(history["old_failed_run"])
    assert alive(history["recent_run"])


def test_zero_days_keeps_everything(history, settings):
    settings.RUN_RETENTION_DAYS = 0
    settings.LEDGER_RETENTION_DAYS = 0
    settings.EVENT_RETENTION_DAYS = 0
    settings.WEBHOOK_RETENTION_DAYS = 0
    assert retention.prune() == {}
    assert all(alive(row) for row in history.values())


def test_the_scheduler_prunes_on_its_housekeeping(history):
    Scheduler(lookahead=0).run(threading.Event(), once=True)
    assert not alive(history["old_run"])
    assert alive(history["recent_run"])
