"""Request and response shapes of /tasks, /runs and /schedules (the original's field names)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from rest_framework import serializers

from agents.models import Agent
from agents.permissions import acting_agent
from ordinaut.api import (
    PageQuerySerializer,
    PageSerializer,
    StrictSerializer,
    iso,
    reject_nul,
    validated,
)
from tasks.models import (
    ApprovalStatus,
    BackoffStrategy,
    MisfirePolicy,
    Run,
    RunStatus,
    ScheduleKind,
    SkippedOccurrence,
    SkipReason,
    Task,
    TaskStatus,
    Trigger,
)
from tasks.validation import (
    MAX_DEDUPE_WINDOW_SECONDS,
    MAX_RETRIES,
    MAX_SNOOZE_SECONDS,
    MAX_TIMEOUT_SECONDS,
)

HIDDEN_ERROR = "[Error details hidden - use include_errors=true]"


class PayloadField(serializers.JSONField):
    """A JSON object (the pipeline definition); its contents are checked by the service."""

    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be an object")
        reject_nul(value, self.field_name)
        return value


def _schedule_expr_field(**kwargs: Any) -> serializers.CharField:
    return serializers.CharField(
        max_length=4096,
        allow_null=True,
        allow_blank=True,
        help_text="Cron string, RRULE, ISO 8601 instant, or event topic (per schedule_kind).",
        **kwargs,
    )


class TaskCreateSerializer(StrictSerializer):
    title = serializers.CharField(min_length=1, max_length=200)
    description = serializers.CharField(
        max_length=2000, required=False, allow_blank=True, default=""
    )
    schedule_kind = serializers.ChoiceField(choices=ScheduleKind.choices)
    schedule_expr = _schedule_expr_field(required=False, default=None)
    timezone = serializers.CharField(
        max_length=64, required=False, help_text="IANA zone; defaults to the server's TZ."
    )
    payload = PayloadField(help_text="{params?, pipeline: [steps]}; see GET /schemas/pipeline.")
    priority = serializers.IntegerField(
        min_value=1, max_value=9, default=5, help_text="1..9; 9 is the most urgent."
    )
    dedupe_key = serializers.CharField(max_length=100, required=False, allow_null=True)
    dedupe_window_seconds = serializers.IntegerField(
        min_value=0, max_value=MAX_DEDUPE_WINDOW_SECONDS, default=0
    )
    max_retries = serializers.IntegerField(min_value=0, max_value=MAX_RETRIES, required=False)
    backoff_strategy = serializers.ChoiceField(
        choices=BackoffStrategy.choices, default=BackoffStrategy.EXPONENTIAL_JITTER
    )
    concurrency_key = serializers.CharField(max_length=100, required=False, allow_null=True)
    misfire_policy = serializers.ChoiceField(
        choices=MisfirePolicy.choices, default=MisfirePolicy.COALESCE
    )
    timeout_seconds = serializers.IntegerField(
        min_value=1, max_value=MAX_TIMEOUT_SECONDS, required=False, allow_null=True
    )
    created_by = serializers.UUIDField(
        required=False,
        allow_null=True,
        help_text="Optional: taken from the token. If sent, must be the caller (or caller admin).",
    )


class TaskUpdateSerializer(StrictSerializer):
    """Every field optional: PUT and PATCH are both partial, as the original's PUT was."""

    title = serializers.CharField(min_length=1, max_length=200, required=False)
    description = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    schedule_kind = serializers.ChoiceField(choices=ScheduleKind.choices, required=False)
    schedule_expr = _schedule_expr_field(required=False)
    timezone = serializers.CharField(max_length=64, required=False)
    payload = PayloadField(required=False)
    priority = serializers.IntegerField(min_value=1, max_value=9, required=False)
    status = serializers.ChoiceField(choices=TaskStatus.choices, required=False)
    dedupe_key = serializers.CharField(max_length=100, required=False, allow_null=True)
    dedupe_window_seconds = serializers.IntegerField(
        min_value=0, max_value=MAX_DEDUPE_WINDOW_SECONDS, required=False
    )
    max_retries = serializers.IntegerField(min_value=0, max_value=MAX_RETRIES, required=False)
    backoff_strategy = serializers.ChoiceField(choices=BackoffStrategy.choices, required=False)
    concurrency_key = serializers.CharField(max_length=100, required=False, allow_null=True)
    misfire_policy = serializers.ChoiceField(choices=MisfirePolicy.choices, required=False)
    timeout_seconds = serializers.IntegerField(
        min_value=1, max_value=MAX_TIMEOUT_SECONDS, required=False, allow_null=True
    )


def task_create_arguments(data: Any, *, caller: Agent, caller_is_admin: bool) -> dict[str, Any]:
    """`services.task_create_deduplicated`'s keyword arguments for a create request.

    The one preparation REST's POST /tasks and MCP's create_task share: validate the fields
    (422 naming them), resolve `created_by` by the acting-agent rule, default the zone to
    TIME_ZONE and the dedupe key to none. The service then checks the pipeline against
    the tools and the creator's scopes.
    """
    arguments = validated(TaskCreateSerializer, data)
    arguments["created_by"] = acting_agent(
        caller,
        arguments.pop("created_by", None),
        field="created_by",
        caller_is_admin=caller_is_admin,
    )
    arguments["timezone_name"] = arguments.pop("timezone", None) or settings.TIME_ZONE
    arguments.setdefault("dedupe_key", None)
    return arguments


def task_update_changes(data: Any) -> dict[str, Any]:
    """`services.task_update`'s changes for an update request (REST's PUT/PATCH, MCP's)."""
    return validated(TaskUpdateSerializer, data)


class TaskSerializer(serializers.Serializer):
    """The original's TaskResponse, plus misfire_policy, timeout_seconds and next_run_at."""

    id = serializers.UUIDField()
    title = serializers.CharField()
    description = serializers.CharField(allow_blank=True)
    created_by = serializers.UUIDField()
    schedule_kind = serializers.ChoiceField(choices=ScheduleKind.choices)
    schedule_expr = serializers.CharField(allow_null=True)
    timezone = serializers.CharField()
    payload = serializers.DictField()
    status = serializers.ChoiceField(choices=TaskStatus.choices)
    priority = serializers.IntegerField()
    dedupe_key = serializers.CharField(allow_null=True)
    dedupe_window_seconds = serializers.IntegerField()
    max_retries = serializers.IntegerField()
    backoff_strategy = serializers.ChoiceField(choices=BackoffStrategy.choices)
    concurrency_key = serializers.CharField(allow_null=True)
    misfire_policy = serializers.ChoiceField(choices=MisfirePolicy.choices)
    timeout_seconds = serializers.IntegerField(allow_null=True)
    next_run_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


def task_data(task: Task) -> dict[str, Any]:
    """A task as TaskSerializer describes it (a plain function: lists render fast)."""
    return {
        "id": str(task.id),
        "title": task.title,
        "description": task.description,
        "created_by": str(task.created_by_id),
        "schedule_kind": task.schedule_kind,
        "schedule_expr": task.schedule_expr,
        "timezone": task.timezone,
        "payload": task.payload,
        "status": task.status,
        "priority": task.priority,
        "dedupe_key": task.dedupe_key,
        "dedupe_window_seconds": task.dedupe_window_seconds,
        "max_retries": task.max_retries,
        "backoff_strategy": task.backoff_strategy,
        "concurrency_key": task.concurrency_key,
        "misfire_policy": task.misfire_policy,
        "timeout_seconds": task.timeout_seconds,
        "next_run_at": iso(task.next_run_at),
        "created_at": iso(task.created_at),
        "updated_at": iso(task.updated_at),
    }


class TaskListSerializer(PageSerializer):
    items = TaskSerializer(many=True)


class TaskListQuerySerializer(PageQuerySerializer):
    status = serializers.ChoiceField(choices=TaskStatus.choices, required=False)
    created_by = serializers.UUIDField(required=False)
    schedule_kind = serializers.ChoiceField(choices=ScheduleKind.choices, required=False)


class SnoozeSerializer(StrictSerializer):
    delay_seconds = serializers.IntegerField(min_value=1, max_value=MAX_SNOOZE_SECONDS)
    reason = serializers.CharField(max_length=200, required=False, allow_null=True)


def snooze_data(task: Task, *, delay_seconds: int, until: datetime, affected: int) -> dict:
    """What POST /tasks/{id}/snooze and MCP's snooze_task report."""
    return {
        "task_id": str(task.id),
        "delay_seconds": delay_seconds,
        "snoozed_until": iso(until),
        "affected_work_items": affected,
    }


def stats_data(stats: dict[str, Any]) -> dict[str, Any]:
    """Run statistics with their instants as ISO 8601 text."""
    return {
        key: iso(value) if isinstance(value, datetime) else value for key, value in stats.items()
    }


class RunSerializer(serializers.Serializer):
    """The original's TaskRunResponse, plus status, scheduled_for, trigger, correlation_id."""

    id = serializers.UUIDField()
    task_id = serializers.UUIDField()
    lease_owner = serializers.CharField(allow_null=True)
    leased_until = serializers.DateTimeField(allow_null=True)
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    success = serializers.BooleanField(allow_null=True)
    error = serializers.CharField(allow_null=True)
    attempt = serializers.IntegerField()
    output = serializers.JSONField(allow_null=True)
    created_at = serializers.DateTimeField()
    status = serializers.ChoiceField(choices=RunStatus.choices)
    scheduled_for = serializers.DateTimeField()
    trigger = serializers.ChoiceField(choices=Trigger.choices)
    correlation_id = serializers.CharField(allow_blank=True)


class RunDetailSerializer(RunSerializer):
    steps = serializers.ListField(child=serializers.DictField(), help_text="Per-step results.")


def run_data(run: Run, *, include_error: bool = True, include_steps: bool = False) -> dict:
    """A run as RunSerializer (or, with steps, RunDetailSerializer) describes it."""
    error = run.error
    if error and not include_error:
        error = HIDDEN_ERROR
    data = {
        "id": str(run.id),
        "task_id": str(run.task_id),
        "lease_owner": run.lease_owner or None,
        "leased_until": iso(run.leased_until),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "success": run.success,
        "error": error,
        "attempt": run.attempt,
        "output": run.output,
        "created_at": iso(run.created_at),
        "status": run.status,
        "scheduled_for": iso(run.scheduled_for),
        "trigger": run.trigger,
        "correlation_id": run.correlation_id,
    }
    if include_steps:
        data["steps"] = run.steps
    return data


class RunListSerializer(PageSerializer):
    items = RunSerializer(many=True)


class LedgerEntrySerializer(serializers.Serializer):
    """An instant the schedule produced that did not run, and why."""

    scheduled_for = serializers.DateTimeField(help_text="The instant that did not run.")
    reason = serializers.ChoiceField(choices=SkipReason.choices)
    lateness_seconds = serializers.FloatField(
        help_text="How late the instant was when it was given up (negative: before it was due)."
    )
    details = serializers.DictField()
    recorded_at = serializers.DateTimeField()


class LedgerListSerializer(PageSerializer):
    items = LedgerEntrySerializer(many=True)


def ledger_entry_data(entry: SkippedOccurrence) -> dict[str, Any]:
    return {
        "scheduled_for": iso(entry.scheduled_for),
        "reason": entry.reason,
        "lateness_seconds": round(entry.lateness_seconds, 3),
        "details": entry.details,
        "recorded_at": iso(entry.recorded_at),
    }


class RunListQuerySerializer(PageQuerySerializer):
    task_id = serializers.UUIDField(required=False)
    success = serializers.BooleanField(required=False, allow_null=True)
    include_errors = serializers.BooleanField(required=False, default=False)
    start_time = serializers.DateTimeField(required=False, help_text="Runs started at or after.")
    end_time = serializers.DateTimeField(required=False, help_text="Runs started at or before.")


class StatsQuerySerializer(serializers.Serializer):
    days = serializers.IntegerField(min_value=1, max_value=365, required=False)


class TaskStatsSerializer(serializers.Serializer):
    task_id = serializers.UUIDField()
    period_days = serializers.IntegerField()
    total_runs = serializers.IntegerField()
    successful_runs = serializers.IntegerField()
    failed_runs = serializers.IntegerField()
    success_rate = serializers.FloatField()
    failure_rate = serializers.FloatField()
    avg_execution_time_seconds = serializers.FloatField()
    last_run = serializers.DateTimeField(allow_null=True)
    last_success = serializers.DateTimeField(allow_null=True)
    last_failure = serializers.DateTimeField(allow_null=True)


class StatsSummarySerializer(serializers.Serializer):
    period_days = serializers.IntegerField()
    total_runs = serializers.IntegerField()
    total_tasks_executed = serializers.IntegerField()
    successful_runs = serializers.IntegerField()
    failed_runs = serializers.IntegerField()
    success_rate = serializers.FloatField()
    failure_rate = serializers.FloatField()
    avg_execution_time_seconds = serializers.FloatField()
    runs_per_day = serializers.FloatField()


class PreviewQuerySerializer(serializers.Serializer):
    n = serializers.IntegerField(min_value=1, max_value=100, default=10)


class SchedulePreviewSerializer(StrictSerializer):
    schedule_kind = serializers.ChoiceField(choices=ScheduleKind.choices)
    schedule_expr = serializers.CharField(max_length=4096)
    timezone = serializers.CharField(max_length=64, required=False)
    n = serializers.IntegerField(min_value=1, max_value=100, default=10)
    after = serializers.DateTimeField(required=False, help_text="Default: now.")


class OccurrencePreviewSerializer(serializers.Serializer):
    utc = serializers.DateTimeField()
    local = serializers.DateTimeField()
    utc_offset = serializers.CharField()
    dst_shifted = serializers.BooleanField(
        help_text="The wall time did not exist (spring-forward gap); fires at the gap's end."
    )
    dst_ambiguous = serializers.BooleanField(
        help_text="The wall time occurs twice (fall-back); fires once, at its first instant."
    )


class PreviewSerializer(serializers.Serializer):
    schedule_kind = serializers.CharField()
    schedule_expr = serializers.CharField(allow_null=True)
    timezone = serializers.CharField()
    occurrences = OccurrencePreviewSerializer(many=True)


# -- events ----------------------------------------------------------------------------------


class EventPublishSerializer(StrictSerializer):
    # Length and alphabet are checked by the service (tasks.events), with one message.
    topic = serializers.CharField(max_length=1000, trim_whitespace=False)
    payload = PayloadField(default=dict)
    idempotency_key = serializers.CharField(max_length=200, required=False, allow_null=True)
    source_agent_id = serializers.UUIDField(required=False, allow_null=True)


class EventPublishedSerializer(serializers.Serializer):
    event_id = serializers.UUIDField()
    topic = serializers.CharField()
    triggered_tasks = serializers.IntegerField()
    published_at = serializers.DateTimeField()


def event_published_data(event: Any) -> dict[str, Any]:
    """The `details` of POST /events (the same for a repeated idempotency key)."""
    return {
        "event_id": str(event.id),
        "topic": event.topic,
        # Only the publisher's own: whether another agent's tasks fired is theirs to know.
        "triggered_tasks": event.publisher_triggered_tasks,
        "published_at": iso(event.published_at),
    }


# -- approvals -------------------------------------------------------------------------------


class ApprovalListQuerySerializer(PageQuerySerializer):
    status = serializers.ChoiceField(choices=ApprovalStatus.choices, required=False)


class ApprovalDecisionSerializer(StrictSerializer):
    comment = serializers.CharField(max_length=2000, required=False, allow_blank=True)


class ApprovalSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    task_id = serializers.UUIDField()
    run_id = serializers.UUIDField()
    step_id = serializers.CharField()
    prompt = serializers.CharField()
    context = serializers.JSONField(allow_null=True)
    approvers = serializers.ListField(child=serializers.CharField())
    status = serializers.ChoiceField(choices=ApprovalStatus.choices)
    expires_at = serializers.DateTimeField()
    created_at = serializers.DateTimeField()
    decided_by = serializers.CharField(allow_blank=True)
    comment = serializers.CharField(allow_blank=True)
    decided_at = serializers.DateTimeField(allow_null=True)


class ApprovalListSerializer(PageSerializer):
    items = ApprovalSerializer(many=True)


def approval_data(approval: Any) -> dict[str, Any]:
    return {
        "id": str(approval.id),
        "task_id": str(approval.task_id),
        "run_id": str(approval.run_id),
        "step_id": approval.step_id,
        "prompt": approval.prompt,
        "context": approval.context,
        "approvers": approval.approvers,
        "status": approval.status,
        "expires_at": iso(approval.expires_at),
        "created_at": iso(approval.created_at),
        "decided_by": approval.decided_by,
        "comment": approval.comment,
        "decided_at": iso(approval.decided_at),
    }


# -- budgets ------------------------------------------------------------------------------------


class BudgetUsageSerializer(serializers.Serializer):
    limit = serializers.IntegerField(allow_null=True, help_text="null: unlimited")
    usage = serializers.IntegerField()


class AgentUsageSerializer(serializers.Serializer):
    agent_id = serializers.UUIDField()
    at = serializers.DateTimeField()
    budgets = serializers.DictField(
        child=BudgetUsageSerializer(),
        help_text="max_active_tasks, max_runs_per_hour, max_concurrent_runs, "
        "max_llm_tokens_per_day",
    )
