from django.contrib import admin

from audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: the log is append-only in the database, and the admin says so too."""

    list_display = ["at", "actor_type", "actor_name", "action", "subject_type", "subject_id"]
    list_filter = ["actor_type", "action", "subject_type"]
    search_fields = ["action", "actor_name", "actor_id", "subject_id", "correlation_id"]
    date_hierarchy = "at"
    readonly_fields = [f.name for f in AuditEvent._meta.fields]
    list_per_page = 100

    def has_add_permission(self, request) -> bool:  # noqa: ANN001
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # noqa: ANN001
        return False

    def has_delete_permission(self, request, obj=None) -> bool:  # noqa: ANN001
        return False
