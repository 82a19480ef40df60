"""Ordinaut's own MCP server: the agent API as MCP tools, on the official `mcp` SDK.

Every tool authenticates with the same credentials as REST (an API key or a JWT access
token: the Bearer header over HTTP, ORDINAUT_TOKEN for stdio), checks the same scope, and
calls the same services and selectors, so audit, ownership (another agent's task is "not
found") and validation are identical. Errors come back as tool errors whose message starts
with the HTTP status and code the REST API would have answered, e.g. "404 not_found: ...".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone as django_timezone
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from rest_framework import exceptions as drf_exceptions
from rest_framework import serializers

from agents.authentication import Grant, authenticate_token
from agents.models import Agent
from audit.services import Actor
from ordinaut import scopes
from ordinaut.api import page
from ordinaut.correlation import new_correlation_id, reset_correlation_id, set_correlation_id
from ordinaut.errors import Forbidden, OrdinautError, Unauthenticated
from pipelines.api import tool_catalog
from tasks import approvals, events, selectors, services
from tasks.models import TaskStatus
from tasks.serializers import (
    ApprovalListQuerySerializer,
    RunListQuerySerializer,
    SchedulePreviewSerializer,
    TaskCreateSerializer,
    TaskListQuerySerializer,
    TaskUpdateSerializer,
    approval_data,
    event_published_data,
    run_data,
    task_data,
)

INSTRUCTIONS = (
    "Ordinaut schedules tasks for agents: a schedule (cron, RRULE, once, event) plus a pipeline "
    "of tool steps. Create tasks with create_task, check the next fire times with "
    "preview_schedule first, and read results with list_runs/get_run."
)


@dataclass(frozen=True)
class Caller:
    agent: Agent
    grant: Grant

    @property
    def viewer(self) -> selectors.Viewer:
        return selectors.Viewer(agent=self.agent, is_admin=scopes.ADMIN in self.grant.scopes)

    @property
    def actor(self) -> Actor:
        return Actor.agent(self.agent)


def _validated(serializer_class: type[serializers.Serializer], data: dict[str, Any]) -> dict:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _bearer(ctx: Context, stdio_token: str | None) -> str:
    headers = ctx.headers
    if headers is None:  # stdio: the process was started with the caller's token
        if not stdio_token:
            raise Unauthenticated("set ORDINAUT_TOKEN to an API key or JWT access token")
        return stdio_token
    header = headers.get("authorization") or headers.get("Authorization") or ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("send Authorization: Bearer <API key or JWT access token>")
    return token.strip()


def _as_tool_error(exc: Exception) -> ToolError:
    if isinstance(exc, OrdinautError):
        suffix = f" {exc.details}" if exc.details else ""
        return ToolError(f"{exc.status} {exc.code}: {exc.message}{suffix}")
    if isinstance(exc, serializers.ValidationError):
        return ToolError(f"422 validation_error: {exc.detail}")
    if isinstance(exc, drf_exceptions.AuthenticationFailed):
        return ToolError(f"401 authentication_failed: {exc.detail}")
    raise exc


def _call(raw_token: str, required: str, work: Callable[[Caller], Any]) -> Any:
    """Authenticate, authorize and run `work` in one sync (ORM) context."""
    if not connection.in_atomic_block:
        # A long-lived server must drop connections PostgreSQL closed (Django does this per
        # request in the web process); never inside a caller's transaction.
        close_old_connections()
    token = set_correlation_id(new_correlation_id())
    try:
        agent, grant = authenticate_token(raw_token)
        if not scopes.grants(grant.scopes, required):
            raise Forbidden(f"Agent '{agent.name}' lacks required scope: {required}")
        return work(Caller(agent, grant))
    except (OrdinautError, serializers.ValidationError, drf_exceptions.AuthenticationFailed) as exc:
        raise _as_tool_error(exc) from exc
    finally:
        reset_correlation_id(token)


# -- what each tool does (sync; runs in the ORM thread) ------------------------------------


def create_task_for(caller: Caller, fields: dict[str, Any]) -> dict[str, Any]:
    data = _validated(TaskCreateSerializer, fields)
    data.pop("created_by", None)  # over MCP the creator is always the caller
    data["timezone_name"] = data.pop("timezone", None) or settings.TIME_ZONE
    data.setdefault("dedupe_key", None)
    task, created = services.task_create_deduplicated(
        created_by=caller.agent, actor=caller.actor, **data
    )
    return {"created": created, "task": task_data(task)}


def update_task_for(caller: Caller, task_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    task = selectors.task_get(caller.viewer, task_id=task_id)
    data = _validated(TaskUpdateSerializer, changes)
    if data:
        task = services.task_update(task_id=task.id, changes=data, actor=caller.actor)
    return task_data(task)


_TRANSITIONS = {
    "pause": (TaskStatus.PAUSED, services.task_pause),
    "resume": (TaskStatus.ACTIVE, services.task_resume),
    "cancel": (TaskStatus.CANCELED, services.task_cancel),
}


def transition_task_for(caller: Caller, task_id: str, action: str) -> dict[str, Any]:
    target, service = _TRANSITIONS[action]
    task = selectors.task_get(caller.viewer, task_id=task_id)
    if task.status != target:
        task = service(task_id=task.id, actor=caller.actor)
    return task_data(task)


def build_server(*, stdio_token: str | None = None) -> MCPServer:
    """The MCP server with Ordinaut's tools, resources and prompt."""
    server = MCPServer(name="ordinaut", instructions=INSTRUCTIONS, version="1.0.0")

    async def run(ctx: Context, required: str, work: Callable[[Caller], Any]) -> Any:
        try:
            raw = _bearer(ctx, stdio_token)
        except OrdinautError as exc:
            raise _as_tool_error(exc) from exc
        return await sync_to_async(_call, thread_sensitive=True)(raw, required, work)

    @server.tool()
    async def create_task(
        title: str,
        schedule_kind: str,
        payload: dict[str, Any],
        ctx: Context,
        schedule_expr: str | None = None,
        description: str = "",
        timezone: str | None = None,
        priority: int = 5,
        dedupe_key: str | None = None,
        dedupe_window_seconds: int = 0,
        max_retries: int | None = None,
        concurrency_key: str | None = None,
    ) -> dict[str, Any]:
        """Create a task (schedule_kind: cron|rrule|once|event|condition; payload: {pipeline}).

        Returns {created, task}; with dedupe_key a duplicate inside the window returns the
        existing task with created=false. Requires tasks:write.
        """
        fields = {
            "title": title, "schedule_kind": schedule_kind, "payload": payload,
            "schedule_expr": schedule_expr, "description": description, "priority": priority,
            "dedupe_key": dedupe_key, "dedupe_window_seconds": dedupe_window_seconds,
            "concurrency_key": concurrency_key,
        }  # fmt: skip
        if timezone is not None:
            fields["timezone"] = timezone
        if max_retries is not None:
            fields["max_retries"] = max_retries
        return await run(ctx, scopes.TASKS_WRITE, lambda c: create_task_for(c, fields))

    @server.tool()
    async def list_tasks(
        ctx: Context,
        status: str | None = None,
        schedule_kind: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]:
        """Your tasks, newest first: {items, total, limit, offset, has_more}. Needs tasks:read."""

        def work(caller: Caller) -> dict[str, Any]:
            query = {"limit": limit, "offset": offset}
            query.update(
                {k: v for k, v in (("status", status), ("schedule_kind", schedule_kind)) if v}
            )
            params = _validated(TaskListQuerySerializer, query)
            tasks = selectors.task_list(
                caller.viewer,
                status=params.get("status"),
                schedule_kind=params.get("schedule_kind"),
            )
            return page(tasks, limit=params["limit"], offset=params["offset"], render=task_data)

        return await run(ctx, scopes.TASKS_READ, work)

    @server.tool()
    async def get_task(task_id: str, ctx: Context) -> dict[str, Any]:
        """One of your tasks by id. Needs tasks:read."""
        return await run(
            ctx,
            scopes.TASKS_READ,
            lambda c: task_data(selectors.task_get(c.viewer, task_id=task_id)),
        )

    @server.tool()
    async def update_task(task_id: str, changes: dict[str, Any], ctx: Context) -> dict[str, Any]:
        """Partially update a task (any of the create fields, plus status); re-validated."""
        return await run(ctx, scopes.TASKS_WRITE, lambda c: update_task_for(c, task_id, changes))

    def transition_tool(action: str) -> Callable[..., Any]:
        async def transition(task_id: str, ctx: Context) -> dict[str, Any]:
            return await run(
                ctx, scopes.TASKS_WRITE, lambda c: transition_task_for(c, task_id, action)
            )

        return transition

    for action in _TRANSITIONS:
        server.add_tool(
            transition_tool(action),
            name=f"{action}_task",
            description=f"{action.capitalize()} a task; returns the task. Needs tasks:write.",
        )

    @server.tool()
    async def run_task_now(task_id: str, ctx: Context) -> dict[str, Any]:
        """Queue a run of the task now (the schedule is unaffected). Needs tasks:write."""

        def work(caller: Caller) -> dict[str, Any]:
            task = selectors.task_get(caller.viewer, task_id=task_id)
            occurrence = services.task_run_now(task_id=task.id, actor=caller.actor)
            return {"task_id": str(task.id), "occurrence_id": occurrence.id}

        return await run(ctx, scopes.TASKS_WRITE, work)

    @server.tool()
    async def preview_schedule(
        schedule_kind: str,
        schedule_expr: str,
        ctx: Context,
        timezone: str | None = None,
        n: int = 10,
    ) -> dict[str, Any]:
        """Next n fire instants in UTC and local time; DST-shifted ones are flagged."""

        def work(caller: Caller) -> dict[str, Any]:
            fields = {"schedule_kind": schedule_kind, "schedule_expr": schedule_expr, "n": n}
            if timezone:
                fields["timezone"] = timezone
            data = _validated(SchedulePreviewSerializer, fields)
            tz = data.get("timezone") or settings.TIME_ZONE
            occurrences = selectors.schedule_preview(
                kind=data["schedule_kind"],
                expr=data["schedule_expr"],
                timezone_name=tz,
                after=django_timezone.now(),
                n=data["n"],
            )
            return {"timezone": tz, "occurrences": occurrences}

        return await run(ctx, scopes.TASKS_READ, work)

    @server.tool()
    async def list_runs(
        ctx: Context,
        task_id: str | None = None,
        success: bool | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]:
        """Runs of your tasks, most recent first, with errors and output. Needs runs:read."""

        def work(caller: Caller) -> dict[str, Any]:
            query: dict[str, Any] = {"limit": limit, "offset": offset}
            if task_id:
                query["task_id"] = task_id
            if success is not None:
                query["success"] = success
            params = _validated(RunListQuerySerializer, query)
            runs = selectors.run_list(
                caller.viewer, task_id=params.get("task_id"), success=params.get("success")
            )
            return page(runs, limit=params["limit"], offset=params["offset"], render=run_data)

        return await run(ctx, scopes.RUNS_READ, work)

    @server.tool()
    async def get_run(run_id: str, ctx: Context) -> dict[str, Any]:
        """One run with its output and per-step results. Needs runs:read."""
        return await run(
            ctx,
            scopes.RUNS_READ,
            lambda c: run_data(selectors.run_get(c.viewer, run_id=run_id), include_steps=True),
        )

    @server.tool()
    async def list_tools(ctx: Context) -> dict[str, Any]:
        """Tools a pipeline step may use, with their schemas and required scopes."""

        return await run(ctx, scopes.TOOLS_READ, lambda caller: tool_catalog())

    @server.tool()
    async def publish_event(
        topic: str,
        ctx: Context,
        payload: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Publish an event; matching event and condition tasks are queued at once.

        Returns {created, event_id, topic, triggered_tasks, published_at}; the same
        idempotency_key again returns the first event with created=false. Needs
        events:publish.
        """

        def work(caller: Caller) -> dict[str, Any]:
            event, created = events.event_publish(
                topic=topic,
                payload={} if payload is None else payload,
                idempotency_key=idempotency_key,
                source=caller.agent,
                actor=caller.actor,
            )
            return {"created": created, **event_published_data(event)}

        return await run(ctx, scopes.EVENTS_PUBLISH, work)

    @server.tool()
    async def decide_approval(
        approval_id: str, decision: str, ctx: Context, comment: str = ""
    ) -> dict[str, Any]:
        """Approve or reject a parked pipeline step (decision: approve|reject).

        The run resumes at once; 409 when already decided or expired. Needs approvals:decide.
        """

        def work(caller: Caller) -> dict[str, Any]:
            approval = approvals.approval_decide(
                approval_id=approval_id,
                decision=decision,
                comment=comment,
                actor=caller.actor,
                agent=caller.agent,
                is_admin=caller.viewer.is_admin,
            )
            return approval_data(approval)

        return await run(ctx, scopes.APPROVALS_DECIDE, work)

    @server.tool()
    async def list_approvals(
        ctx: Context, status: str | None = "pending", limit: int = 50, offset: int = 0
    ) -> dict[str, Any]:
        """Approvals you may decide, newest first (status: pending|approved|rejected|expired).

        Returns {items, total, limit, offset, has_more}. Needs approvals:decide.
        """

        def work(caller: Caller) -> dict[str, Any]:
            query: dict[str, Any] = {"limit": limit, "offset": offset}
            if status:
                query["status"] = status
            params = _validated(ApprovalListQuerySerializer, query)
            approvals = selectors.approval_list(caller.viewer, status=params.get("status"))
            return page(
                approvals, limit=params["limit"], offset=params["offset"], render=approval_data
            )

        return await run(ctx, scopes.APPROVALS_DECIDE, work)

    async def read(ctx: Context, required: str, work: Callable[[Caller], Any]) -> Any:
        try:
            return await run(ctx, required, work)
        except ToolError as exc:
            raise ResourceError(str(exc)) from exc

    @server.resource("ordinaut://tasks/{task_id}", mime_type="application/json")
    async def task_resource(task_id: str, ctx: Context) -> dict[str, Any]:
        """A task, as GET /tasks/{id} returns it."""
        return await read(
            ctx,
            scopes.TASKS_READ,
            lambda c: task_data(selectors.task_get(c.viewer, task_id=task_id)),
        )

    @server.resource("ordinaut://runs/{run_id}", mime_type="application/json")
    async def run_resource(run_id: str, ctx: Context) -> dict[str, Any]:
        """A run with its output and steps, as GET /runs/{id} returns it."""
        return await read(
            ctx,
            scopes.RUNS_READ,
            lambda c: run_data(selectors.run_get(c.viewer, run_id=run_id), include_steps=True),
        )

    @server.prompt()
    def schedule_recurring_task(goal: str, schedule: str, timezone: str = "") -> str:
        """Guide the model to turn a goal and a plain-language schedule into a task."""
        zone = timezone or settings.TIME_ZONE
        return (
            f"Create an Ordinaut task that will: {goal}\n"
            f"It should run: {schedule} (timezone {zone}).\n"
            "Steps: 1) translate the schedule into a cron expression or an RFC 5545 RRULE; "
            "2) call preview_schedule and check the next occurrences (mind DST-flagged ones); "
            "3) call list_tools and build payload.pipeline from tools your scopes allow, each "
            'step {"id", "uses", "with", "save_as"?}; 4) call create_task with a dedupe_key so '
            "a retry does not create a duplicate; 5) report the task id and next run times."
        )

    return server
