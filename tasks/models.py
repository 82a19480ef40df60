"""Tasks, their queued occurrences, and the runs that record every attempt.

Invariants live in the database (check constraints, unique and partial indexes), so that
no code path — admin, API, a bug — can write a row the scheduler or worker would trip on.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any

from django.conf import settings
from django.db import connection, models
from django.db.models import F, Q
from django.utils.timezone import now


def _default_timezone() -> str:
    return settings.TIME_ZONE


def _default_max_retries() -> int:
    return settings.WORKER_MAX_RETRIES


class ScheduleKind(models.TextChoices):
    CRON = "cron"  # five-field cron expression, evaluated in the task's timezone
    RRULE = "rrule"  # RFC 5545 recurrence rule (optionally with DTSTART/RDATE/EXDATE)
    ONCE = "once"  # a single ISO 8601 instant
    EVENT = "event"  # fires when an event whose topic matches the pattern arrives
    CONDITION = "condition"  # fires when a JMESPath expression is truthy for an event


# Kinds that produce instants and therefore a next_run_at.
TIME_KINDS = (ScheduleKind.CRON, ScheduleKind.RRULE, ScheduleKind.ONCE)


class TaskStatus(models.TextChoices):
    ACTIVE = "active"  # scheduled: the scheduler enqueues its occurrences
    PAUSED = "paused"  # kept but not scheduled; resume recomputes next_run_at
    CANCELED = "canceled"  # finished for good; kept for history


class BackoffStrategy(models.TextChoices):
    EXPONENTIAL_JITTER = "exponential_jitter"  # random in [0, min(cap, base * 2**attempt)]
    LINEAR = "linear"  # base * attempt, capped
    FIXED = "fixed"  # base every time


class MisfirePolicy(models.TextChoices):
    COALESCE = "coalesce"  # missed occurrences collapse into one run now, then on schedule
    SKIP = "skip"  # missed occurrences are dropped; resume at the next future one
    CATCH_UP = "catch_up"  # every missed occurrence runs (bounded by a setting)


class Task(models.Model):
    """A schedule plus a pipeline, created by an agent."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    title = models.CharField(max_length=200)
    description = models.TextField(max_length=2000, blank=True, default="")
    created_by = models.ForeignKey(
        "agents.Agent", on_delete=models.PROTECT, related_name="tasks", db_index=True
    )
    schedule_kind = models.CharField(max_length=16, choices=ScheduleKind.choices)
    schedule_expr = models.TextField(null=True, blank=True)
    timezone = models.CharField(max_length=64, default=_default_timezone)
    payload = models.JSONField(default=dict)
    status = models.CharField(
        max_length=16, choices=TaskStatus.choices, default=TaskStatus.ACTIVE, db_index=True
    )
    # 1..9; 9 is the most urgent (claimed first).
    priority = models.SmallIntegerField(default=5)
    dedupe_key = models.CharField(max_length=100, null=True, blank=True)
    dedupe_window_seconds = models.IntegerField(default=0)
    max_retries = models.SmallIntegerField(default=_default_max_retries)
    backoff_strategy = models.CharField(
        max_length=32, choices=BackoffStrategy.choices, default=BackoffStrategy.EXPONENTIAL_JITTER
    )
    concurrency_key = models.CharField(max_length=100, null=True, blank=True)
    misfire_policy = models.CharField(
        max_length=16, choices=MisfirePolicy.choices, default=MisfirePolicy.COALESCE
    )
    # Limit for a whole run; None: no limit beyond the steps' own timeouts.
    timeout_seconds = models.IntegerField(null=True, blank=True)
    # Maintained by the scheduler: the next instant to enqueue. NULL when nothing is due
    # (paused, canceled, event-driven, or a schedule that has ended).
    next_run_at = models.DateTimeField(null=True, blank=True)
    # When the task was paused; resume ledgers the instants that fell due since.
    paused_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The scheduler's due-task scan: only active tasks with an instant to fire.
            models.Index(
                fields=["next_run_at"],
                name="task_due_idx",
                condition=Q(status="active", next_run_at__isnull=False),
            ),
            models.Index(fields=["created_by", "-created_at"], name="task_creator_idx"),
            # The total of an agent's list by status (GET /tasks?status=active): an
            # index-only count over two columns that deduplicate to a few pages.
            models.Index(fields=["created_by", "status"], name="task_creator_status_idx"),
            # Runs are visible through their task's owner: this makes "is this run's task
            # mine?" an index-only probe (the /runs page) and the /runs count a merge join.
            models.Index(fields=["created_by", "id"], name="task_owner_idx"),
            models.Index(fields=["schedule_kind"], name="task_kind_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(priority__gte=1, priority__lte=9), name="task_priority_1_9"
            ),
            models.CheckConstraint(
                condition=Q(status__in=TaskStatus.values), name="task_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(schedule_kind__in=ScheduleKind.values), name="task_kind_valid"
            ),
            models.CheckConstraint(
                condition=Q(backoff_strategy__in=BackoffStrategy.values),
                name="task_backoff_valid",
            ),
            models.CheckConstraint(
                condition=Q(misfire_policy__in=MisfirePolicy.values), name="task_misfire_valid"
            ),
            models.CheckConstraint(condition=Q(max_retries__gte=0), name="task_retries_nonneg"),
            models.CheckConstraint(
                condition=Q(dedupe_window_seconds__gte=0), name="task_dedupe_window_nonneg"
            ),
            models.CheckConstraint(
                condition=Q(timeout_seconds__isnull=True) | Q(timeout_seconds__gt=0),
                name="task_timeout_positive",
            ),
            models.CheckConstraint(condition=~Q(title=""), name="task_title_not_empty"),
            # Time-based kinds cannot exist without their expression.
            models.CheckConstraint(
                condition=~Q(schedule_kind__in=TIME_KINDS)
                | (Q(schedule_expr__isnull=False) & ~Q(schedule_expr="")),
                name="task_time_kind_has_expr",
            ),
            # Only an active, time-based task has something to fire.
            models.CheckConstraint(
                condition=Q(next_run_at__isnull=True)
                | Q(status="active", schedule_kind__in=TIME_KINDS),
                name="task_next_run_only_when_scheduled",
            ),
        ]

    def __str__(self) -> str:
        return self.title


class OccurrenceState(models.TextChoices):
    QUEUED = "queued"  # waiting for run_at and a free worker
    LEASED = "leased"  # held by lease_owner until leased_until (heartbeats extend it)
    DEAD = "dead"  # retries exhausted; kept for operators to inspect and re-run
    WAITING = "waiting"  # parked on a pending approval; a decision requeues it


class Trigger(models.TextChoices):
    SCHEDULE = "schedule"  # produced by the task's schedule
    EVENT = "event"  # produced by a matching event
    MANUAL = "manual"  # run_now from an agent or operator


class Occurrence(models.Model):
    """One due execution of a task: the queue. Finished occurrences leave; Run keeps history."""

    id = models.BigAutoField(primary_key=True)
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="occurrences")
    # The instant the schedule asked for (identity: one occurrence per task and instant).
    scheduled_for = models.DateTimeField()
    # When a worker may take it (scheduled_for, or later after a retry backoff or snooze).
    run_at = models.DateTimeField()
    # Copied from the task at enqueue so the claim query reads one table. The task's agent
    # scopes the concurrency key (one agent's "email" never blocks another's) and lets the
    # claim pass over a paused agent's work.
    priority = models.SmallIntegerField(default=5)
    concurrency_key = models.CharField(max_length=100, null=True, blank=True)
    agent = models.ForeignKey(
        "agents.Agent", on_delete=models.CASCADE, related_name="+", db_index=False
    )
    state = models.CharField(
        max_length=16, choices=OccurrenceState.choices, default=OccurrenceState.QUEUED
    )
    lease_owner = models.CharField(max_length=200, null=True, blank=True)
    leased_until = models.DateTimeField(null=True, blank=True)
    # Attempts started so far; the next Run is attempt + 1.
    attempt = models.SmallIntegerField(default=0)
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.SCHEDULE)
    last_error = models.TextField(blank=True, default="")
    correlation_id = models.CharField(max_length=64, default="", blank=True)
    # The event that triggered it (trigger `event`); the pipeline reads it as ${event...}.
    event = models.ForeignKey(
        "Event", on_delete=models.PROTECT, null=True, blank=True, related_name="occurrences"
    )
    # Attempts that ended parked on an approval: they do not count against max_retries.
    waits = models.SmallIntegerField(db_default=0)
    created_at = models.DateTimeField(default=now, editable=False)

    class Meta:
        ordering = ["-priority", "run_at"]
        indexes = [
            # The claim query: due, queued work in priority order. Partial so it stays tiny
            # however many leased or dead rows exist.
            models.Index(
                F("priority").desc(),
                "run_at",
                name="occurrence_claim_idx",
                condition=Q(state="queued"),
            ),
            # An idle worker sleeps until the earliest queued run_at (min over this index).
            models.Index(fields=["run_at"], name="occurrence_due_idx", condition=Q(state="queued")),
            # Reclaiming expired leases scans only leased rows.
            models.Index(
                fields=["leased_until"], name="occurrence_lease_idx", condition=Q(state="leased")
            ),
            # An agent's running count, for its max_concurrent_runs budget at claim time.
            models.Index(
                fields=["agent"], name="occurrence_leased_agent_idx", condition=Q(state="leased")
            ),
        ]
        constraints = [
            models.UniqueConstraint(fields=["task", "scheduled_for"], name="occurrence_once"),
            models.CheckConstraint(
                condition=Q(state__in=OccurrenceState.values), name="occurrence_state_valid"
            ),
            models.CheckConstraint(
                condition=Q(trigger__in=Trigger.values), name="occurrence_trigger_valid"
            ),
            models.CheckConstraint(
                condition=Q(priority__gte=1, priority__lte=9), name="occurrence_priority_1_9"
            ),
            models.CheckConstraint(condition=Q(attempt__gte=0), name="occurrence_attempt_nonneg"),
            # Lease columns are set exactly when the row is leased.
            models.CheckConstraint(
                condition=(
                    Q(state="leased", lease_owner__isnull=False, leased_until__isnull=False)
                    | (~Q(state="leased") & Q(lease_owner__isnull=True, leased_until__isnull=True))
                ),
                name="occurrence_lease_iff_leased",
            ),
            # At most one running occurrence per agent and concurrency key, across all
            # workers.
            models.UniqueConstraint(
                fields=["agent", "concurrency_key"],
                condition=Q(state="leased", concurrency_key__isnull=False),
                name="occurrence_one_leased_per_agent_key",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_id} @ {self.scheduled_for.isoformat()}"


class RunStatus(models.TextChoices):
    RUNNING = "running"  # a worker is executing this attempt
    SUCCEEDED = "succeeded"  # the pipeline finished
    FAILED = "failed"  # a step failed (the occurrence may retry)
    TIMED_OUT = "timed_out"  # the run exceeded its timeout
    LOST = "lost"  # the worker vanished (lease expired); the occurrence was reclaimed
    CANCELED = "canceled"  # stopped on purpose (task canceled, worker shut down)
    WAITING_APPROVAL = "waiting_approval"  # parked on an approval; a decision starts the next


FINISHED_RUN_STATUSES = [s for s in RunStatus.values if s != RunStatus.RUNNING]

# The parked state. A run waiting for a human decision has one name in each layer:
#   pipelines.executor.StepStatus.WAITING ("waiting")        the step record,
#   pipelines.executor.ExecutionStatus.WAITING ("waiting")   the attempt's result,
#   RunStatus.WAITING_APPROVAL ("waiting_approval")          the Run row, as the API shows it,
#   OccurrenceState.WAITING ("waiting")                      the occurrence (not claimable).
# `run_status_for` is the one place an execution result becomes a run status; the queue
# parks the occurrence exactly for runs finished as WAITING_APPROVAL (tasks/queue.py PARK).
_RUN_STATUS_FOR_EXECUTION = {
    "succeeded": RunStatus.SUCCEEDED,
    "failed": RunStatus.FAILED,
    "timed_out": RunStatus.TIMED_OUT,
    "waiting": RunStatus.WAITING_APPROVAL,
    "canceled": RunStatus.CANCELED,
}


def run_status_for(execution_status: str) -> RunStatus:
    """The Run status recording an attempt whose pipeline ended with `execution_status`.

    Raises ValueError for a status the executor does not produce.
    """
    try:
        return _RUN_STATUS_FOR_EXECUTION[execution_status]
    except KeyError:
        raise ValueError(f"unknown execution status {execution_status!r}") from None


class Run(models.Model):
    """One attempt at one occurrence: the history the API and admin show."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    task = models.ForeignKey(Task, on_delete=models.PROTECT, related_name="runs")
    # Not a foreign key: occurrences leave the queue when done, their runs stay.
    occurrence_id = models.BigIntegerField(null=True, blank=True)
    scheduled_for = models.DateTimeField()
    attempt = models.SmallIntegerField(default=1)
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.SCHEDULE)
    lease_owner = models.CharField(max_length=200, blank=True, default="")
    leased_until = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.RUNNING)
    started_at = models.DateTimeField(default=now)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(null=True, blank=True)
    output = models.JSONField(null=True, blank=True)
    # Per-step results, in pipeline order: [{"id", "status", "output", "error", ...}].
    steps = models.JSONField(default=list, blank=True)
    correlation_id = models.CharField(max_length=64, default="", blank=True)
    created_at = models.DateTimeField(default=now, editable=False)

    class Meta:
        ordering = ["-started_at"]
        indexes = [
            models.Index(fields=["task", "-started_at"], name="run_task_recent_idx"),
            models.Index(fields=["status", "-started_at"], name="run_status_recent_idx"),
            # The API's order (newest first, id breaks ties): a page walks the index and stops.
            models.Index(fields=["-started_at", "-id"], name="run_recent_idx"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(attempt__gte=1), name="run_attempt_positive"),
            models.CheckConstraint(
                condition=Q(status__in=RunStatus.values), name="run_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(trigger__in=Trigger.values), name="run_trigger_valid"
            ),
            # A run is finished exactly when it has a finish time.
            models.CheckConstraint(
                condition=Q(status="running", finished_at__isnull=True)
                | (~Q(status="running") & Q(finished_at__isnull=False)),
                name="run_finished_iff_not_running",
            ),
            models.CheckConstraint(
                condition=Q(finished_at__isnull=True) | Q(finished_at__gte=F("started_at")),
                name="run_finish_after_start",
            ),
            # An attempt of an occurrence is recorded once, whatever races a worker loses.
            models.UniqueConstraint(
                fields=["occurrence_id", "attempt"],
                condition=Q(occurrence_id__isnull=False),
                name="run_one_per_attempt",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_id} attempt {self.attempt} ({self.status})"

    @property
    def success(self) -> bool | None:
        """The original API's tri-state: None while running."""
        if self.status in (RunStatus.RUNNING, RunStatus.WAITING_APPROVAL):
            return None
        return self.status == RunStatus.SUCCEEDED


class SkipReason(models.TextChoices):
    MISFIRE_SKIPPED = "misfire_skipped"  # missed while the scheduler was down; policy `skip`
    COALESCED = "coalesced"  # missed; folded into one late run by policy `coalesce`
    CATCH_UP_LIMIT = "catch_up_limit"  # missed beyond SCHEDULER_CATCHUP_MAX under `catch_up`
    PAUSED = "paused"  # fell due, or was queued, while the task was paused
    SNOOZED = "snoozed"  # folded into the one occurrence a snooze moved to its end
    CANCELED = "canceled"  # was queued when the task was canceled
    RESCHEDULED = "rescheduled"  # was queued when the task's schedule was changed
    AGENT_PAUSED = "agent_paused"  # fell due while its agent was paused or inactive
    BUDGET_EXCEEDED = "budget_exceeded"  # its agent had used up max_runs_per_hour


class SkippedOccurrence(models.Model):
    """The occurrence ledger: an instant the schedule produced that did not run, and why."""

    id = models.BigAutoField(primary_key=True)
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="skipped_occurrences")
    scheduled_for = models.DateTimeField()
    reason = models.CharField(max_length=32, choices=SkipReason.choices)
    # How late the instant was when it was given up (negative: given up before it was due).
    lateness_seconds = models.FloatField(default=0)
    details = models.JSONField(default=dict, blank=True)
    recorded_at = models.DateTimeField(default=now)

    class Meta:
        ordering = ["-scheduled_for"]
        indexes = [
            models.Index(fields=["task", "-scheduled_for"], name="skipped_task_idx"),
            # Retention deletes the oldest first (tasks/retention.py).
            models.Index(fields=["recorded_at"], name="skipped_recorded_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(reason__in=SkipReason.values), name="skipped_reason_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_id} @ {self.scheduled_for.isoformat()} ({self.reason})"


class SchedulerHeartbeat(models.Model):
    """One row per running scheduler process, refreshed every tick (for /health and admin)."""

    id = models.CharField(max_length=200, primary_key=True)
    host = models.CharField(max_length=200)
    pid = models.IntegerField()
    started_at = models.DateTimeField(default=now)
    last_seen = models.DateTimeField(default=now, db_index=True)
    # Counters since start and the latest tick's figures, for operators.
    ticks = models.BigIntegerField(default=0)
    enqueued = models.BigIntegerField(default=0)
    last_tick = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-last_seen"]

    def __str__(self) -> str:
        return self.id


class WorkerHeartbeat(models.Model):
    """One row per running worker process, refreshed while it runs (for /health and admin)."""

    id = models.CharField(max_length=200, primary_key=True)
    host = models.CharField(max_length=200)
    pid = models.IntegerField()
    started_at = models.DateTimeField(default=now)
    last_seen = models.DateTimeField(default=now, db_index=True)
    concurrency = models.IntegerField(default=1)
    running = models.IntegerField(default=0)
    processed = models.BigIntegerField(default=0)
    # Set when the worker starts its graceful shutdown (it deletes the row when done).
    stopping = models.BooleanField(default=False)

    class Meta:
        ordering = ["-last_seen"]

    def __str__(self) -> str:
        return self.id


# -- events in --------------------------------------------------------------------------------


class Event(models.Model):
    """An event an agent (or the inbound stream) published; it triggers event/condition tasks."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    topic = models.CharField(max_length=100)
    payload = models.JSONField(default=dict, blank=True)
    source_agent = models.ForeignKey(
        "agents.Agent", on_delete=models.PROTECT, null=True, blank=True, related_name="events"
    )
    # A retry with the same key (per source agent) gets the first event's response.
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)
    # How many tasks it enqueued, and how many of them are the publisher's own: the API
    # discloses only the latter (other agents' tasks are theirs); kept so that a repeated
    # request answers the same.
    triggered_tasks = models.IntegerField(default=0)
    publisher_triggered_tasks = models.IntegerField(default=0)
    published_at = models.DateTimeField(default=now, db_index=True)

    class Meta:
        ordering = ["-published_at"]
        indexes = [models.Index(fields=["topic", "-published_at"], name="event_topic_idx")]
        constraints = [
            models.UniqueConstraint(
                fields=["source_agent", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                nulls_distinct=False,
                name="event_idempotency_once",
            ),
            models.CheckConstraint(condition=~Q(topic=""), name="event_topic_not_empty"),
        ]

    def __str__(self) -> str:
        return f"{self.topic} @ {self.published_at.isoformat()}"


# -- events out -------------------------------------------------------------------------------


# Run outcomes an agent's webhook receives (outbox message types).
WEBHOOK_EVENT_TYPES = ["run.succeeded", "run.failed", "run.timed_out", "run.dead"]


class OutboxMessage(models.Model):
    """A lifecycle change, written in the transaction that made it; the relay publishes it.

    The relay (scheduler) XADDs unsent rows in id order to the Redis stream and stamps
    `sent_at`; while Redis is down they wait here, so nothing is lost.
    """

    id = models.BigAutoField(primary_key=True)
    # e.g. task.created, task.paused, run.started, run.succeeded, run.dead, approval.decided
    type = models.CharField(max_length=64)
    task_id = models.UUIDField(null=True, blank=True)
    run_id = models.UUIDField(null=True, blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=now)
    sent_at = models.DateTimeField(null=True, blank=True)
    # When tasks/delivery/webhooks.py turned this run outcome into deliveries (NULL: not yet).
    webhooked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            # The relay's scan: only the unsent backlog, however much history is kept.
            models.Index(
                fields=["id"], name="outbox_unsent_idx", condition=Q(sent_at__isnull=True)
            ),
            # The webhook fan-out's scan: run outcomes not yet turned into deliveries.
            models.Index(
                fields=["id"],
                name="outbox_unwebhooked_idx",
                condition=Q(webhooked_at__isnull=True, type__in=WEBHOOK_EVENT_TYPES),
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.id} {self.type}"


# -- approvals --------------------------------------------------------------------------------


class ApprovalStatus(models.TextChoices):
    PENDING = "pending"  # waiting for a decision; the run is parked
    APPROVED = "approved"  # decided yes; the run resumes after the step
    REJECTED = "rejected"  # decided no; the step's output says so (or the step fails)
    EXPIRED = "expired"  # nobody decided before expires_at; treated as a rejection


class Approval(models.Model):
    """A human decision an `approval.request` step is waiting for."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    task = models.ForeignKey(Task, on_delete=models.PROTECT, related_name="approvals")
    run = models.ForeignKey(Run, on_delete=models.PROTECT, related_name="approvals")
    # Not a foreign key, as on Run: the occurrence leaves the queue when it finishes.
    occurrence_id = models.BigIntegerField()
    step_id = models.CharField(max_length=200)
    prompt = models.TextField()
    # The step's `data`, cut to a readable excerpt for the decider.
    context = models.JSONField(null=True, blank=True)
    approvers = models.JSONField(default=list, blank=True)
    status = models.CharField(
        max_length=16, choices=ApprovalStatus.choices, default=ApprovalStatus.PENDING
    )
    expires_at = models.DateTimeField()
    decided_by = models.CharField(max_length=200, blank=True, default="")
    comment = models.TextField(blank=True, default="")
    decided_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=now)

    class Meta:
        ordering = ["-created_at"]
        # Operators decide approvals in the admin only with this permission (staff status
        # alone is not enough: an approval gates what a run may do).
        permissions = [("decide_approval", "Can approve or reject pending approvals")]
        indexes = [
            models.Index(
                fields=["expires_at"], name="approval_pending_idx", condition=Q(status="pending")
            ),
        ]
        constraints = [
            models.UniqueConstraint(fields=["run", "step_id"], name="approval_once_per_step"),
            models.CheckConstraint(
                condition=Q(status__in=ApprovalStatus.values), name="approval_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(status="pending", decided_at__isnull=True)
                | (~Q(status="pending") & Q(decided_at__isnull=False)),
                name="approval_decided_iff_not_pending",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.step_id}: {self.prompt[:40]} ({self.status})"


# -- webhooks ---------------------------------------------------------------------------------


class WebhookStatus(models.TextChoices):
    PENDING = "pending"  # waiting for its next attempt (next_attempt_at)
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED = "failed"  # refused target, or no 2xx within WEBHOOK_RETRY_WINDOW_SECONDS


class WebhookDelivery(models.Model):
    """One run outcome to POST to one agent's webhook_url, retried until delivered or failed."""

    id = models.BigAutoField(primary_key=True)
    outbox_message = models.ForeignKey(
        OutboxMessage, on_delete=models.PROTECT, related_name="webhook_deliveries"
    )
    agent = models.ForeignKey(
        "agents.Agent", on_delete=models.CASCADE, related_name="webhook_deliveries"
    )
    # Copied when the delivery is created: later edits of the agent do not redirect it.
    url = models.URLField(max_length=2000)
    event_type = models.CharField(max_length=64)
    payload = models.JSONField()
    status = models.CharField(
        max_length=16, choices=WebhookStatus.choices, default=WebhookStatus.PENDING
    )
    attempts = models.SmallIntegerField(default=0)
    # When it may be (re)sent; a sender's claim moves it ahead by a lease, so a crashed
    # sender's delivery is retried once the lease is over.
    next_attempt_at = models.DateTimeField(default=now)
    last_status_code = models.SmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "webhook deliveries"
        indexes = [
            # The sender's claim: only pending deliveries, in due order.
            models.Index(
                fields=["next_attempt_at"],
                name="webhook_due_idx",
                condition=Q(status="pending"),
            ),
            models.Index(fields=["agent", "-created_at"], name="webhook_agent_idx"),
            # Retention deletes finished deliveries, oldest first (tasks/retention.py).
            models.Index(
                fields=["created_at"], name="webhook_finished_idx", condition=~Q(status="pending")
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["outbox_message", "agent"], name="webhook_once_per_message_agent"
            ),
            models.CheckConstraint(
                condition=Q(status__in=WebhookStatus.values), name="webhook_status_valid"
            ),
            models.CheckConstraint(condition=Q(attempts__gte=0), name="webhook_attempts_nonneg"),
            # Delivered exactly when it has a delivery time.
            models.CheckConstraint(
                condition=Q(status="delivered", delivered_at__isnull=False)
                | (~Q(status="delivered") & Q(delivered_at__isnull=True)),
                name="webhook_delivered_iff_time",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} → {self.url} ({self.status})"


class WebhookAttempt(models.Model):
    """One HTTP POST of a delivery: what the receiver answered, or why there was no answer."""

    id = models.BigAutoField(primary_key=True)
    delivery = models.ForeignKey(
        WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log"
    )
    number = models.SmallIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.FloatField(default=0)
    status_code = models.SmallIntegerField(null=True, blank=True)
    # Connection error, timeout or refused target; empty when the receiver answered.
    error = models.TextField(blank=True, default="")
    response_excerpt = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["delivery", "number"]
        constraints = [
            models.UniqueConstraint(fields=["delivery", "number"], name="webhook_attempt_once"),
        ]

    def __str__(self) -> str:
        return f"attempt {self.number}: {self.status_code or self.error[:40]}"


# -- budgets ------------------------------------------------------------------------------------


class AgentLlmUsage(models.Model):
    """Tokens an agent's llm.* steps used on one UTC day, as the endpoints reported them:
    what its max_llm_tokens_per_day budget is checked against."""

    agent = models.ForeignKey("agents.Agent", on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    tokens = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["agent", "day"], name="llm_usage_once_per_day"),
        ]

    def __str__(self) -> str:
        return f"{self.agent_id} {self.day}: {self.tokens}"

    @staticmethod
    def day_of(instant: datetime | None = None) -> date:
        """The UTC day an instant counts in."""
        return (instant or now()).astimezone(UTC).date()

    @classmethod
    def tokens_on(cls, agent_id: Any, instant: datetime | None = None) -> int:
        """The tokens `agent_id` used on the UTC day of `instant` (default: today)."""
        found = cls.objects.filter(agent_id=agent_id, day=cls.day_of(instant))
        return found.values_list("tokens", flat=True).first() or 0

    @classmethod
    def add(cls, agent_id: Any, tokens: int) -> None:
        """Add `tokens` to the agent's day, atomically (concurrent steps each add theirs)."""
        with connection.cursor() as cursor:
            cursor.execute(_ADD_LLM_USAGE, [str(agent_id), cls.day_of(), tokens])


_ADD_LLM_USAGE = """
INSERT INTO tasks_agentllmusage (agent_id, day, tokens) VALUES (%s, %s, %s)
ON CONFLICT (agent_id, day) DO UPDATE SET tokens = tasks_agentllmusage.tokens + EXCLUDED.tokens
"""
