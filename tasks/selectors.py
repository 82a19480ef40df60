"""Read queries for tasks and runs, scoped to what the caller may see.

An agent sees only its own tasks and their runs unless it holds `admin`. Another agent's
object is reported as missing (NotFound), never as forbidden, so ids leak nothing.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.db import connection
from django.db.models import Avg, Count, F, Max, Q, QuerySet
from django.utils import timezone

from agents.models import Agent
from ordinaut.database import ModelColumns
from ordinaut.errors import InvalidInput, NotFound
from tasks import schedules
from tasks.models import (
    FINISHED_RUN_STATUSES,
    Occurrence,
    OccurrenceState,
    Run,
    RunStatus,
    SkippedOccurrence,
    Task,
)

# Finished and not succeeded. A run parked for an approval is neither: it waited, and the
# attempt after the decision is the one that succeeds or fails.
_FAILED = [
    status
    for status in FINISHED_RUN_STATUSES
    if status not in (RunStatus.SUCCEEDED, RunStatus.WAITING_APPROVAL)
]


@dataclass(frozen=True)
class Viewer:
    """Who is reading: the agent, and whether it may see every agent's objects."""

    agent: Agent
    is_admin: bool = False


def task_queryset(viewer: Viewer) -> QuerySet:
    """Tasks the viewer may see."""
    queryset = Task.objects.all()
    if not viewer.is_admin:
        queryset = queryset.filter(created_by=viewer.agent)
    return queryset


def task_list(
    viewer: Viewer,
    *,
    status: str | None = None,
    created_by: Any = None,
    schedule_kind: str | None = None,
) -> QuerySet:
    """Visible tasks, newest first, with the original's filters."""
    queryset = task_queryset(viewer).order_by("-created_at", "-id")
    if status:
        queryset = queryset.filter(status=status)
    if created_by:
        queryset = queryset.filter(created_by_id=created_by)
    if schedule_kind:
        queryset = queryset.filter(schedule_kind=schedule_kind)
    return queryset


@dataclass(frozen=True)
class Page:
    """One page of a list and the number of rows matching the whole list."""

    rows: list[Any]
    total: int


# List pages are the API's heaviest reads, so like single-object reads below their
# statements are written once. One statement returns the page and, as a scalar subquery
# PostgreSQL evaluates once, the count of the whole list: one round trip, no ORM compiling,
# and a total from the same snapshot as the rows. The filters are those of task_list /
# run_list; an absent filter is a NULL that PostgreSQL folds away before planning (Django
# binds parameters client-side), so each combination gets the plan of its own query.
_TASK_FILTER = (
    "(%(admin)s OR {t}.created_by_id = %(agent)s)"
    " AND (%(status)s::text IS NULL OR {t}.status = %(status)s)"
    " AND (%(created_by)s::uuid IS NULL OR {t}.created_by_id = %(created_by)s)"
    " AND (%(schedule_kind)s::text IS NULL OR {t}.schedule_kind = %(schedule_kind)s)"
)


@functools.cache
def _task_page_sql() -> str:
    return (
        f"SELECT (SELECT count(*) FROM tasks_task c WHERE {_TASK_FILTER.format(t='c')}),"  # noqa: S608 (constants; values bound)
        f" {_TASK.sql('t')} FROM tasks_task t WHERE {_TASK_FILTER.format(t='t')}"
        " ORDER BY t.created_at DESC, t.id DESC LIMIT %(limit)s OFFSET %(offset)s"
    )


@functools.cache
def _task_count_sql() -> str:
    return f"SELECT count(*) FROM tasks_task c WHERE {_TASK_FILTER.format(t='c')}"  # noqa: S608 (constants; values bound)


def _page(sql: str, count_sql: str, params: dict[str, Any], offset: int) -> tuple[list, int]:
    """(rows without their leading total, total) for a page statement and its count."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
        if rows:
            return [row[1:] for row in rows], rows[0][0]
        if offset == 0:
            return [], 0
        # Past the end: no row carried the count.
        cursor.execute(count_sql, params)
        return [], cursor.fetchone()[0]


def task_page(
    viewer: Viewer,
    *,
    limit: int,
    offset: int,
    status: str | None = None,
    created_by: Any = None,
    schedule_kind: str | None = None,
) -> Page:
    """One page of task_list (same rows, same order) as field records, and its total."""
    params = {
        "admin": viewer.is_admin,
        "agent": viewer.agent.pk,
        "status": status or None,
        "created_by": created_by or None,
        "schedule_kind": schedule_kind or None,
        "limit": limit,
        "offset": offset,
    }
    rows, total = _page(_task_page_sql(), _task_count_sql(), params, offset)
    return Page(rows=[_TASK.record(row) for row in rows], total=total)


# Single-object reads are the API's hottest path, so their statements are written once
# (see ModelColumns): the same primary-key lookup the ORM would build, plus the visibility
# rule of task_queryset / run_queryset (own objects, or everything with admin).
_TASK = ModelColumns(Task)
_RUN = ModelColumns(Run)


# A list renders no steps (run_data without include_steps), and they are each row's largest
# value: a page neither reads, sends nor decodes them.
_RUN_LISTED = ModelColumns(Run, omit=("steps",))


@functools.cache
def _task_by_id_sql() -> str:
    return (
        f"SELECT {_TASK.sql('t')} FROM tasks_task t "  # noqa: S608 (model columns; values bound)
        "WHERE t.id = %(id)s AND (%(admin)s OR t.created_by_id = %(agent)s)"
    )


@functools.cache
def _run_by_id_sql() -> str:
    return (
        f"SELECT {_RUN.sql('r')} FROM tasks_run r "  # noqa: S608 (model columns; values bound)
        "JOIN tasks_task t ON t.id = r.task_id "
        "WHERE r.id = %(id)s AND (%(admin)s OR t.created_by_id = %(agent)s)"
    )


def _visible_one(sql: str, columns: ModelColumns, viewer: Viewer, object_id: Any) -> Any:
    """The row `sql` finds for `object_id` as a model instance, or None (also for bad ids)."""
    try:
        object_id = object_id if isinstance(object_id, uuid.UUID) else uuid.UUID(str(object_id))
    except ValueError:
        return None
    params = {"id": object_id, "admin": viewer.is_admin, "agent": viewer.agent.pk}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return columns.instance(row) if row is not None else None


def task_get(viewer: Viewer, *, task_id: Any) -> Task:
    """A visible task; raise NotFound for a missing or someone else's task."""
    task = _visible_one(_task_by_id_sql(), _TASK, viewer, task_id)
    if task is None:
        raise NotFound(f"Task {task_id} not found")
    return task


def ledger_list(viewer: Viewer, *, task_id: Any) -> QuerySet:
    """The occurrence ledger of a visible task: instants that did not run, newest first."""
    task = task_get(viewer, task_id=task_id)
    return SkippedOccurrence.objects.filter(task=task).order_by("-scheduled_for", "-id")


def queued_occurrence_count(*, task: Task) -> int:
    """Occurrences of `task` waiting in the queue."""
    return Occurrence.objects.filter(task=task, state=OccurrenceState.QUEUED).count()


def run_queryset(viewer: Viewer) -> QuerySet:
    """Runs of tasks the viewer may see."""
    queryset = Run.objects.all()
    if not viewer.is_admin:
        queryset = queryset.filter(task__created_by=viewer.agent)
    return queryset


def _statuses_for(success: bool | None) -> list[str] | None:
    """The run statuses a `success` filter keeps: succeeded, or finished without success
    (a running run, or one waiting on an approval, is neither); None: no filter."""
    if success is None:
        return None
    return [RunStatus.SUCCEEDED.value] if success else list(_FAILED)


def run_list(
    viewer: Viewer,
    *,
    task_id: Any = None,
    success: bool | None = None,
    start_time: datetime | None = None,
    end_time: datetime | None = None,
) -> QuerySet:
    """Visible runs, most recent first; `success` False means finished and not succeeded."""
    queryset = run_queryset(viewer).order_by("-started_at", "-id")
    if task_id:
        queryset = queryset.filter(task_id=task_id)
    if (statuses := _statuses_for(success)) is not None:
        queryset = queryset.filter(status__in=statuses)
    if start_time:
        queryset = queryset.filter(started_at__gte=start_time)
    if end_time:
        queryset = queryset.filter(started_at__lte=end_time)
    return queryset


_RUN_FILTER = (
    "(%(task_id)s::uuid IS NULL OR {r}.task_id = %(task_id)s)"
    " AND (%(statuses)s::text[] IS NULL OR {r}.status = ANY(%(statuses)s::text[]))"
    " AND (%(start_time)s::timestamptz IS NULL OR {r}.started_at >= %(start_time)s)"
    " AND (%(end_time)s::timestamptz IS NULL OR {r}.started_at <= %(end_time)s)"
)


def _runs_of(alias: str, admin: bool) -> str:
    """FROM and WHERE of the runs a viewer sees: an admin's need no join (as run_queryset)."""
    if admin:
        return f"tasks_run {alias} WHERE {_RUN_FILTER.format(r=alias)}"
    return (
        f"tasks_run {alias} JOIN tasks_task {alias}t ON {alias}t.id = {alias}.task_id"
        f" WHERE {alias}t.created_by_id = %(agent)s AND {_RUN_FILTER.format(r=alias)}"
    )


@functools.cache
def _run_page_sql(admin: bool) -> str:
    return (
        f"SELECT (SELECT count(*) FROM {_runs_of('c', admin)}), {_RUN_LISTED.sql('r')}"  # noqa: S608 (constants; values bound)
        f" FROM {_runs_of('r', admin)}"
        " ORDER BY r.started_at DESC, r.id DESC LIMIT %(limit)s OFFSET %(offset)s"
    )


@functools.cache
def _run_count_sql(admin: bool) -> str:
    return f"SELECT count(*) FROM {_runs_of('c', admin)}"  # noqa: S608 (constants; values bound)


def run_page(
    viewer: Viewer,
    *,
    limit: int,
    offset: int,
    task_id: Any = None,
    success: bool | None = None,
    start_time: datetime | None = None,
    end_time: datetime | None = None,
) -> Page:
    """One page of run_list (same rows, same order) as Run instances without their steps
    (deferred), and its total."""
    params = {
        "agent": viewer.agent.pk,
        "task_id": task_id or None,
        "statuses": _statuses_for(success),
        "start_time": start_time,
        "end_time": end_time,
        "limit": limit,
        "offset": offset,
    }
    admin = viewer.is_admin
    rows, total = _page(_run_page_sql(admin), _run_count_sql(admin), params, offset)
    # Instances, not records: run_data reads Run.success, a property.
    return Page(rows=[_RUN_LISTED.instance(row) for row in rows], total=total)


def run_get(viewer: Viewer, *, run_id: Any) -> Run:
    """A visible run; raise NotFound otherwise."""
    run = _visible_one(_run_by_id_sql(), _RUN, viewer, run_id)
    if run is None:
        raise NotFound(f"Task run {run_id} not found")
    return run


def run_latest(viewer: Viewer, *, task_id: Any) -> Run | None:
    """The task's most recent run, None if it never ran; NotFound for an invisible task."""
    task = task_get(viewer, task_id=task_id)
    return Run.objects.filter(task=task).order_by("-started_at", "-id").first()


def _stats(runs: QuerySet) -> dict[str, Any]:
    """Counts, rates, mean duration and last instants over `runs`, in one query."""
    finished = Q(finished_at__isnull=False)
    row = runs.aggregate(
        total=Count("id"),
        succeeded=Count("id", filter=Q(status=RunStatus.SUCCEEDED)),
        failed=Count("id", filter=Q(status__in=_FAILED)),
        tasks=Count("task_id", distinct=True),
        avg_duration=Avg(F("finished_at") - F("started_at"), filter=finished),
        last_run=Max("started_at"),
        last_success=Max("started_at", filter=Q(status=RunStatus.SUCCEEDED)),
        last_failure=Max("started_at", filter=Q(status__in=_FAILED)),
    )
    total = row["total"]
    avg: timedelta | None = row["avg_duration"]
    return {
        "total_runs": total,
        "successful_runs": row["succeeded"],
        "failed_runs": row["failed"],
        "success_rate": round(row["succeeded"] / total, 3) if total else 0.0,
        "failure_rate": round(row["failed"] / total, 3) if total else 0.0,
        "avg_execution_time_seconds": round(avg.total_seconds(), 2) if avg else 0.0,
        "total_tasks_executed": row["tasks"],
        "last_run": row["last_run"],
        "last_success": row["last_success"],
        "last_failure": row["last_failure"],
    }


def run_stats_for_task(viewer: Viewer, *, task_id: Any, days: int) -> dict[str, Any]:
    """The original's per-task statistics over the last `days` days."""
    task = task_get(viewer, task_id=task_id)
    since = timezone.now() - timedelta(days=days)
    stats = _stats(Run.objects.filter(task=task, started_at__gte=since))
    del stats["total_tasks_executed"]
    return {"task_id": str(task.id), "period_days": days, **stats}


def run_stats_summary(viewer: Viewer, *, days: int) -> dict[str, Any]:
    """The original's system-wide statistics (the caller's own tasks unless admin)."""
    since = timezone.now() - timedelta(days=days)
    stats = _stats(run_queryset(viewer).filter(started_at__gte=since))
    for key in ("last_run", "last_success", "last_failure"):
        del stats[key]
    return {
        "period_days": days,
        **stats,
        "runs_per_day": round(stats["total_runs"] / days, 1),
    }


def queued_occurrences_due_at(*, task: Task, run_at: datetime) -> int:
    """Queued occurrences of `task` due exactly at `run_at` (what a snooze moved)."""
    return Occurrence.objects.filter(task=task, state=OccurrenceState.QUEUED, run_at=run_at).count()


def schedule_preview(
    *, kind: str, expr: str | None, timezone_name: str, after: datetime, n: int
) -> list[dict[str, Any]]:
    """The next `n` fire instants after `after`, in UTC and local time, DST cases flagged.

    `dst_shifted`: fired at the end of a spring-forward gap (its wall time did not exist; a
    schedule asking for exactly that first wall time after the gap is flagged too).
    `dst_ambiguous`: its wall time occurs twice (fall-back); it fires once, the first time.
    Raises InvalidInput naming the field for an invalid schedule.
    """
    try:
        instants = schedules.next_occurrences(kind, expr, timezone_name, after, n)
    except schedules.ScheduleError as exc:
        field = "timezone" if str(exc).startswith("unknown timezone") else "schedule_expr"
        raise InvalidInput(f"{field}: {exc}", details={field: [str(exc)]}) from exc
    zone = ZoneInfo(timezone_name)
    result = []
    for instant in instants:
        local = instant.astimezone(zone)
        offset = local.utcoffset()
        before = (instant - timedelta(seconds=1)).astimezone(zone).utcoffset()
        wall = local.replace(tzinfo=None)
        folds = {wall.replace(tzinfo=zone, fold=f).utcoffset() for f in (0, 1)}
        shifted = before is not None and offset is not None and offset > before
        result.append(
            {
                "utc": instant.astimezone(UTC).isoformat(),
                "local": local.isoformat(),
                "utc_offset": _format_offset(offset),
                "dst_shifted": shifted,
                "dst_ambiguous": not shifted and len(folds) > 1,
            }
        )
    return result


def _format_offset(offset: timedelta | None) -> str:
    seconds = int((offset or timedelta()).total_seconds())
    sign = "+" if seconds >= 0 else "-"
    hours, minutes = divmod(abs(seconds) // 60, 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


# -- approvals --------------------------------------------------------------------------------


def approval_queryset(viewer: Viewer) -> QuerySet:
    """Approvals the viewer may see: every one with admin; else those naming it among their
    `approvers` and those of its own tasks (one naming nobody is for operators)."""
    from tasks.models import Approval

    queryset = Approval.objects.all()
    if viewer.is_admin:
        return queryset
    agent = viewer.agent
    return queryset.filter(
        Q(approvers__contains=[agent.name])
        | Q(approvers__contains=[str(agent.pk)])
        | Q(task__created_by=agent)
    )


def approval_list(viewer: Viewer, *, status: str | None = None) -> QuerySet:
    """Visible approvals, newest first."""
    queryset = approval_queryset(viewer).order_by("-created_at", "-id")
    if status:
        queryset = queryset.filter(status=status)
    return queryset
