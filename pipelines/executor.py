"""Run one attempt of a task's pipeline, step by step, recording each step as it finishes.

The worker creates the Run row (status `running`), calls `execute(run)` and then finishes
the run from the returned `ExecutionResult`; this module never sets the run's status.
What it guarantees:

- Durable: after every step the run's `steps` are written with a conditional UPDATE
  (`WHERE status = 'running'`), so a worker that lost its lease cannot overwrite a newer
  attempt, and it stops as soon as it notices.
- Resumable: a later attempt of the same occurrence reuses the earlier attempt's leading
  succeeded or skipped steps (status `reused`, same output) instead of repeating their side
  effects, and resumes a step parked for approval.
- Contained: nothing a payload or a tool does escapes as an exception. Each failure is a
  step error naming the tool, the reason and the run's correlation id.
- Secret-free: values of `${secrets.X}` never reach the stored steps, output or errors.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from ordinaut import metrics
from ordinaut.correlation import reset_correlation_id, set_correlation_id
from ordinaut.errors import InvalidInput
from pipelines.conditions import ConditionError, evaluate_condition
from pipelines.secrets import get_secret, redact
from pipelines.templating import TemplateContext, TemplateError, render
from pipelines.tools.base import (
    ApprovalRequest,
    ToolContext,
    ToolError,
    ToolSpec,
    ToolTimeout,
    ToolWaiting,
)
from pipelines.validation import step_name, validate_structure

if TYPE_CHECKING:
    from tasks.models import Run

logger = logging.getLogger("pipelines.executor")

MAX_BACKOFF_SECONDS = 60.0
# How long a step's record waits for an unreachable database before the run gives up.
DATABASE_RETRY_SECONDS = 60.0


class StepStatus(StrEnum):
    SUCCEEDED = "succeeded"  # the tool returned an output that matched its schema
    FAILED = "failed"  # the step could not produce an output (see its error)
    SKIPPED = "skipped"  # its `if` was falsy
    REUSED = "reused"  # finished in an earlier attempt; its output was carried over
    WAITING = "waiting"  # parked for a decision (approval.request)


_REUSABLE = {StepStatus.SUCCEEDED, StepStatus.SKIPPED, StepStatus.REUSED}


@dataclass(slots=True)
class RunView:
    """The attempt as the executor and its tools see it, built by the worker from its claim.

    Duck-compatible with the `tasks.models.Run` row (the attributes read here and by tools:
    pk/id, task, task_id, occurrence_id, scheduled_for, attempt, trigger, correlation_id,
    steps): constructing a model instance per run cost a tenth of a short run's time.
    """

    id: Any
    task: Any  # tasks.models.Task, its created_by loaded
    occurrence_id: int | None
    scheduled_for: datetime | None
    attempt: int
    trigger: str
    correlation_id: str
    steps: list | None = None

    @property
    def pk(self) -> Any:
        return self.id

    @property
    def task_id(self) -> Any:
        return self.task.pk


@dataclass
class ExecutionResult:
    # "succeeded" | "failed" | "timed_out" | "waiting" (parked for approval) | "canceled"
    # (stopped at a step boundary because the agent was paused: not a failure)
    status: str
    output: Any  # the run's output (pipeline `output` template, else {"steps": {...}})
    error: str | None  # human message: step id, tool name, reason
    retryable: bool = True  # False for errors a retry cannot fix (schema, unknown tool...)
    # The step records as they stand at the end. The last step's record is not written by
    # the executor: the worker stores it with the run's status, in one batched commit.
    steps: list[dict[str, Any]] | None = None
    approval: ApprovalRequest | None = None  # set when the status is "waiting"


class _LeaseLost(Exception):
    """The run is no longer `running` in the database: another attempt owns the occurrence."""


@dataclass
class _StepFailure:
    message: str
    retryable: bool
    timed_out: bool = False


class _StepRun:
    """One step's record while it runs; `finish` and `fail` write how it ended."""

    def __init__(self, execution: _Execution, step: dict[str, Any], name: str) -> None:
        self.execution = execution
        self.step = step
        self.name = name
        self.uses: str = step["uses"]
        self.clock = time.monotonic()
        self.record: dict[str, Any] = {
            "id": name,
            "uses": self.uses,
            "status": None,
            "input": None,
            "output": None,
            "error": None,
            "started_at": timezone.now().isoformat(),
            "finished_at": None,
            "duration_ms": None,
            "attempts": 0,
            "run_id": execution.run_id,
        }
        if step.get("save_as"):
            self.record["save_as"] = step["save_as"]
        execution.records.append(self.record)

    def finish(self, status: StepStatus, *, output: Any = None, error: str | None = None) -> None:
        redact_value = self.execution._redact
        self.record["status"] = status.value
        self.record["output"] = redact_value(output)
        self.record["error"] = redact_value(error)
        self.record["finished_at"] = timezone.now().isoformat()
        seconds = time.monotonic() - self.clock
        self.record["duration_ms"] = round(seconds * 1000, 3)
        if status != StepStatus.SKIPPED:
            _step_duration(self.uses).observe(seconds)
        level = logging.WARNING if status == StepStatus.FAILED else logging.INFO
        if not logger.isEnabledFor(level):
            return
        logger.log(
            level,
            "run %s step %s (%s): %s%s",
            self.execution.run_row.pk,
            self.name,
            self.uses,
            status.value,
            f": {self.record['error']}" if error else "",
            extra={"correlation_id": self.execution.correlation_id, "step_id": self.name},
        )

    def fail(self, message: str, *, retryable: bool, timed_out: bool = False) -> _StepFailure:
        """Record the step as failed and return how the run should treat the failure."""
        correlation_id = self.execution.correlation_id
        # Tool errors often start with the tool's name; the record names it once.
        message = message.removeprefix(f"{self.uses}: ")
        self.finish(
            StepStatus.FAILED, error=f"{self.uses}: {message} (correlation id {correlation_id})"
        )
        self.execution._publish(self.step, self.name, None, produced=False)
        return _StepFailure(
            f"step {self.name!r} ({self.uses}) failed: {self.execution._redact(message)} "
            f"(correlation id {correlation_id})",
            retryable=retryable,
            timed_out=timed_out,
        )


def execute(
    run: Run | RunView,
    *,
    event: dict | None = None,
    deadline: float | None = None,
    structure_checked: bool = False,
) -> ExecutionResult:
    """Execute `run`'s pipeline; `deadline` is a `time.monotonic()` instant for the whole run.

    `structure_checked`: the caller ran `validate_structure` on this very payload object
    and it passed (the worker does once per cached task), so it is not walked again.
    Writes `run.steps` as it goes; never raises for anything a payload or tool can do.
    """
    token = set_correlation_id(run.correlation_id or None)
    try:
        execution = _Execution(run, event=event, deadline=deadline)
        return execution.run(structure_checked=structure_checked)
    except Exception as exc:
        # Only a bug in this module (or a database outage) lands here.
        logger.exception("run %s: executor error", run.pk)
        return ExecutionResult(
            status="failed",
            output=None,
            error=f"internal error while executing the pipeline: {type(exc).__name__}: {exc} "
            f"(correlation id {run.correlation_id or '-'})",
        )
    finally:
        reset_correlation_id(token)


def inline_safe(payload: Any) -> bool:
    """True when every step of the pipeline calls a pure built-in tool (`ToolSpec.inline`)
    at most once: nothing to wait on (no I/O, no sleep, no retry backoff), so the worker may
    run it on its own thread instead of handing it to the pool."""
    from pipelines.tools import BUILTIN_TOOLS

    pipeline = payload.get("pipeline") if isinstance(payload, dict) else None
    if not isinstance(pipeline, list) or not pipeline:
        return False
    for step in pipeline:
        if not isinstance(step, dict) or not isinstance(step.get("uses"), str):
            return False
        tool = BUILTIN_TOOLS.get(step["uses"])
        if tool is None or not tool.inline or _retry_policy(step)[0] != 1:
            return False
    return True


def record_decision(*, run_id: Any, step_id: str, decision: dict[str, Any]) -> bool:
    """Attach an approval decision to the waiting step `step_id` of run `run_id`.

    `decision` is `{"status": "approved"|"rejected"|"expired", "decided_by", "comment",
    "approved_items"?}`. The next attempt of the occurrence resumes with it. Returns False
    when the run has no waiting step of that id.
    """
    from tasks.models import Run

    with transaction.atomic():
        run = Run.objects.select_for_update().filter(pk=run_id).first()
        if run is None:
            return False
        steps = list(run.steps or [])
        for record in steps:
            if record.get("id") == step_id and record.get("status") == StepStatus.WAITING:
                record["decision"] = {
                    **decision,
                    "decided_at": decision.get("decided_at") or timezone.now().isoformat(),
                }
                Run.objects.filter(pk=run.pk).update(steps=steps)
                return True
    return False


class _Execution:
    def __init__(self, run: Run | RunView, *, event: dict | None, deadline: float | None) -> None:
        self.run_row = run
        self.run_id = str(run.pk)
        self.task = run.task
        self.agent = self.task.created_by
        self.deadline = deadline
        self.correlation_id = run.correlation_id or "-"
        self.records: list[dict[str, Any]] = []
        zone = _zone(self.task.timezone)
        now = timezone.now().astimezone(zone)
        self.payload = self.task.payload if isinstance(self.task.payload, dict) else {}
        self.data: dict[str, Any] = {
            "params": self.payload.get("params") or {},
            "steps": {},
            "run": {
                "id": self.run_id,
                "attempt": run.attempt,
                "scheduled_for": _iso(run.scheduled_for, zone),
                "trigger": run.trigger,
                "occurrence_id": run.occurrence_id,
                "correlation_id": run.correlation_id,
            },
            "task": {
                "id": str(self.task.pk),
                "title": self.task.title,
                "timezone": self.task.timezone,
                "created_by": str(self.agent.pk),
                "agent": self.agent.name,
            },
            "event": event,
            "now": now.isoformat(timespec="seconds"),
        }
        self.templates = TemplateContext(data=self.data, now=now, secret=self._secret)
        # Names whose output the default run output lists, in pipeline order.
        self.produced: list[str] = []

    def _secret(self, name: str) -> str | None:
        """A secret's value for a template, if the task's agent holds its scope (checked at
        save time too; checked again because scopes can be narrowed since)."""
        from ordinaut.scopes import grants_secret, secret_scope

        if not grants_secret(self.agent.scopes, name):
            raise TemplateError(
                f"${{secrets.{name}}}: agent {self.agent.name!r} lacks scope {secret_scope(name)!r}"
            )
        return get_secret(name)

    # -- the run ------------------------------------------------------------------------------

    def run(self, *, structure_checked: bool = False) -> ExecutionResult:
        try:
            if not structure_checked:
                validate_structure(self.payload)
        except InvalidInput as exc:
            return self._failed(f"invalid pipeline: {exc.message}", retryable=False)
        pipeline = self.payload["pipeline"]
        try:
            start, resumed = self._reuse_previous(pipeline)
            for index in range(start, len(pipeline)):
                step = pipeline[index]
                name = step_name(step, index)
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    return self._result(
                        "timed_out", f"run timed out before step {name!r}", retryable=True
                    )
                if index > start and self._agent_halted():
                    # The kill switch: stop at this boundary; the steps done so far are
                    # stored, and the attempt after the resume carries them over.
                    return self._result(
                        "canceled",
                        f"agent {self.agent.name!r} was paused; stopped before step {name!r}",
                        retryable=True,
                    )
                outcome = self._run_step(step, name, resumed if index == start else None)
                goes_on = outcome in (None, StepStatus.SKIPPED) or (
                    isinstance(outcome, _StepFailure) and step.get("on_error") == "continue"
                )
                if goes_on and index < len(pipeline) - 1:
                    # Durable progress: a later attempt resumes after this step. A step that
                    # ends the run is stored by the worker together with the run's result.
                    self._save()
                if outcome is None or outcome == StepStatus.SKIPPED:
                    continue
                if outcome == StepStatus.WAITING:
                    return self._waiting()
                failure: _StepFailure = outcome
                if step.get("on_error") == "continue":
                    continue
                status = "timed_out" if failure.timed_out else "failed"
                return self._result(status, failure.message, retryable=failure.retryable)
            return self._finish()
        except _LeaseLost:
            logger.warning("run %s is no longer running; stopped", self.run_row.pk)
            return ExecutionResult(
                status="failed",
                output=None,
                error="the run is no longer running (its lease was lost); stopped",
            )

    def _agent_halted(self) -> bool:
        """True when the task's agent is paused or inactive now (one indexed read; the
        claim checked it before the first step)."""
        from tasks.models import Task

        return not _retrying_database(
            lambda: Task.objects.filter(
                pk=self.task.pk, created_by__is_active=True, created_by__paused_at__isnull=True
            ).exists(),
            deadline=self.deadline,
        )

    def _reuse_previous(self, pipeline: list[dict]) -> tuple[int, dict | None]:
        """Carry over the previous attempt's leading finished steps; return where to start.

        Also returns the previous record of the step to resume when that attempt parked on
        it (an approval), so the tool can see the decision.
        """
        previous = self._previous_steps()
        index, resumed = 0, None
        while index < min(len(pipeline), len(previous)):
            step, earlier = pipeline[index], previous[index]
            name = step_name(step, index)
            # Only the same step at the same place: the payload may have changed between
            # attempts, and then nothing after the first difference can be trusted.
            if earlier.get("id") != name or earlier.get("uses") != step["uses"]:
                break
            if earlier.get("status") == StepStatus.WAITING:
                resumed = earlier
                break
            if earlier.get("status") not in _REUSABLE:
                break
            record = {**earlier, "status": StepStatus.REUSED.value}
            record.setdefault("reused_from", earlier.get("run_id"))
            record["run_id"] = self.run_id
            self.records.append(record)
            produced = earlier.get("produced", earlier.get("status") != StepStatus.SKIPPED)
            output = earlier.get("output") if produced else None
            self._publish(step, name, output, produced=produced)
            index += 1
        if self.records:
            self._save()
        return index, resumed

    def _previous_steps(self) -> list[dict[str, Any]]:
        from tasks.models import Run

        if self.run_row.occurrence_id is None or self.run_row.attempt <= 1:
            return []
        previous = _retrying_database(
            lambda: (
                Run.objects.filter(
                    occurrence_id=self.run_row.occurrence_id, attempt__lt=self.run_row.attempt
                )
                .order_by("-attempt")
                .values("id", "steps")
                .first()
            ),
            deadline=self.deadline,
        )
        if previous is None:
            return []
        steps = [dict(record) for record in previous["steps"] or [] if isinstance(record, dict)]
        for record in steps:
            record.setdefault("run_id", str(previous["id"]))
        return steps

    # -- one step -----------------------------------------------------------------------------

    def _run_step(
        self, step: dict[str, Any], name: str, resumed: dict | None
    ) -> StepStatus | _StepFailure | None:
        """Run one step, append its record; return None (succeeded) or what stopped it."""
        current = _StepRun(self, step, name)
        if isinstance(step.get("if"), str):
            try:
                holds = evaluate_condition(step["if"], self.data)
            except ConditionError as exc:
                return current.fail(str(exc), retryable=False)
            if not holds:
                current.finish(StepStatus.SKIPPED)
                self._publish(step, name, None, produced=False)
                return StepStatus.SKIPPED
        prepared = self._prepare(current)
        if isinstance(prepared, _StepFailure):
            return prepared
        tool, arguments = prepared
        return self._call_with_retries(current, tool, arguments, resumed)

    def _prepare(self, current: _StepRun) -> tuple[ToolSpec, dict[str, Any]] | _StepFailure:
        """Render the step's input, find its tool and check that the agent may call it."""
        from pipelines.registry import UnknownTool, get_tool

        try:
            tool = get_tool(current.uses)
        except UnknownTool as exc:
            return current.fail(exc.message, retryable=False)
        try:
            # The tool's input schema decides where a whole-string template becomes text.
            arguments = render(current.step.get("with") or {}, self.templates, tool.input_schema)
        except TemplateError as exc:
            return current.fail(str(exc), retryable=False)
        current.record["input"] = self._redact(arguments)
        if not tool.granted_by(self.agent.scopes):
            return current.fail(
                f"agent {self.agent.name!r} lacks scope {tool.scope_hint()}", retryable=False
            )
        try:
            tool.check_input(arguments)
        except ToolError as exc:
            return current.fail(exc.message, retryable=False)
        if tool.name.startswith(LLM_PREFIX):
            spent = self._llm_budget_spent()
            if spent is not None:
                return current.fail(spent, retryable=False)
        return tool, arguments

    def _llm_budget_spent(self) -> str | None:
        """The step's failure when the agent used up max_llm_tokens_per_day, else None."""
        from tasks.models import AgentLlmUsage, Task

        limit = (
            Task.objects.filter(pk=self.task.pk)
            .values_list("created_by__max_llm_tokens_per_day", flat=True)
            .first()
        )
        if limit is None:
            return None
        used = AgentLlmUsage.tokens_on(self.agent.pk)
        if used < limit:
            return None
        return (
            f"budget_exceeded: agent {self.agent.name!r} used {used} LLM tokens today; its "
            f"max_llm_tokens_per_day budget is {limit}"
        )

    def _record_llm_usage(self, output: Any) -> None:
        """Add the tokens an llm.* step's endpoint reported to the agent's day."""
        from tasks.models import AgentLlmUsage

        usage = output.get("usage") if isinstance(output, dict) else None
        tokens = _reported_tokens(usage)
        if tokens <= 0:
            return
        try:
            AgentLlmUsage.add(self.agent.pk, tokens)
        except DatabaseError as exc:
            # The answer is in hand; failing the step would only make a retry pay again.
            logger.warning("run %s: LLM usage not recorded: %s", self.run_row.pk, exc)

    def _call_with_retries(
        self, current: _StepRun, tool: ToolSpec, arguments: dict[str, Any], resumed: dict | None
    ) -> StepStatus | _StepFailure | None:
        """Call the tool up to the step's `retry.attempts`, each within the run's deadline."""
        attempts, backoff, exponential = _retry_policy(current.step)
        step_timeout = float(current.step.get("timeout_seconds") or tool.timeout_seconds)
        failure: _StepFailure | None = None
        for attempt in range(1, attempts + 1):
            current.record["attempts"] = attempt
            timeout, bounded_by_run = step_timeout, False
            if self.deadline is not None:
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    return current.fail("the run's timeout passed", retryable=True, timed_out=True)
                if remaining < step_timeout:
                    timeout, bounded_by_run = remaining, True
            context = ToolContext(
                step_id=current.name,
                timeout=timeout,
                run=self.run_row,
                task=self.task,
                agent=self.agent,
                correlation_id=self.correlation_id,
                resumed=resumed,
                secrets=frozenset(self.templates.revealed),
            )
            outcome = self._attempt(current, tool, arguments, context, bounded_by_run)
            if not isinstance(outcome, _StepFailure):
                return outcome
            failure = outcome
            if not failure.retryable or failure.timed_out or attempt == attempts:
                break
            delay = min(backoff * (2 ** (attempt - 1) if exponential else 1), MAX_BACKOFF_SECONDS)
            if self.deadline is not None and time.monotonic() + delay >= self.deadline:
                break
            logger.info("run %s step %s: attempt %d failed", self.run_row.pk, current.name, attempt)
            time.sleep(delay)
        assert failure is not None
        return current.fail(
            failure.message, retryable=failure.retryable, timed_out=failure.timed_out
        )

    def _attempt(
        self,
        current: _StepRun,
        tool: ToolSpec,
        arguments: dict[str, Any],
        context: ToolContext,
        bounded_by_run: bool,
    ) -> StepStatus | _StepFailure | None:
        """One call of the tool. A failure comes back unrecorded: the caller may retry it."""
        try:
            result = tool.call(arguments, context)
            if isinstance(result, ToolWaiting):
                current.finish(StepStatus.WAITING, output=_jsonable(result.output))
                return StepStatus.WAITING
            result = _jsonable(result)
            tool.check_output(result)
        except ToolTimeout as exc:
            # A timeout cut short by the run's deadline is the run's timeout, not the step's.
            return _StepFailure(exc.message, retryable=True, timed_out=bounded_by_run)
        except ToolError as exc:
            return _StepFailure(exc.message, retryable=exc.retryable)
        except Exception as exc:
            logger.exception("run %s step %s (%s) raised", self.run_row.pk, current.name, tool.name)
            return _StepFailure(f"{type(exc).__name__}: {exc}", retryable=True)
        if tool.name.startswith(LLM_PREFIX):
            self._record_llm_usage(result)
        current.finish(StepStatus.SUCCEEDED, output=result)
        self._publish(current.step, current.name, result)
        return None

    def _publish(self, step: dict, name: str, output: Any, *, produced: bool = True) -> None:
        """Make a step's output readable as `${steps.<id>}` and `${steps.<save_as>}`."""
        key = step.get("save_as") or name
        self.data["steps"][name] = output
        self.data["steps"][key] = output
        self.records[-1]["produced"] = produced
        if produced and key not in self.produced:
            self.produced.append(key)

    # -- results --------------------------------------------------------------------------

    def _finish(self) -> ExecutionResult:
        if "output" in self.payload:
            try:
                output = render(self.payload["output"], self.templates)
            except TemplateError as exc:
                return self._failed(f"pipeline output: {exc}", retryable=False)
        else:
            output = {"steps": {key: self.data["steps"][key] for key in self.produced}}
        output = self._redact(_jsonable(output))
        return ExecutionResult(status="succeeded", output=output, error=None, steps=self._steps())

    def _waiting(self) -> ExecutionResult:
        record = self.records[-1]
        output = record["output"] or {}
        approval = ApprovalRequest(
            step_id=record["id"],
            prompt=output.get("message") or "",
            context=output.get("data"),
            approvers=output.get("approvers") or [],
            expires_in_seconds=output.get("expires_in_seconds"),
        )
        return ExecutionResult(
            approval=approval,
            status="waiting",
            output={"waiting": {"step": record["id"], "uses": record["uses"], **record["output"]}},
            error=None,
            retryable=False,
            steps=self._steps(),
        )

    def _result(self, status: str, message: str, *, retryable: bool) -> ExecutionResult:
        return ExecutionResult(
            status=status,
            output=self._redact({"steps": {k: self.data["steps"][k] for k in self.produced}}),
            error=self._redact(message),
            retryable=retryable,
            steps=self._steps(),
        )

    def _steps(self) -> list[dict[str, Any]]:
        return self._redact(self.records)

    def _failed(self, message: str, *, retryable: bool) -> ExecutionResult:
        full = f"{message} (correlation id {self.correlation_id})"
        logger.warning("run %s: %s", self.run_row.pk, full)
        return self._result("failed", full, retryable=retryable)

    def _redact(self, value: Any) -> Any:
        return redact(value, self.templates.revealed)

    def _save(self) -> None:
        """Store the step records, only while the run is still ours to write."""
        from tasks.models import Run, RunStatus

        steps = self._redact(self.records)
        updated = _retrying_database(
            lambda: Run.objects.filter(pk=self.run_row.pk, status=RunStatus.RUNNING).update(
                steps=steps
            ),
            deadline=self.deadline,
        )
        if not updated:
            raise _LeaseLost
        self.run_row.steps = steps


LLM_PREFIX = "llm."


def _reported_tokens(usage: Any) -> int:
    """Tokens an OpenAI-style `usage` reports: total_tokens, else prompt + completion."""
    if not isinstance(usage, dict):
        return 0
    numbers = {k: v for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool)}
    if "total_tokens" in numbers:
        return max(numbers["total_tokens"], 0)
    return max(numbers.get("prompt_tokens", 0) + numbers.get("completion_tokens", 0), 0)


def _retrying_database(query: Callable[[], Any], *, deadline: float | None) -> Any:
    """Run `query`, retrying while the database is unreachable (a restart, a failover).

    A finished step's record is worth waiting for: giving up would fail the run and make
    the next attempt repeat the step. Gives up after DATABASE_RETRY_SECONDS or at the
    run's deadline, re-raising the last error.
    """
    give_up = time.monotonic() + DATABASE_RETRY_SECONDS
    if deadline is not None:
        give_up = min(give_up, deadline)
    delay = 0.2
    while True:
        try:
            return query()
        except (OperationalError, InterfaceError):
            if time.monotonic() + delay >= give_up:
                raise
            logger.warning("database unavailable; retrying in %.1fs", delay)
            # The broken connection is dropped; the next query opens a new one.
            connection.close()
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _retry_policy(step: dict[str, Any]) -> tuple[int, float, bool]:
    """(attempts, base backoff seconds, exponential?) from `retry` or the original's max_retries."""
    retry = step.get("retry") if isinstance(step.get("retry"), dict) else {}
    attempts = retry.get("attempts") or int(step.get("max_retries") or 0) + 1
    return attempts, float(retry.get("backoff_seconds", 1.0)), retry.get("backoff") != "fixed"


@functools.cache
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError, OSError):
        return ZoneInfo("UTC")


def _iso(instant: datetime | None, zone: ZoneInfo) -> str | None:
    return instant.astimezone(zone).isoformat() if instant else None


def _jsonable(value: Any) -> Any:
    """`value` as plain JSON data (what the database stores); odd types become strings."""
    if _is_plain(value):
        return value  # already what the round trip below would return
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return str(value)


# How many values `_is_plain` looks at before it leaves a big output to the JSON round trip.
_PLAIN_CHECK_BUDGET = 512


def _is_plain(value: Any) -> bool:
    """True when `value` is made only of dicts with str keys, lists, str, int, float, bool
    and None: JSON's own types, which a JSON round trip returns equal. Exact types only (a
    str subclass, a tuple, an int key all change in the round trip)."""
    stack, budget = [value], _PLAIN_CHECK_BUDGET
    while stack:
        budget -= 1
        if budget < 0:
            return False
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            for key, inner in item.items():
                if type(key) is not str:
                    return False
                stack.append(inner)
        elif kind is list:
            stack.extend(item)
        elif not (kind is str or kind is int or kind is float or kind is bool or item is None):
            return False
    return True


@functools.cache
def _step_duration(uses: str) -> Any:
    """The step-duration histogram's child for one tool (labels() locks and looks up)."""
    return metrics.STEP_DURATION.labels(uses)
