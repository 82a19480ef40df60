from django.contrib import admin
from django.urls import URLPattern, path, re_path
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import (
    SpectacularJSONAPIView,
    SpectacularRedocView,
    SpectacularSwaggerView,
)

from agents import api as agents_api
from audit import api as audit_api
from ordinaut import health
from ordinaut.errors import json_404
from pipelines import api as pipelines_api
from tasks import api as tasks_api
from tasks import metrics as tasks_metrics

# The admin's registrations, loaded with the URLconf: only processes that serve URLs need
# them (ordinaut.apps.AdminConfig does not autodiscover at start-up).
admin.autodiscover()


def route(pattern: str, view: object, name: str) -> list[URLPattern]:
    """`pattern` with and without a trailing slash: POST cannot be redirected to add one."""
    return [path(pattern, view, name=name), path(f"{pattern}/", view)]


urlpatterns = [
    path("", health.index, name="index"),
    path("favicon.ico", health.favicon, name="favicon"),
    *route("health", health.health, "health"),
    *route("health/ready", health.ready, "health-ready"),
    *route("health/live", health.live, "health-live"),
    path("metrics", tasks_metrics.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    # -- API documentation
    *route("openapi.json", SpectacularJSONAPIView.as_view(), "openapi"),
    *route("docs", SpectacularSwaggerView.as_view(url_name="openapi"), "docs"),
    *route("redoc", SpectacularRedocView.as_view(url_name="openapi"), "redoc"),
    # -- agents and authentication
    *route("agents", agents_api.AgentListCreateApi.as_view(), "agents"),
    *route("agents/auth/token", agents_api.TokenApi.as_view(), "auth-token"),
    *route("agents/auth/refresh", agents_api.TokenRefreshApi.as_view(), "auth-refresh"),
    *route("agents/auth/revoke", agents_api.TokenRevokeApi.as_view(), "auth-revoke"),
    *route("agents/<uuid:agent_id>", agents_api.AgentDetailApi.as_view(), "agent"),
    *route("agents/<uuid:agent_id>/usage", tasks_api.AgentUsageApi.as_view(), "agent-usage"),
    *route(
        "agents/<uuid:agent_id>/webhook-secret",
        agents_api.AgentWebhookSecretApi.as_view(),
        "agent-webhook-secret",
    ),
    *route(
        "agents/<uuid:agent_id>/pause",
        agents_api.AgentPauseApi.as_view(action="pause"),
        "agent-pause",
    ),
    *route(
        "agents/<uuid:agent_id>/resume",
        agents_api.AgentPauseApi.as_view(action="resume"),
        "agent-resume",
    ),
    *route(
        "agents/<uuid:agent_id>/credentials",
        agents_api.AgentCredentialsApi.as_view(),
        "agent-credentials",
    ),
    *route(
        "agents/<uuid:agent_id>/credentials/<str:key_id>",
        agents_api.AgentCredentialRevokeApi.as_view(),
        "agent-credential",
    ),
    # -- tasks
    *route("tasks", tasks_api.TaskListCreateApi.as_view(), "tasks"),
    *route("tasks/<uuid:task_id>", tasks_api.TaskDetailApi.as_view(), "task"),
    *route("tasks/<uuid:task_id>/run_now", tasks_api.TaskRunNowApi.as_view(), "task-run-now"),
    *route("tasks/<uuid:task_id>/snooze", tasks_api.TaskSnoozeApi.as_view(), "task-snooze"),
    *route("tasks/<uuid:task_id>/pause", tasks_api.TaskPauseApi.as_view(), "task-pause"),
    *route("tasks/<uuid:task_id>/resume", tasks_api.TaskResumeApi.as_view(), "task-resume"),
    *route("tasks/<uuid:task_id>/cancel", tasks_api.TaskCancelApi.as_view(), "task-cancel"),
    *route("tasks/<uuid:task_id>/preview", tasks_api.TaskPreviewApi.as_view(), "task-preview"),
    *route("tasks/<uuid:task_id>/ledger", tasks_api.TaskLedgerApi.as_view(), "task-ledger"),
    *route("schedules/preview", tasks_api.SchedulePreviewApi.as_view(), "schedule-preview"),
    # -- runs
    *route("runs", tasks_api.RunListApi.as_view(), "runs"),
    *route("runs/stats/summary", tasks_api.RunStatsSummaryApi.as_view(), "runs-summary"),
    *route("runs/<uuid:run_id>", tasks_api.RunDetailApi.as_view(), "run"),
    *route("runs/task/<uuid:task_id>/latest", tasks_api.RunLatestApi.as_view(), "run-latest"),
    *route("runs/task/<uuid:task_id>/stats", tasks_api.RunTaskStatsApi.as_view(), "run-stats"),
    # -- events and approvals
    *route("events", tasks_api.EventPublishApi.as_view(), "events"),
    *route("approvals", tasks_api.ApprovalListApi.as_view(), "approvals"),
    *route(
        "approvals/<uuid:approval_id>/approve",
        tasks_api.ApprovalApproveApi.as_view(),
        "approval-approve",
    ),
    *route(
        "approvals/<uuid:approval_id>/reject",
        tasks_api.ApprovalRejectApi.as_view(),
        "approval-reject",
    ),
    # -- tools, schemas, audit
    *route("tools", pipelines_api.ToolListApi.as_view(), "tools"),
    *route("schemas/pipeline", pipelines_api.PipelineSchemaApi.as_view(), "pipeline-schema"),
    *route("audit", audit_api.AuditListApi.as_view(), "audit"),
    # Last: any other path (`/tasks/not-a-uuid` too) is the JSON 404. As a route rather than
    # only handler404, it answers the same under DEBUG, where Django would render its HTML
    # debug page. The admin keeps its own 404s and its slash redirect.
    # CSRF-exempt like the API views: an unknown path is a 404 for a POST too, not a CSRF page.
    re_path(r"^(?!admin(?:/|$)).*$", csrf_exempt(json_404), name="not-found"),
]

handler404 = "ordinaut.errors.json_404"
handler500 = "ordinaut.errors.json_500"
