import json
import re
from datetime import UTC, datetime
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Exists, IntegerField, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from audit.services import Actor
from ordinaut.errors import InvalidInput, OrdinautError
from tasks import approvals, services
from tasks.console import FAILED_STATUSES, lateness_in_words, seconds_in_words
from tasks.models import (
    Approval,
    ApprovalStatus,
    Event,
    Occurrence,
    OccurrenceState,
    OutboxMessage,
    Run,
    RunStatus,
    SchedulerHeartbeat,
    SkippedOccurrence,
    Task,
    TaskStatus,
    WebhookAttempt,
    WebhookDelivery,
    WorkerHeartbeat,
)
from tasks.validation import revalidate_changes


class ReadOnlyAdmin(admin.ModelAdmin):
    """Queue and history rows change only through services; the admin shows them."""

    def has_add_permission(self, request) -> bool:  # noqa: ANN001
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # noqa: ANN001
        return False

    def has_delete_permission(self, request, obj=None) -> bool:  # noqa: ANN001
        return False


def _button(modeladmin: admin.ModelAdmin, route: str, view: Any, name: str) -> Any:
    """The URL a console button posts to: behind the admin's login and CSRF, POST only."""
    return path(route, modeladmin.admin_site.admin_view(require_POST(view)), name=name)


def _back(request: HttpRequest, fallback: str) -> HttpResponseRedirect:
    """Back to the page the button was on (same host only), else `fallback`."""
    target = request.POST.get("next") or request.headers.get("Referer", "")
    if not url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
        target = fallback
    return HttpResponseRedirect(target)


# The task page's buttons: each calls the same service as the API's endpoint.
TASK_CONTROLS = {
    "pause": (services.task_pause, "Paused"),
    "resume": (services.task_resume, "Resumed"),
    "cancel": (services.task_cancel, "Canceled"),
    "run_now": (services.task_run_now, "Queued a run of"),
}


def _apply(modeladmin, request, queryset, service, eligible, verb: str) -> None:  # noqa: ANN001
    """Call `service` for each eligible task; report how many changed and why others did not."""
    actor = Actor.user(request.user)
    done, failed = 0, []
    for task in queryset.filter(status__in=eligible):
        try:
            service(task_id=task.pk, actor=actor)
            done += 1
        except OrdinautError as exc:
            failed.append(f"{task.title}: {exc.message}")
    skipped = queryset.count() - done - len(failed)
    modeladmin.message_user(request, f"{verb} {done} task(s).", messages.SUCCESS)
    if skipped:
        modeladmin.message_user(
            request, f"{skipped} task(s) were not eligible and were left alone.", messages.INFO
        )
    for failure in failed:
        modeladmin.message_user(request, failure, messages.ERROR)


def _truncated(text: str | None, length: int = 60) -> str:
    """Long text cut for a table cell, the whole of it on hover."""
    text = text or ""
    if len(text) <= length:
        return text
    return format_html('<span title="{}">{}…</span>', text, text[: length - 1])


# Status in words and a symbol, never by color alone.
_STATUS_MARK = {"succeeded": "✔", "failed": "✖", "timed_out": "⏱", "lost": "✖", "canceled": "⊘",
                "running": "▶", "waiting_approval": "⏸"}  # fmt: skip


def _status(status: str, *, decided: bool = False) -> str:
    if status == RunStatus.WAITING_APPROVAL and decided:
        # The decision came and the next attempt took over: this one only waited.
        return "⏸ waited for approval"
    return f"{_STATUS_MARK.get(status, '•')} {status.replace('_', ' ')}"


class PrettyJSONField(forms.JSONField):
    """A JSON textarea that shows its value indented, so a pipeline can be read and edited."""

    def prepare_value(self, value: Any) -> str:
        if isinstance(value, str):
            return value  # a bound value being shown back with its error
        return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


# What an operator may edit on the task page; the rest is identity or the scheduler's.
TASK_EDITABLE = [
    "title", "description", "schedule_kind", "schedule_expr", "timezone", "payload",
    "priority", "max_retries", "timeout_seconds", "misfire_policy", "backoff_strategy",
    "concurrency_key",
]  # fmt: skip


class TaskForm(forms.ModelForm):
    """Validated exactly as the API validates an update (tasks.validation), each reason
    shown next to its field; saved by TaskAdmin through services.task_update."""

    payload = PrettyJSONField(widget=forms.Textarea(attrs={"rows": 16, "cols": 90}))

    class Meta:
        model = Task
        fields = TASK_EDITABLE

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        changes = {name: cleaned[name] for name in self.changed_data if name in cleaned}
        if not changes or self.errors:
            return cleaned
        probe = Task.objects.select_related("created_by").get(pk=self.instance.pk)
        for name, value in changes.items():
            setattr(probe, name, value)
        try:
            revalidate_changes(probe, changes, timezone.now())
        except InvalidInput as exc:
            self._add_api_errors(exc)
        return cleaned

    def _add_api_errors(self, exc: InvalidInput) -> None:
        """The API's 422 details ({"payload.pipeline[0].uses": [...]}) on their fields."""
        placed = False
        for location, reasons in (exc.details or {}).items():
            field = re.split(r"[.\[]", str(location), maxsplit=1)[0]
            target = field if field in self.fields else None
            for reason in reasons if isinstance(reasons, list) else [reasons]:
                where = "" if target == location else f"{location}: "
                self.add_error(target, f"{where}{reason}")
                placed = True
        if not placed:
            self.add_error(None, exc.message)


@admin.register(Task)
class TaskAdmin(ReadOnlyAdmin):
    list_display = [
        "title", "status", "schedule_kind", "schedule", "timezone", "next_run_at",
        "last_run", "failing_streak", "created_by",
    ]  # fmt: skip
    list_filter = ["status", "schedule_kind", "priority", "misfire_policy", "timezone"]
    search_fields = ["title", "description", "id", "schedule_expr", "created_by__name"]
    date_hierarchy = "created_at"
    list_select_related = ["created_by"]
    form = TaskForm
    readonly_fields = [f.name for f in Task._meta.fields if f.name not in TASK_EDITABLE]
    actions = ["pause", "resume", "cancel", "run_now"]

    change_form_template = "admin/console/task_change_form.html"

    def get_queryset(self, request):  # noqa: ANN001, ANN201
        runs = Run.objects.filter(task=OuterRef("pk")).order_by("-started_at")
        last_success = (
            Run.objects.filter(task=OuterRef(OuterRef("pk")), status=RunStatus.SUCCEEDED)
            .order_by("-started_at").values("started_at")[:1]
        )  # fmt: skip
        since = Coalesce(Subquery(last_success), Value(datetime(1970, 1, 1, tzinfo=UTC)))
        streak = (
            Run.objects.filter(task=OuterRef("pk"), status__in=FAILED_STATUSES,
                               started_at__gt=since)
            .order_by().values("task").annotate(n=Count("id")).values("n")
        )  # fmt: skip
        return (
            super()
            .get_queryset(request)
            .annotate(
                _last_status=Subquery(runs.values("status")[:1]),
                _last_started=Subquery(runs.values("started_at")[:1]),
                _streak=Coalesce(Subquery(streak, output_field=IntegerField()), 0),
            )
        )

    @admin.display(description="schedule")
    def schedule(self, obj: Task) -> str:
        return _truncated(obj.schedule_expr, 40)

    @admin.display(description="last run", ordering="_last_started")
    def last_run(self, obj: Task) -> str:
        if not obj._last_status:
            return "never"
        when = timezone.localtime(obj._last_started).strftime("%Y-%m-%d %H:%M %Z")
        return f"{_status(obj._last_status)}, {when}"

    @admin.display(description="failing streak", ordering="_streak")
    def failing_streak(self, obj: Task) -> str:
        return f"{obj._streak} failed in a row" if obj._streak else "—"

    def has_change_permission(self, request, obj=None) -> bool:  # noqa: ANN001
        return request.user.has_perm("tasks.change_task")

    def save_model(self, request, obj, form, change) -> None:  # noqa: ANN001
        """Through the same service as PATCH /tasks/{id}: rescheduling, ledger and audit."""
        changes = {name: form.cleaned_data[name] for name in form.changed_data}
        if changes:
            updated = services.task_update(
                task_id=obj.pk, changes=changes, actor=Actor.user(request.user)
            )
            obj.refresh_from_db()
            obj.next_run_at = updated.next_run_at

    def get_urls(self) -> list:
        route = "<uuid:task_id>/control/<str:action>/"
        return [_button(self, route, self.control_view, "tasks_task_control"), *super().get_urls()]

    def control_view(self, request: HttpRequest, task_id: Any, action: str) -> Any:
        """POST from the task page: pause, resume, cancel (confirmed), run now, snooze."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        task = get_object_or_404(Task, pk=task_id)
        page = reverse("admin:tasks_task_change", args=[task.pk])
        actor = Actor.user(request.user)
        try:
            if action == "snooze":
                minutes = int(request.POST.get("minutes", "0"))
                services.task_snooze(task_id=task.pk, delay_seconds=minutes * 60, actor=actor)
                done = f"Snoozed {task.title!r} for {minutes} min."
            elif action in TASK_CONTROLS:
                if action == "cancel" and request.POST.get("confirm") != "yes":
                    self.message_user(request, "Cancel needs confirming.", messages.WARNING)
                    return HttpResponseRedirect(page)
                service, verb = TASK_CONTROLS[action]
                service(task_id=task.pk, actor=actor)
                done = f"{verb} {task.title!r}."
            else:
                raise PermissionDenied(f"unknown control {action!r}")
        except (OrdinautError, ValueError) as exc:
            self.message_user(request, getattr(exc, "message", str(exc)), messages.ERROR)
            return HttpResponseRedirect(page)
        self.message_user(request, done, messages.SUCCESS)
        return HttpResponseRedirect(page)

    def change_view(self, request, object_id, form_url="", extra_context=None):  # noqa: ANN001, ANN201
        from tasks import console

        task = self.get_object(request, object_id)
        extra = dict(extra_context or {})
        if task is not None:
            extra.update(console.task_page(task), title=f"Task: {task.title}")
        return super().change_view(request, object_id, form_url, extra)

    @admin.action(description="Pause selected tasks", permissions=["change"])
    def pause(self, request, queryset) -> None:  # noqa: ANN001
        _apply(self, request, queryset, services.task_pause, [TaskStatus.ACTIVE], "Paused")

    @admin.action(description="Resume selected tasks", permissions=["change"])
    def resume(self, request, queryset) -> None:  # noqa: ANN001
        _apply(self, request, queryset, services.task_resume, [TaskStatus.PAUSED], "Resumed")

    @admin.action(description="Cancel selected tasks", permissions=["change"])
    def cancel(self, request, queryset) -> None:  # noqa: ANN001
        eligible = [TaskStatus.ACTIVE, TaskStatus.PAUSED]
        _apply(self, request, queryset, services.task_cancel, eligible, "Canceled")

    @admin.action(description="Run selected tasks now", permissions=["change"])
    def run_now(self, request, queryset) -> None:  # noqa: ANN001
        eligible = [TaskStatus.ACTIVE, TaskStatus.PAUSED]
        _apply(self, request, queryset, services.task_run_now, eligible, "Queued")


@admin.register(Occurrence)
class OccurrenceAdmin(ReadOnlyAdmin):
    list_display = [
        "id", "task", "state", "run_at", "lateness", "priority", "attempt", "trigger",
        "lease_owner",
    ]  # fmt: skip
    list_filter = ["state", "trigger", "priority"]

    @admin.display(description="lateness", ordering="run_at")
    def lateness(self, obj: Occurrence) -> str:
        if obj.state != OccurrenceState.QUEUED:
            return "—"
        return lateness_in_words(obj.run_at)

    search_fields = ["task__title", "task__id", "lease_owner", "correlation_id"]
    date_hierarchy = "run_at"
    list_select_related = ["task"]
    readonly_fields = [f.name for f in Occurrence._meta.fields]
    actions = ["rerun_dead"]

    def has_change_permission(self, request, obj=None) -> bool:  # noqa: ANN001
        return request.user.has_perm("tasks.change_occurrence")

    def get_urls(self) -> list:
        route = "<int:occurrence_id>/rerun/"
        return [
            _button(self, route, self.rerun_view, "tasks_occurrence_rerun"),
            *super().get_urls(),
        ]

    def rerun_view(self, request: HttpRequest, occurrence_id: int) -> HttpResponseRedirect:
        """The dashboard's Re-run button for one dead occurrence."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        new_ids = services.occurrence_rerun_dead(
            occurrence_ids=[occurrence_id], actor=Actor.user(request.user)
        )
        if new_ids:
            self.message_user(request, f"Requeued occurrence {occurrence_id}.", messages.SUCCESS)
        else:
            self.message_user(request, f"Occurrence {occurrence_id} is not dead.", messages.INFO)
        return _back(request, reverse("admin:index"))

    @admin.action(description="Re-run selected dead occurrences", permissions=["change"])
    def rerun_dead(self, request, queryset) -> None:  # noqa: ANN001
        ids = list(queryset.filter(state="dead").values_list("id", flat=True))
        new_ids = services.occurrence_rerun_dead(occurrence_ids=ids, actor=Actor.user(request.user))
        self.message_user(request, f"Requeued {len(new_ids)} dead occurrence(s).", messages.SUCCESS)
        if len(ids) < queryset.count():
            self.message_user(request, "Only dead occurrences can be re-run.", messages.INFO)


@admin.register(SkippedOccurrence)
class SkippedOccurrenceAdmin(ReadOnlyAdmin):
    list_display = ["task", "scheduled_for", "reason", "lateness", "recorded_at"]

    @admin.display(description="lateness", ordering="lateness_seconds")
    def lateness(self, obj: SkippedOccurrence) -> str:
        return f"{seconds_in_words(obj.lateness_seconds)} late" if obj.lateness_seconds else "—"

    list_filter = ["reason", "recorded_at"]
    search_fields = ["task__title", "task__id"]
    date_hierarchy = "scheduled_for"
    list_select_related = ["task"]
    readonly_fields = [f.name for f in SkippedOccurrence._meta.fields]


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(ReadOnlyAdmin):
    list_display = ["id", "host", "pid", "started_at", "last_seen", "concurrency", "running",
                    "processed"]  # fmt: skip
    readonly_fields = [f.name for f in WorkerHeartbeat._meta.fields]


@admin.register(SchedulerHeartbeat)
class SchedulerHeartbeatAdmin(ReadOnlyAdmin):
    list_display = ["id", "host", "pid", "started_at", "last_seen", "ticks", "enqueued"]
    readonly_fields = [f.name for f in SchedulerHeartbeat._meta.fields]


def _no_save_buttons() -> dict[str, bool]:
    """Pages whose fields are all read-only show no Save buttons."""
    return {"show_save": False, "show_save_and_continue": False,
            "show_save_and_add_another": False, "show_delete": False}  # fmt: skip


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    change_form_template = "admin/console/run_change_form.html"

    def change_view(self, request, object_id, form_url="", extra_context=None):  # noqa: ANN001, ANN201
        from tasks import console

        run = self.get_object(request, object_id)
        extra = dict(extra_context or {})
        if run is not None:
            extra.update(console.run_page(run), title=f"Run of {run.task.title} "
                         f"(attempt {run.attempt}, {run.status})")  # fmt: skip
        return super().change_view(request, object_id, form_url, extra)

    list_display = [
        "run", "task", "agent", "run_status", "attempt", "trigger", "started_at", "duration",
        "error_line",
    ]  # fmt: skip
    list_filter = [
        "status", "trigger", ("task__created_by", admin.RelatedOnlyFieldListFilter),
        ("task", admin.RelatedOnlyFieldListFilter), "started_at", "finished_at",
    ]  # fmt: skip
    search_fields = ["id", "task__title", "task__id", "correlation_id", "error"]

    @admin.display(description="run", ordering="started_at")
    def run(self, obj: Run) -> str:
        return str(obj.pk)[:8]

    @admin.display(description="agent", ordering="task__created_by__name")
    def agent(self, obj: Run) -> str:
        return obj.task.created_by.name

    def get_queryset(self, request):  # noqa: ANN001, ANN201
        decided = Approval.objects.filter(run=OuterRef("pk")).exclude(status=ApprovalStatus.PENDING)
        return super().get_queryset(request).annotate(_decided=Exists(decided))

    @admin.display(description="status", ordering="status")
    def run_status(self, obj: Run) -> str:
        return _status(obj.status, decided=obj._decided)

    @admin.display(description="duration")
    def duration(self, obj: Run) -> str:
        if obj.finished_at is None:
            return "running" if obj.status == RunStatus.RUNNING else "—"
        return seconds_in_words((obj.finished_at - obj.started_at).total_seconds())

    @admin.display(description="error")
    def error_line(self, obj: Run) -> str:
        first = (obj.error or "").strip().splitlines()
        return _truncated(first[0] if first else "", 60)

    date_hierarchy = "started_at"
    list_select_related = ["task", "task__created_by"]
    # Output and steps are shown pretty-printed above the fields (run_change_form.html).
    exclude = ["output", "steps"]
    readonly_fields = [f.name for f in Run._meta.fields if f.name not in ("output", "steps")]


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ["topic", "published_at", "source_agent", "triggered_tasks", "idempotency_key"]
    list_filter = ["topic"]
    search_fields = ["topic", "id", "idempotency_key"]
    date_hierarchy = "published_at"
    list_select_related = ["source_agent"]


@admin.register(OutboxMessage)
class OutboxMessageAdmin(ReadOnlyAdmin):
    list_display = ["id", "type", "task_id", "run_id", "created_at", "sent_at"]
    list_filter = ["type", ("sent_at", admin.EmptyFieldListFilter)]
    search_fields = ["type", "task_id", "run_id"]


def _decide(modeladmin, request, queryset, decision: str) -> None:  # noqa: ANN001
    """Decide each pending approval as the operator; report counts and refusals."""
    actor = Actor.user(request.user)
    done, failed = 0, []
    for approval in queryset.filter(status=ApprovalStatus.PENDING):
        try:
            approvals.approval_decide(
                approval_id=approval.pk, decision=decision, actor=actor,
                comment=f"{decision}d in the admin",
            )  # fmt: skip
            done += 1
        except OrdinautError as exc:
            failed.append(f"{approval}: {exc.message}")
    modeladmin.message_user(request, f"{decision.capitalize()}d {done} approval(s).")
    skipped = queryset.exclude(status=ApprovalStatus.PENDING).count()
    if skipped:
        modeladmin.message_user(request, f"{skipped} already decided; left alone.", messages.INFO)
    for failure in failed:
        modeladmin.message_user(request, failure, messages.ERROR)


@admin.register(Approval)
class ApprovalAdmin(ReadOnlyAdmin):
    list_display = ["prompt", "status", "task", "step_id", "expires_at", "decided_by", "created_at"]
    list_filter = ["status"]
    search_fields = ["prompt", "id", "task__title", "step_id"]
    list_select_related = ["task"]
    readonly_fields = [f.name for f in Approval._meta.fields]
    actions = ["approve", "reject"]

    @admin.action(description="Approve selected pending approvals", permissions=["decide"])
    def approve(self, request, queryset) -> None:  # noqa: ANN001
        _decide(self, request, queryset, "approve")

    @admin.action(description="Reject selected pending approvals", permissions=["decide"])
    def reject(self, request, queryset) -> None:  # noqa: ANN001
        _decide(self, request, queryset, "reject")

    def has_decide_permission(self, request) -> bool:  # noqa: ANN001
        return request.user.has_perm("tasks.decide_approval")

    def get_urls(self) -> list:
        route = "<uuid:approval_id>/decide/"
        return [
            _button(self, route, self.decide_view, "tasks_approval_decide"),
            *super().get_urls(),
        ]

    def decide_view(self, request: HttpRequest, approval_id: Any) -> HttpResponseRedirect:
        """The dashboard's Approve and Reject buttons (the same service as the API)."""
        if not self.has_decide_permission(request):
            raise PermissionDenied
        decision = request.POST.get("decision")
        if decision not in ("approve", "reject"):
            self.message_user(request, "Choose approve or reject.", messages.ERROR)
            return _back(request, reverse("admin:index"))
        _decide(self, request, Approval.objects.filter(pk=approval_id), decision)
        return _back(request, reverse("admin:index"))


class WebhookAttemptInline(admin.TabularInline):
    """Every HTTP attempt of a delivery, as recorded; history is never edited."""

    model = WebhookAttempt
    extra = 0
    can_delete = False
    fields = ["number", "started_at", "duration_ms", "status_code", "error", "response_excerpt"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:  # noqa: ANN001
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # noqa: ANN001
        return False

    def has_delete_permission(self, request, obj=None) -> bool:  # noqa: ANN001
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = [
        "id", "event_type", "agent", "url", "status", "attempts", "last_status_code",
        "next_attempt_at", "created_at", "delivered_at",
    ]  # fmt: skip
    list_filter = ["status", "event_type", "created_at"]
    search_fields = ["url", "agent__name", "last_error", "id"]
    date_hierarchy = "created_at"
    list_select_related = ["agent"]
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]
    inlines = [WebhookAttemptInline]


@admin.register(WebhookAttempt)
class WebhookAttemptAdmin(ReadOnlyAdmin):
    list_display = ["delivery", "number", "started_at", "status_code", "duration_ms", "error"]
    list_filter = ["status_code", "started_at"]
    search_fields = ["delivery__url", "error"]
    list_select_related = ["delivery"]
    readonly_fields = [f.name for f in WebhookAttempt._meta.fields]
