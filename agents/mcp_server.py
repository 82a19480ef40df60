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
from agents.permissions import require_scope
from audit.services import Actor
from ordinaut import scopes
from ordinaut.api import page, validated
from ordinaut.correlation import new_correlation_id, reset_correlation_id, set_correlation_id
from ordinaut.errors import OrdinautError, Unauthenticated
from pipelines.api import tool_catalog
from tasks import approvals, events, selectors, services
from tasks.models import TaskStatus
from tasks.serializers import (
    ApprovalListQuerySerializer,
    RunListQuerySerializer,
    SchedulePreviewSerializer,
    TaskListQuerySerializer,
    approval_data,
    event_published_data,
    run_data,
    task_create_arguments,
    task_data,
    task_update_changes,
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


class OrdinautMCPServer(MCPServer):
    """The SDK's server, carrying the token a stdio server was started with.

    Over HTTP each request brings its own Bearer header; a stdio process serves the one
    caller whose token is in ORDINAUT_TOKEN, so the tools read it from the server.
    """

    def __init__(self, *, stdio_token: str | None) -> None:
        super().__init__(name="ordinaut", instructions=INSTRUCTIONS, version="1.0.0")
        self.stdio_token = stdio_token


def _bearer(ctx: Context) -> str:
    headers = ctx.headers
    if headers is None:  # stdio: the process was started with the caller's token
        server = ctx.mcp_server
        stdio_token = server.stdio_token if isinstance(server, OrdinautMCPServer) else None
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
        require_scope(agent, grant.scopes, required)
        return work(Caller(agent, grant))
    except (OrdinautError, serializers.ValidationError, drf_exceptions.AuthenticationFailed) as exc:
        raise _as_tool_error(exc) from exc
    finally:
        reset_correlation_id(token)


async def _run(ctx: Context, required: str, work: Callable[[Caller], Any]) -> Any:
    """A tool's body: `work` runs in the ORM thread once the caller holds `required`."""
    try:
        raw = _bearer(ctx)
    except OrdinautError as exc:
        raise _as_tool_error(exc) from exc
    return await sync_to_async(_call, thread_sensitive=True)(raw, required, work)


async def _read(ctx: Context, required: str, work: Callable[[Caller], Any]) -> Any:
    """A resource's body: as `_run`, with errors reported as resource errors."""
    try:
        return await _run(ctx, required, work)
    except ToolError as exc:
        raise ResourceError(str(exc)) from exc


def _page_query(limit: int, offset: int, **filters: Any) -> dict[str, Any]:
    """A list tool's arguments as the REST query would carry them (unset filters left out)."""
    query: dict[str, Any] = {"limit": limit, "offset": offset}
    query.update({name: value for name, value in filters.items() if value is not None})
    return query


# -- tasks -----------------------------------------------------------------------------------


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

    def work(caller: Caller) -> dict[str, Any]:
        arguments = task_create_arguments(
            fields, caller=caller.agent, caller_is_admin=caller.viewer.is_admin
        )
        task, created = services.task_create_deduplicated(actor=caller.actor, **arguments)
        return {"created": created, "task": task_data(task)}

    return await _run(ctx, scopes.TASKS_WRITE, work)


async def list_tasks(
    ctx: Context,
    status: str | None = None,
    schedule_kind: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> dict[str, Any]:
    """Your tasks, newest first: {items, total, limit, offset, has_more}. Needs tasks:read."""

    def work(caller: Caller) -> dict[str, Any]:
        query = _page_query(
            limit, offset, status=status or None, schedule_kind=schedule_kind or None
        )
        params = validated(TaskListQuerySerializer, query)
        tasks = selectors.task_list(
            caller.viewer, status=params.get("status"), schedule_kind=params.get("schedule_kind")
        )
        return page(tasks, limit=params["limit"], offset=params["offset"], render=task_data)

    return await _run(ctx, scopes.TASKS_READ, work)


async def get_task(task_id: str, ctx: Context) -> dict[str, Any]:
    """One of your tasks by id. Needs tasks:read."""
    return await _run(
        ctx, scopes.TASKS_READ, lambda c: task_data(selectors.task_get(c.viewer, task_id=task_id))
    )


async def update_task(task_id: str, changes: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Partially update a task (any of the create fields, plus status); re-validated."""

    def work(caller: Caller) -> dict[str, Any]:
        task = selectors.task_get(caller.viewer, task_id=task_id)
        data = task_update_changes(changes)
        if data:
            task = services.task_update(task_id=task.id, changes=data, actor=caller.actor)
        return task_data(task)

    return await _run(ctx, scopes.TASKS_WRITE, work)


async def _set_status(ctx: Context, task_id: str, status: str) -> dict[str, Any]:
    def work(caller: Caller) -> dict[str, Any]:
        task = selectors.task_get(caller.viewer, task_id=task_id)
        change = services.task_set_status(task_id=task.id, status=status, actor=caller.actor)
        return task_data(change.task)

    return await _run(ctx, scopes.TASKS_WRITE, work)


async def pause_task(task_id: str, ctx: Context) -> dict[str, Any]:
    """Pause a task; returns the task. Needs tasks:write."""
    return await _set_status(ctx, task_id, TaskStatus.PAUSED)


async def resume_task(task_id: str, ctx: Context) -> dict[str, Any]:
    """Resume a task; returns the task. Needs tasks:write."""
    return await _set_status(ctx, task_id, TaskStatus.ACTIVE)


async def cancel_task(task_id: str, ctx: Context) -> dict[str, Any]:
    """Cancel a task; returns the task. Needs tasks:write."""
    return await _set_status(ctx, task_id, TaskStatus.CANCELED)


async def run_task_now(task_id: str, ctx: Context) -> dict[str, Any]:
    """Queue a run of the task now (the schedule is unaffected). Needs tasks:write."""

    def work(caller: Caller) -> dict[str, Any]:
        task = selectors.task_get(caller.viewer, task_id=task_id)
        occurrence = services.task_run_now(task_id=task.id, actor=caller.actor)
        return {"task_id": str(task.id), "occurrence_id": occurrence.id}

    return await _run(ctx, scopes.TASKS_WRITE, work)


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
        data = validated(SchedulePreviewSerializer, fields)
        tz = data.get("timezone") or settings.TIME_ZONE
        occurrences = selectors.schedule_preview(
            kind=data["schedule_kind"],
            expr=data["schedule_expr"],
            timezone_name=tz,
            after=django_timezone.now(),
            n=data["n"],
        )
        return {"timezone": tz, "occurrences": occurrences}

    return await _run(ctx, scopes.TASKS_READ, work)


# -- runs, tools, events, approvals ------------------------------------------------------------


async def list_runs(
    ctx: Context,
    task_id: str | None = None,
    success: bool | None = None,
    limit: int = 50,
    offset: int = 0,
) -> dict[str, Any]:
    """Runs of your tasks, most recent first, with errors and output. Needs runs:read."""

    def work(caller: Caller) -> dict[str, Any]:
        query = _page_query(limit, offset, task_id=task_id or None, success=success)
        params = validated(RunListQuerySerializer, query)
        runs = selectors.run_list(
            caller.viewer, task_id=params.get("task_id"), success=params.get("success")
        )
        return page(runs, limit=params["limit"], offset=params["offset"], render=run_data)

    return await _run(ctx, scopes.RUNS_READ, work)


def _run_document(caller: Caller, run_id: str) -> dict[str, Any]:
    return run_data(selectors.run_get(caller.viewer, run_id=run_id), include_steps=True)


async def get_run(run_id: str, ctx: Context) -> dict[str, Any]:
    """One run with its output and per-step results. Needs runs:read."""
    return await _run(ctx, scopes.RUNS_READ, lambda c: _run_document(c, run_id))


async def list_tools(ctx: Context) -> dict[str, Any]:
    """Tools a pipeline step may use, with their schemas and required scopes."""
    return await _run(ctx, scopes.TOOLS_READ, lambda caller: tool_catalog())


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

    return await _run(ctx, scopes.EVENTS_PUBLISH, work)


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

    return await _run(ctx, scopes.APPROVALS_DECIDE, work)


async def list_approvals(
    ctx: Context, status: str | None = "pending", limit: int = 50, offset: int = 0
) -> dict[str, Any]:
    """Approvals you may decide, newest first (status: pending|approved|rejected|expired).

    Returns {items, total, limit, offset, has_more}. Needs approvals:decide.
    """

    def work(caller: Caller) -> dict[str, Any]:
        params = validated(
            ApprovalListQuerySerializer, _page_query(limit, offset, status=status or None)
        )
        found = selectors.approval_list(caller.viewer, status=params.get("status"))
        return page(found, limit=params["limit"], offset=params["offset"], render=approval_data)

    return await _run(ctx, scopes.APPROVALS_DECIDE, work)


# -- resources and the prompt ----------------------------------------------------------------


async def task_resource(task_id: str, ctx: Context) -> dict[str, Any]:
    """A task, as GET /tasks/{id} returns it."""
    return await _read(
        ctx, scopes.TASKS_READ, lambda c: task_data(selectors.task_get(c.viewer, task_id=task_id))
    )


async def run_resource(run_id: str, ctx: Context) -> dict[str, Any]:
    """A run with its output and steps, as GET /runs/{id} returns it."""
    return await _read(ctx, scopes.RUNS_READ, lambda c: _run_document(c, run_id))


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


TOOLS: tuple[Callable[..., Any], ...] = (
    create_task,
    list_tasks,
    get_task,
    update_task,
    pause_task,
    resume_task,
    cancel_task,
    run_task_now,
    preview_schedule,
    list_runs,
    get_run,
    list_tools,
    publish_event,
    decide_approval,
    list_approvals,
)
RESOURCES: dict[str, Callable[..., Any]] = {
    "ordinaut://tasks/{task_id}": task_resource,
    "ordinaut://runs/{run_id}": run_resource,
}


def build_server(*, stdio_token: str | None = None) -> MCPServer:
    """The MCP server with Ordinaut's tools, resources and prompt."""
    server = OrdinautMCPServer(stdio_token=stdio_token)
    for tool in TOOLS:
        server.add_tool(tool)
    for uri, resource in RESOURCES.items():
        server.resource(uri, mime_type="application/json")(resource)
    server.prompt()(schedule_recurring_task)
    return server
