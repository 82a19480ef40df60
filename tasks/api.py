"""/tasks, /runs, /schedules/preview, /events and /approvals: the agents' REST API.

Views parse, authorize, call a service or selector, and render — nothing else. Each
declares the scope it needs and its throttle bucket next to its permission classes.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.http import JsonResponse
from django.http.response import HttpResponseBase
from django.utils import timezone
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents import selectors as agent_selectors
from agents.permissions import HasScope, acting_agent, is_admin, require_publisher
from agents.throttles import AgentRateThrottle
from audit.services import Actor
from ordinaut import scopes
from ordinaut.api import (
    OperationSerializer,
    PageQuerySerializer,
    envelope,
    iso,
    operation,
    page,
    parse_body,
    parse_query,
)
from ordinaut.errors import NotFound
from tasks import approvals, budgets, events, selectors, services
from tasks.models import TaskStatus
from tasks.serializers import (
    AgentUsageSerializer,
    ApprovalDecisionSerializer,
    ApprovalListQuerySerializer,
    ApprovalListSerializer,
    EventPublishSerializer,
    LedgerListSerializer,
    PreviewQuerySerializer,
    PreviewSerializer,
    RunDetailSerializer,
    RunListQuerySerializer,
    RunListSerializer,
    RunSerializer,
    SchedulePreviewSerializer,
    SnoozeSerializer,
    StatsQuerySerializer,
    StatsSummarySerializer,
    TaskCreateSerializer,
    TaskListQuerySerializer,
    TaskListSerializer,
    TaskSerializer,
    TaskStatsSerializer,
    TaskUpdateSerializer,
    approval_data,
    event_published_data,
    ledger_entry_data,
    run_data,
    snooze_data,
    stats_data,
    task_create_arguments,
    task_data,
    task_update_changes,
)

QUICK_START_TASK = {
    "title": "My First Automated Task",
    "description": "A simple task that runs every minute.",
    "schedule_kind": "cron",
    "schedule_expr": "* * * * *",
    "timezone": "Europe/Chisinau",
    "payload": {
        "params": {"user_name": "Ordinaut User"},
        "pipeline": [
            {
                "id": "get_data",
                "uses": "debug.echo",
                "with": {"message": "Hello, ${params.user_name}!"},
                "save_as": "greeting",
            },
            {
                "id": "process_data",
                "uses": "debug.log",
                "with": {"message": "Step 1 said: '${steps.greeting.message}'"},
            },
        ],
    },
}


def viewer(request: Request) -> selectors.Viewer:
    return selectors.Viewer(agent=request.user, is_admin=is_admin(request))


# -- tasks -----------------------------------------------------------------------------------


class TaskListCreateApi(APIView):
    permission_classes = [HasScope]
    required_scope = {"GET": scopes.TASKS_READ, "POST": scopes.TASKS_WRITE}
    throttle_classes = [AgentRateThrottle]
    throttle_scope = {"GET": "reads", "POST": "tasks"}

    @extend_schema(
        operation_id="tasks_list",
        parameters=[TaskListQuerySerializer],
        responses=TaskListSerializer,
        description="Your tasks (all tasks with admin), newest first.",
    )
    def get(self, request: Request) -> Response:
        query = parse_query(TaskListQuerySerializer, request)
        limit, offset = query["limit"], query["offset"]
        tasks = selectors.task_page(
            viewer(request),
            limit=limit,
            offset=offset,
            status=query.get("status"),
            created_by=query.get("created_by"),
            schedule_kind=query.get("schedule_kind"),
        )
        return Response(
            envelope(tasks.rows, total=tasks.total, limit=limit, offset=offset, render=task_data)
        )

    @extend_schema(
        operation_id="tasks_create",
        request=TaskCreateSerializer,
        responses={
            201: TaskSerializer,
            200: OpenApiResponse(TaskSerializer, description="Duplicate within dedupe window"),
        },
        examples=[OpenApiExample("quick start", value=QUICK_START_TASK, request_only=True)],
        description=(
            "Create a task. With dedupe_key and dedupe_window_seconds, a duplicate within "
            "the window returns the existing task with 200 instead of creating one."
        ),
    )
    def post(self, request: Request) -> Response:
        arguments = task_create_arguments(
            request.data, caller=request.user, caller_is_admin=is_admin(request)
        )
        task, created = services.task_create_deduplicated(
            actor=Actor.agent(request.user), **arguments
        )
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(task_data(task), status=code)


class TaskDetailApi(APIView):
    permission_classes = [HasScope]
    required_scope = {
        "GET": scopes.TASKS_READ,
        "PUT": scopes.TASKS_WRITE,
        "PATCH": scopes.TASKS_WRITE,
    }
    throttle_classes = [AgentRateThrottle]
    throttle_scope = {"GET": "reads", "PUT": "tasks", "PATCH": "tasks"}

    @extend_schema(operation_id="tasks_retrieve", responses=TaskSerializer)
    def get(self, request: Request, task_id: str) -> Response:
        return Response(task_data(selectors.task_get(viewer(request), task_id=task_id)))

    @extend_schema(
        operation_id="tasks_update",
        request=TaskUpdateSerializer,
        responses=TaskSerializer,
        description="Partial update (as the original's PUT); schedule and pipeline re-validated.",
    )
    def put(self, request: Request, task_id: str) -> Response:
        task = selectors.task_get(viewer(request), task_id=task_id)
        changes = task_update_changes(request.data)
        if changes:
            task = services.task_update(
                task_id=task.id, changes=changes, actor=Actor.agent(request.user)
            )
        return Response(task_data(task))

    @extend_schema(
        operation_id="tasks_partial_update", request=TaskUpdateSerializer, responses=TaskSerializer
    )
    def patch(self, request: Request, task_id: str) -> Response:
        return self.put(request, task_id)


class _TaskActionApi(APIView):
    permission_classes = [HasScope]
    required_scope = scopes.TASKS_WRITE
    throttle_classes = [AgentRateThrottle]
    throttle_scope = "tasks"


class TaskRunNowApi(_TaskActionApi):
    @extend_schema(operation_id="tasks_run_now", request=None, responses={200: OperationSerializer})
    def post(self, request: Request, task_id: str) -> Response:
        task = selectors.task_get(viewer(request), task_id=task_id)
        occurrence = services.task_run_now(task_id=task.id, actor=Actor.agent(request.user))
        return Response(
            operation(
                "Task execution triggered successfully",
                {
                    "task_id": str(task.id),
                    "due_work_id": occurrence.id,
                    "run_at": iso(occurrence.run_at),
                },
            )
        )


class TaskSnoozeApi(_TaskActionApi):
    @extend_schema(
        operation_id="tasks_snooze",
        request=SnoozeSerializer,
        responses={200: OperationSerializer},
        examples=[
            OpenApiExample("snooze", value={"delay_seconds": 3600, "reason": "in a meeting"})
        ],
    )
    def post(self, request: Request, task_id: str) -> Response:
        task = selectors.task_get(viewer(request), task_id=task_id)
        data = parse_body(SnoozeSerializer, request)
        now = timezone.now()
        services.task_snooze(
            task_id=task.id,
            delay_seconds=data["delay_seconds"],
            reason=data.get("reason"),
            actor=Actor.agent(request.user),
            now=now,
        )
        until = now + timedelta(seconds=data["delay_seconds"])
        affected = selectors.queued_occurrences_due_at(task=task, run_at=until)
        return Response(
            operation(
                f"Task snoozed for {data['delay_seconds']} seconds",
                snooze_data(
                    task, delay_seconds=data["delay_seconds"], until=until, affected=affected
                ),
            )
        )


class _TaskTransitionApi(_TaskActionApi):
    """pause/resume/cancel: asking for the status a task already has succeeds, as before."""

    target: str
    message: str

    def post(self, request: Request, task_id: str) -> Response:
        task = selectors.task_get(viewer(request), task_id=task_id)
        change = services.task_set_status(
            task_id=task.id, status=self.target, actor=Actor.agent(request.user)
        )
        if not change.changed:
            return Response(
                operation(
                    f"Task already has status '{self.target}'",
                    {"task_id": str(task.id), "status": self.target},
                )
            )
        details = {
            "task_id": str(task.id),
            "old_status": change.old_status,
            "new_status": self.target,
        }
        if self.target == TaskStatus.CANCELED:
            details["removed_work_items"] = change.dropped
        return Response(operation(self.message, details))


@extend_schema_view(
    post=extend_schema(
        operation_id="tasks_pause", request=None, responses={200: OperationSerializer}
    )
)
class TaskPauseApi(_TaskTransitionApi):
    target = TaskStatus.PAUSED
    message = "Task paused successfully"


@extend_schema_view(
    post=extend_schema(
        operation_id="tasks_resume", request=None, responses={200: OperationSerializer}
    )
)
class TaskResumeApi(_TaskTransitionApi):
    target = TaskStatus.ACTIVE
    message = "Task resumed successfully"


@extend_schema_view(
    post=extend_schema(
        operation_id="tasks_cancel", request=None, responses={200: OperationSerializer}
    )
)
class TaskCancelApi(_TaskTransitionApi):
    target = TaskStatus.CANCELED
    message = "Task canceled successfully"


class TaskPreviewApi(APIView):
    permission_classes = [HasScope]
    required_scope = scopes.TASKS_READ
    throttle_classes = [AgentRateThrottle]
    throttle_scope = "reads"

    @extend_schema(
        operation_id="tasks_preview",
        parameters=[PreviewQuerySerializer],
        responses=PreviewSerializer,
        description="The task's next n fire instants (UTC and local), DST-shifted ones flagged.",
    )
    def get(self, request: Request, task_id: str) -> Response:
        task = selectors.task_get(viewer(request), task_id=task_id)
        query = parse_query(PreviewQuerySerializer, request)
        return Response(
            {
                "schedule_kind": task.schedule_kind,
                "schedule_expr": task.schedule_expr,
                "timezone": task.timezone,
                "occurrences": selectors.schedule_preview(
                    kind=task.schedule_kind,
                    expr=task.schedule_expr,
                    timezone_name=task.timezone,
                    after=timezone.now(),
                    n=query["n"],
                ),
            }
        )


class TaskLedgerApi(APIView):
    permission_classes = [HasScope]
    required_scope = scopes.TASKS_READ
    throttle_classes = [AgentRateThrottle]
    throttle_scope = "reads"

    @extend_schema(
        operation_id="tasks_ledger",
        parameters=[PageQuerySerializer],
        responses=LedgerListSerializer,
        description=(
            "Why didn't it run? The instants this task's schedule produced that did not run "
            "(missed, coalesced, paused, snoozed, canceled, rescheduled), newest first."
        ),
    )
    def get(self, request: Request, task_id: str) -> Response:
        query = parse_query(PageQuerySerializer, request)
        entries = selectors.ledger_list(viewer(request), task_id=task_id)
        return Response(
            page(entries, limit=query["limit"], offset=query["offset"], render=ledger_entry_data)
        )


class SchedulePreviewApi(APIView):
    permission_classes = [HasScope]
    required_scope = scopes.TASKS_READ
    throttle_classes = [AgentRateThrottle]
    throttle_scope = "reads"

    @extend_schema(
        operation_id="schedules_preview",
        request=SchedulePreviewSerializer,
        responses={200: PreviewSerializer},
        examples=[
            OpenApiExample(
                "weekday mornings",
                value={
                    "schedule_kind": "rrule",
                    "schedule_expr": "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR;BYHOUR=8;BYMINUTE=30",
                    "timezone": "Europe/Chisinau",
                    "n": 5,
                },
                request_only=True,
            )
        ],
        description="Next n fire instants of a schedule that is not stored (nothing written).",
    )
    def post(self, request: Request) -> Response:
        data = parse_body(SchedulePreviewSerializer, request)
        tz = data.get("timezone") or settings.TIME_ZONE
        return Response(
            {
                "schedule_kind": data["schedule_kind"],
                "schedule_expr": data["schedule_expr"],
                "timezone": tz,
                "occurrences": selectors.schedule_preview(
                    kind=data["schedule_kind"],
                    expr=data["schedule_expr"],
                    timezone_name=tz,
                    after=data.get("after") or timezone.now(),
                    n=data["n"],
                ),
            }
        )


# -- runs ------------------------------------------------------------------------------------


class _RunReadApi(APIView):
    permission_classes = [HasScope]
    required_scope = scopes.RUNS_READ
    throttle_classes = [AgentRateThrottle]
    throttle_scope = "reads"


class RunListApi(_RunReadApi):
    @extend_schema(
        operation_id="runs_list",
        parameters=[RunListQuerySerializer],
        responses=RunListSerializer,
        description="Runs of your tasks (all with admin), most recent first.",
    )
    def get(self, request: Request) -> Response:
        query = parse_query(RunListQuerySerializer, request)
        limit, offset = query["limit"], query["offset"]
        runs = selectors.run_page(
            viewer(request),
            limit=limit,
            offset=offset,
            task_id=query.get("task_id"),
            success=query.get("success"),
            start_time=query.get("start_time"),
            end_time=query.get("end_time"),
        )
        include_errors = query["include_errors"]
        return Response(
            envelope(
                runs.rows,
                total=runs.total,
                limit=limit,
                offset=offset,
                render=lambda run: run_data(run, include_error=include_errors),
            )
        )


class RunDetailApi(_RunReadApi):
    @extend_schema(operation_id="runs_retrieve", responses=RunDetailSerializer)
    def get(self, request: Request, run_id: str) -> Response:
        run = selectors.run_get(viewer(request), run_id=run_id)
        return Response(run_data(run, include_steps=True))


class RunLatestApi(_RunReadApi):
    response_nullable = True  # null when the task has not run yet, as in the original

    @extend_schema(
        operation_id="runs_task_latest",
        responses=OpenApiResponse(RunSerializer, description="The latest run, or null."),
    )
    def get(self, request: Request, task_id: str) -> HttpResponseBase:
        run = selectors.run_latest(viewer(request), task_id=task_id)
        if run is None:
            # DRF renders None as an empty body; the original answered a JSON `null`.
            return JsonResponse(None, safe=False)
        return Response(run_data(run))


class RunTaskStatsApi(_RunReadApi):
    @extend_schema(
        operation_id="runs_task_stats",
        parameters=[StatsQuerySerializer],
        responses=TaskStatsSerializer,
    )
    def get(self, request: Request, task_id: str) -> Response:
        days = parse_query(StatsQuerySerializer, request).get("days", 30)
        stats = selectors.run_stats_for_task(viewer(request), task_id=task_id, days=days)
        return Response(stats_data(stats))


class RunStatsSummaryApi(_RunReadApi):
    @extend_schema(
        operation_id="runs_stats_summary",
        parameters=[StatsQuerySerializer],
        responses=StatsSummarySerializer,
    )
    def get(self, request: Request) -> Response:
        days = parse_query(StatsQuerySerializer, request).get("days", 7)
        return Response(selectors.run_stats_summary(viewer(request), days=days))


# -- an agent's budgets ----------------------------------------------------------------------


class AgentUsageApi(APIView):
    """GET /agents/{id}/usage: the agent itself, or `admin`. (Here, not in agents/api.py:
    what it counts is tasks and runs.)"""

    permission_classes = [HasScope]
    required_scope = None  # the agent itself or admin: checked in get()
    throttle_classes = [AgentRateThrottle]
    throttle_scope = "reads"

    @extend_schema(
        operation_id="agents_usage",
        responses={200: AgentUsageSerializer},
        description=(
            "Usage against each budget now: active tasks, runs started in the past hour, "
            "runs running, LLM tokens today (UTC). A limit of null is unlimited."
        ),
    )
    def get(self, request: Request, agent_id: str) -> Response:
        if str(request.user.pk) != str(agent_id) and not is_admin(request):
            raise NotFound(f"agent {agent_id} not found")
        agent = agent_selectors.agent_get(agent_id=agent_id)
        return Response(budgets.agent_usage(agent))


# -- events ----------------------------------------------------------------------------------


class EventPublishApi(APIView):
    permission_classes = [HasScope]
    # events:publish, or events:publish:<glob> for matching topics: checked in post().
    required_scope = None
    throttle_classes = [AgentRateThrottle]
    throttle_scope = "events"

    @extend_schema(
        operation_id="events_publish",
        request=EventPublishSerializer,
        responses={
            202: OperationSerializer,
            200: OpenApiResponse(
                OperationSerializer, description="Repeated idempotency_key: the first response"
            ),
        },
        examples=[
            OpenApiExample(
                "order paid",
                value={"topic": "orders.paid", "payload": {"order_id": 42}},
                request_only=True,
            )
        ],
        description=(
            "Publish an event: every active event task whose topic pattern matches, and every "
            "condition task whose expression holds, is queued at once (202). The same "
            "idempotency_key again answers 200 with the first event, storing nothing."
        ),
    )
    def post(self, request: Request) -> Response:
        require_publisher(request.user, request.auth.scopes)
        data = parse_body(EventPublishSerializer, request)
        source = acting_agent(
            request.user,
            data.get("source_agent_id"),
            field="source_agent_id",
            caller_is_admin=is_admin(request),
        )
        event, created = events.event_publish(
            topic=data["topic"],
            payload=data["payload"],
            idempotency_key=data.get("idempotency_key"),
            source=source,
            actor=Actor.agent(request.user),
            granted=request.auth.scopes,
        )
        message = "Event published successfully" if created else "Event already published"
        code = status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK
        return Response(operation(message, event_published_data(event)), status=code)


# -- approvals -------------------------------------------------------------------------------


class ApprovalListApi(APIView):
    permission_classes = [HasScope]
    required_scope = scopes.APPROVALS_DECIDE
    throttle_classes = [AgentRateThrottle]
    throttle_scope = "reads"

    @extend_schema(
        operation_id="approvals_list",
        parameters=[ApprovalListQuerySerializer],
        responses=ApprovalListSerializer,
        description="Approvals you may decide (all with admin), newest first.",
    )
    def get(self, request: Request) -> Response:
        query = parse_query(ApprovalListQuerySerializer, request)
        approvals = selectors.approval_list(viewer(request), status=query.get("status"))
        return Response(
            page(approvals, limit=query["limit"], offset=query["offset"], render=approval_data)
        )


class _ApprovalDecisionApi(APIView):
    permission_classes = [HasScope]
    required_scope = scopes.APPROVALS_DECIDE
    throttle_classes = [AgentRateThrottle]
    throttle_scope = "tasks"
    decision: str

    def post(self, request: Request, approval_id: str) -> Response:
        data = parse_body(ApprovalDecisionSerializer, request)
        approval = approvals.approval_decide(
            approval_id=approval_id,
            decision=self.decision,
            comment=data.get("comment", ""),
            actor=Actor.agent(request.user),
            agent=request.user,
            is_admin=is_admin(request),
        )
        return Response(operation(f"Approval {approval.status}", approval_data(approval)))


@extend_schema_view(
    post=extend_schema(
        operation_id="approvals_approve",
        request=ApprovalDecisionSerializer,
        responses={200: OperationSerializer},
        description="Approve: the parked run resumes at the next step. 409 once decided.",
    )
)
class ApprovalApproveApi(_ApprovalDecisionApi):
    decision = "approve"


@extend_schema_view(
    post=extend_schema(
        operation_id="approvals_reject",
        request=ApprovalDecisionSerializer,
        responses={200: OperationSerializer},
        description="Reject: the run resumes with the step's status `rejected`. 409 once decided.",
    )
)
class ApprovalRejectApi(_ApprovalDecisionApi):
    decision = "reject"
