"""Ordinaut's own MCP server: the agent API as MCP tools, on the official `mcp` SDK.

Every tool authenticates with the same credentials as REST (an API key or a JWT access
token: the Bearer header over HTTP, ORDINAUT_TOKEN for stdio), checks the same scope, and
calls the same services and selectors, so audit, ownership (another agent's task is "not
found") and validation are identical. Errors come back as tool errors whose message starts
with the HTTP status and code the REST API would have answered, e.g. "404 not_found: ...".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone as django_timezone
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.server.mcpserver.tools import Tool
from pydantic import ConfigDict
from rest_framework import exceptions as drf_exceptions
from rest_framework import serializers

from agents import services as agent_services
from agents.authentication import Grant, authenticate_token
from agents.models import Agent
from agents.permissions import require_publisher, require_scope
from agents.serializers import agent_data
from agents.throttles import check_agent
from audit.api import AuditQuerySerializer, audit_event_data
from audit.selectors import audit_event_list
from audit.services import Actor
from ordinaut import scopes
from ordinaut.api import PageQuerySerializer, page, validated
from ordinaut.correlation import new_correlation_id, reset_correlation_id, set_correlation_id
from ordinaut.errors import OrdinautError, Unauthenticated, error_body
from pipelines.api import tool_catalog
from tasks import approvals, events, selectors, services
from tasks.models import TaskStatus
from tasks.serializers import (
    ApprovalListQuerySerializer,
    RunListQuerySerializer,
    SchedulePreviewSerializer,
    SnoozeSerializer,
    StatsQuerySerializer,
    TaskListQuerySerializer,
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

    def __init__(self, *, stdio_token: str | None, tools: list[Tool]) -> None:
        super().__init__(name="ordinaut", instructions=INSTRUCTIONS, version="1.0.0", tools=tools)
        self.stdio_token = stdio_token


def _bearer(ctx: Context) -> str:
    headers = ctx.headers
    if headers is None:  # stdio: the process was started with the caller's token
        server = ctx.mcp_server
        stdio_token = server.stdio_token if isinstance(server, OrdinautMCPServer) else None
        if not stdio_token:
            raise Unauthenticated("set ORDINAUT_TOKEN to an API key or JWT access token")
        return stdio_token
    return _bearer_token(headers.get("authorization") or headers.get("Authorization") or "")


def _bearer_token(header: str) -> str:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("send Authorization: Bearer <API key or JWT access token>")
    return token.strip()


def _as_tool_error(exc: Exception) -> ToolError:
    if isinstance(exc, OrdinautError):
        suffix = f" {exc.details}" if exc.details else ""
        return ToolError(f"{exc.status} {exc.code}: {exc.message}{suffix}")
    if isinstance(exc, serializers.ValidationError):
        # ErrorDetail is a str: as JSON it reads {"field": ["reason"]}, as REST's details do.
        return ToolError(f"422 validation_error: {json.dumps(exc.detail)}")
    if isinstance(exc, drf_exceptions.AuthenticationFailed):
        return ToolError(f"401 authentication_failed: {exc.detail}")
    raise exc


# The REST throttle bucket a tool's calls count in, by the scope it requires: a tool call
# costs what the same REST request costs (list_approvals, a read, says so itself).
_BUCKETS = {
    scopes.TASKS_WRITE: "tasks", scopes.APPROVALS_DECIDE: "tasks", scopes.ADMIN: "tasks",
    None: "events",
}  # fmt: skip


def _call(raw_token: str, required: str | None, work: Callable[[Caller], Any], bucket: str) -> Any:
    """Authenticate, authorize, throttle and run `work` in one sync (ORM) context."""
    if not connection.in_atomic_block:
        # A long-lived server must drop connections PostgreSQL closed (Django does this per
        # request in the web process); never inside a caller's transaction.
        close_old_connections()
    token = set_correlation_id(new_correlation_id())
    try:
        agent, grant = authenticate_token(raw_token)
        require_scope(agent, grant.scopes, required)
        check_agent(agent.pk, bucket)
        return work(Caller(agent, grant))
    except (OrdinautError, serializers.ValidationError, drf_exceptions.AuthenticationFailed) as exc:
        raise _as_tool_error(exc) from exc
    finally:
        reset_correlation_id(token)


async def _run(
    ctx: Context,
    required: str | None,
    work: Callable[[Caller], Any],
    *,
    bucket: str | None = None,
) -> Any:
    """A tool's body: `work` runs in the ORM thread once the caller holds `required` and is
    within its rate limit (a tool error `429 throttled` with `retry_after` otherwise)."""
    try:
        raw = _bearer(ctx)
    except OrdinautError as exc:
        raise _as_tool_error(exc) from exc
    bucket = bucket or _BUCKETS.get(required, "reads")
    return await sync_to_async(_call, thread_sensitive=True)(raw, required, work, bucket)


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
    description: str | None = None,
    timezone: str | None = None,
    priority: int | None = None,
    dedupe_key: str | None = None,
    dedupe_window_seconds: int | None = None,
    max_retries: int | None = None,
    backoff_strategy: str | None = None,
    concurrency_key: str | None = None,
    misfire_policy: str | None = None,
    timeout_seconds: int | None = None,
    created_by: str | None = None,
) -> dict[str, Any]:
    """Create a task (schedule_kind: cron|rrule|once|event|condition; payload: {pipeline}).

    Takes every field POST /tasks takes, with the same defaults (an omitted field gets
    REST's default). Returns {created, task}; with dedupe_key a duplicate inside the window
    returns the existing task with created=false. Requires tasks:write.
    """
    given = {
        "title": title, "schedule_kind": schedule_kind, "payload": payload,
        "schedule_expr": schedule_expr, "description": description, "timezone": timezone,
        "priority": priority, "dedupe_key": dedupe_key,
        "dedupe_window_seconds": dedupe_window_seconds, "max_retries": max_retries,
        "backoff_strategy": backoff_strategy, "concurrency_key": concurrency_key,
        "misfire_policy": misfire_policy, "timeout_seconds": timeout_seconds,
        "created_by": created_by,
    }  # fmt: skip
    # An argument left out is not sent, so the serializer applies REST's default.
    fields = {name: value for name, value in given.items() if value is not None}

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
    """Partially update a task, as PUT /tasks/{id}: `changes` holds any of title,
    description, schedule_kind, schedule_expr, timezone, payload, priority, status,
    dedupe_key, dedupe_window_seconds, max_retries, backoff_strategy, concurrency_key,
    misfire_policy, timeout_seconds. Schedule and pipeline are re-validated; an unknown
    field is a 422 naming it. Needs tasks:write."""

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
    after: str | None = None,
) -> dict[str, Any]:
    """Next n (1..100) fire instants after `after` (ISO 8601; default now), in UTC and
    local time; DST-shifted ones are flagged. Nothing is stored. Needs tasks:read."""

    def work(caller: Caller) -> dict[str, Any]:
        fields = {"schedule_kind": schedule_kind, "schedule_expr": schedule_expr, "n": n}
        fields.update({k: v for k, v in (("timezone", timezone), ("after", after)) if v})
        data = validated(SchedulePreviewSerializer, fields)
        tz = data.get("timezone") or settings.TIME_ZONE
        occurrences = selectors.schedule_preview(
            kind=data["schedule_kind"],
            expr=data["schedule_expr"],
            timezone_name=tz,
            after=data.get("after") or django_timezone.now(),
            n=data["n"],
        )
        return {"timezone": tz, "occurrences": occurrences}

    return await _run(ctx, scopes.TASKS_READ, work)


async def snooze_task(
    task_id: str, delay_seconds: int, ctx: Context, reason: str | None = None
) -> dict[str, Any]:
    """Delay a task by delay_seconds (1..604800), as POST /tasks/{id}/snooze: queued runs
    move to now + delay, instants due inside the delay fold into that one. Needs
    tasks:write."""

    def work(caller: Caller) -> dict[str, Any]:
        task = selectors.task_get(caller.viewer, task_id=task_id)
        data = validated(SnoozeSerializer, {"delay_seconds": delay_seconds, "reason": reason})
        now = django_timezone.now()
        services.task_snooze(
            task_id=task.id,
            delay_seconds=data["delay_seconds"],
            reason=data.get("reason"),
            actor=caller.actor,
            now=now,
        )
        until = now + timedelta(seconds=data["delay_seconds"])
        affected = selectors.queued_occurrences_due_at(task=task, run_at=until)
        return snooze_data(
            task, delay_seconds=data["delay_seconds"], until=until, affected=affected
        )

    return await _run(ctx, scopes.TASKS_WRITE, work)


async def get_task_ledger(
    task_id: str, ctx: Context, limit: int = 50, offset: int = 0
) -> dict[str, Any]:
    """Why didn't it run? The instants the task's schedule produced that did not run, newest
    first: {items: [{scheduled_for, reason, lateness_seconds, details, recorded_at}],
    total, limit, offset, has_more}. Needs tasks:read."""

    def work(caller: Caller) -> dict[str, Any]:
        params = validated(PageQuerySerializer, _page_query(limit, offset))
        entries = selectors.ledger_list(caller.viewer, task_id=task_id)
        return page(
            entries, limit=params["limit"], offset=params["offset"], render=ledger_entry_data
        )

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


async def get_latest_run(task_id: str, ctx: Context) -> dict[str, Any]:
    """The task's most recent run as {run}; run is null when it has not run yet. Needs
    runs:read."""

    def work(caller: Caller) -> dict[str, Any]:
        run = selectors.run_latest(caller.viewer, task_id=task_id)
        return {"run": None if run is None else run_data(run)}

    return await _run(ctx, scopes.RUNS_READ, work)


async def get_task_stats(task_id: str, ctx: Context, days: int = 30) -> dict[str, Any]:
    """Run statistics of one task over the last `days` (1..365), as
    GET /runs/task/{id}/stats. Needs runs:read."""

    def work(caller: Caller) -> dict[str, Any]:
        period = validated(StatsQuerySerializer, {"days": days})["days"]
        return stats_data(selectors.run_stats_for_task(caller.viewer, task_id=task_id, days=period))

    return await _run(ctx, scopes.RUNS_READ, work)


async def get_runs_summary(ctx: Context, days: int = 7) -> dict[str, Any]:
    """Run statistics of all your tasks over the last `days` (1..365), as
    GET /runs/stats/summary. Needs runs:read."""

    def work(caller: Caller) -> dict[str, Any]:
        period = validated(StatsQuerySerializer, {"days": days})["days"]
        return selectors.run_stats_summary(caller.viewer, days=period)

    return await _run(ctx, scopes.RUNS_READ, work)


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
    events:publish, or events:publish:<glob> matching the topic; triggered_tasks counts
    only the caller's own tasks.
    """

    def work(caller: Caller) -> dict[str, Any]:
        require_publisher(caller.agent, caller.grant.scopes)
        event, created = events.event_publish(
            topic=topic,
            payload={} if payload is None else payload,
            idempotency_key=idempotency_key,
            source=caller.agent,
            actor=caller.actor,
            granted=caller.grant.scopes,
        )
        return {"created": created, **event_published_data(event)}

    return await _run(ctx, None, work)


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

    return await _run(ctx, scopes.APPROVALS_DECIDE, work, bucket="reads")


# -- the audit log (admin) -------------------------------------------------------------------


async def list_audit(
    ctx: Context,
    action: str | None = None,
    subject_type: str | None = None,
    subject_id: str | None = None,
    correlation_id: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> dict[str, Any]:
    """Audit events, newest first, as GET /audit. Returns {items, total, limit, offset,
    has_more}; each item carries its chain link (prev_hash, hash). Needs admin."""

    def work(caller: Caller) -> dict[str, Any]:
        query = validated(
            AuditQuerySerializer,
            _page_query(limit, offset, action=action, subject_type=subject_type,
                        subject_id=subject_id, correlation_id=correlation_id),
        )  # fmt: skip
        size, start = query.pop("limit"), query.pop("offset")
        return page(audit_event_list(**query), limit=size, offset=start, render=audit_event_data)

    return await _run(ctx, scopes.ADMIN, work, bucket="reads")


# -- the kill switch (admin) -----------------------------------------------------------------


async def pause_agent(agent_id: str, ctx: Context) -> dict[str, Any]:
    """Hold all of an agent's work, as POST /agents/{id}/pause: nothing of it is queued or
    claimed, and its running runs stop at their next step. Returns the agent; 409 unless it
    is active. Needs admin."""
    return await _run(
        ctx,
        scopes.ADMIN,
        lambda caller: agent_data(
            agent_services.agent_pause(agent_id=agent_id, actor=caller.actor)
        ),
    )


async def resume_agent(agent_id: str, ctx: Context) -> dict[str, Any]:
    """Let a paused agent's work go on, as POST /agents/{id}/resume; instants missed
    meanwhile follow each task's misfire policy. Returns the agent; 409 unless it is
    paused. Needs admin."""
    return await _run(
        ctx,
        scopes.ADMIN,
        lambda caller: agent_data(
            agent_services.agent_resume(agent_id=agent_id, actor=caller.actor)
        ),
    )


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
    snooze_task,
    preview_schedule,
    get_task_ledger,
    list_runs,
    get_run,
    get_latest_run,
    get_task_stats,
    get_runs_summary,
    list_tools,
    publish_event,
    decide_approval,
    list_approvals,
    pause_agent,
    resume_agent,
    list_audit,
)
RESOURCES: dict[str, Callable[..., Any]] = {
    "ordinaut://tasks/{task_id}": task_resource,
    "ordinaut://runs/{run_id}": run_resource,
}


def strict_tool(fn: Callable[..., Any]) -> Tool:
    """The SDK's tool for `fn`, refusing arguments that `fn` does not declare.

    The SDK drops unknown arguments silently; REST answers them with a 422, and an agent
    that misspells `misfire_policy` must hear of it rather than get the default.
    """
    tool = Tool.from_function(fn)
    loose = tool.fn_metadata.arg_model
    config = ConfigDict(**loose.model_config)
    config["extra"] = "forbid"
    tool.fn_metadata.arg_model = type(
        loose.__name__, (loose,), {"model_config": config, "__module__": __name__}
    )
    tool.parameters = {**tool.parameters, "additionalProperties": False}
    return tool


def build_server(*, stdio_token: str | None = None) -> MCPServer:
    """The MCP server with Ordinaut's tools, resources and prompt."""
    server = OrdinautMCPServer(stdio_token=stdio_token, tools=[strict_tool(fn) for fn in TOOLS])
    for uri, resource in RESOURCES.items():
        server.resource(uri, mime_type="application/json")(resource)
    server.prompt()(schedule_recurring_task)
    return server


# -- streamable HTTP ---------------------------------------------------------------------------


def _authenticate(raw_token: str) -> None:
    if not connection.in_atomic_block:
        close_old_connections()
    authenticate_token(raw_token)


class RequireBearer:
    """ASGI gate: an HTTP request without a valid token is answered 401 before MCP sees it.

    So `initialize` itself is refused, as REST refuses a request, instead of a client
    learning at its first tool call. Each tool call still authenticates and checks its
    scope (a token revoked mid-session stops working at once).
    """

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":  # lifespan: the SDK's session manager starts here
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value for key, value in scope["headers"]}
        header = headers.get("authorization", b"").decode("latin-1")
        correlation = set_correlation_id(new_correlation_id())
        try:
            await sync_to_async(_authenticate, thread_sensitive=True)(_bearer_token(header))
        except (OrdinautError, drf_exceptions.AuthenticationFailed) as exc:
            message = exc.message if isinstance(exc, OrdinautError) else str(exc.detail)
            body = json.dumps(error_body("authentication_failed", message)).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"www-authenticate", b'Bearer realm="ordinaut"'),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        finally:
            reset_correlation_id(correlation)
        await self.app(scope, receive, send)


def http_app(server: MCPServer, *, host: str) -> RequireBearer:
    """The streamable-HTTP ASGI app behind the Bearer gate; stateless, so any replica serves."""
    return RequireBearer(server.streamable_http_app(stateless_http=True, host=host))
