from django.contrib import admin

from tasks.models import Occurrence, Run, Task


class ReadOnlyAdmin(admin.ModelAdmin):
    """History and queue rows change only through services; the admin shows them."""

    def has_add_permission(self, request) -> bool:  # noqa: ANN001
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # noqa: ANN001
        return False

    def has_delete_permission(self, request, obj=None) -> bool:  # noqa: ANN001
        return False


@admin.register(Task)
class TaskAdmin(ReadOnlyAdmin):
    list_display = [
        "title", "status", "schedule_kind", "schedule_expr", "timezone", "priority",
        "next_run_at", "created_by", "created_at",
    ]  # fmt: skip
    list_filter = ["status", "schedule_kind", "priority", "misfire_policy", "timezone"]
    search_fields = ["title", "description", "id", "schedule_expr", "created_by__name"]
    date_hierarchy = "created_at"
    list_select_related = ["created_by"]
    readonly_fields = [f.name for f in Task._meta.fields]


@admin.register(Occurrence)
class OccurrenceAdmin(ReadOnlyAdmin):
    list_display = [
        "id", "task", "state", "scheduled_for", "run_at", "priority", "attempt", "trigger",
        "lease_owner", "leased_until",
    ]  # fmt: skip
    list_filter = ["state", "trigger", "priority"]
    search_fields = ["task__title", "task__id", "lease_owner", "correlation_id"]
    date_hierarchy = "run_at"
    list_select_related = ["task"]
    readonly_fields = [f.name for f in Occurrence._meta.fields]


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    list_display = [
        "id", "task", "status", "attempt", "trigger", "scheduled_for", "started_at",
        "finished_at", "lease_owner",
    ]  # fmt: skip
    list_filter = ["status", "trigger", "started_at"]
    search_fields = ["id", "task__title", "task__id", "correlation_id", "error"]
    date_hierarchy = "started_at"
    list_select_related = ["task"]
    readonly_fields = [f.name for f in Run._meta.fields]
