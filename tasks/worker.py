"""The worker: lease occurrences, run their pipelines in threads, record every attempt.

One main thread talks to the queue (claim, heartbeat, finish, reclaim) in batches; a pool
of `concurrency` threads runs pipelines that wait on the outside world (HTTP, LLMs, MCP).
Pipelines made only of pure built-in tools (no I/O, no sleep: see `inline_safe`) run on the
main thread itself, between claims, in slices of INLINE_SLICE_SECONDS: handing a 100 µs
pipeline to a thread and its result back costs more than running it, and eight threads
contending for the GIL and the results queue cost more still. Idle, the worker sleeps on
LISTEN (the insert trigger and the services NOTIFY), so due work starts within
milliseconds; the poll interval is only the fallback and the timer for future run_at values.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import logging
import os
import queue
import socket
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
from django.conf import settings
from django.db import DatabaseError, DataError, IntegrityError, close_old_connections, connection
from django.utils import timezone

from agents.models import Agent
from ordinaut import metrics
from ordinaut.correlation import reset_correlation_id, set_correlation_id
from ordinaut.database import Listener, ModelColumns
from ordinaut.errors import InvalidInput
from pipelines.executor import ExecutionResult, RunView, execute, inline_safe
from pipelines.validation import validate_structure
from tasks import queue as occurrence_queue
from tasks.approvals import park_request
from tasks.channels import WORKER_CHANNEL
from tasks.models import Event, RunStatus, Task, WorkerHeartbeat, run_status_for

logger = logging.getLogger("ordinaut.worker")
run_logger = logging.getLogger("ordinaut.runs")

# What a bad outcome (not a database that is down) raises while its batch is recorded.
# The queue runs on psycopg cursors, so psycopg's own classes come with Django's.
_UNRECORDABLE = (
    DataError, IntegrityError, psycopg.DataError, psycopg.IntegrityError,
    ValueError, TypeError, OverflowError,
)  # fmt: skip

# Heartbeats (lease extension) run every lease / HEARTBEATS_PER_LEASE seconds.
HEARTBEATS_PER_LEASE = 3
# Expired leases are reclaimed at most this often (seconds), or every half lease if shorter.
RECLAIM_INTERVAL_SECONDS = 5.0
# Hold enough claimed work to keep every thread busy for this many seconds...
PREFETCH_HORIZON_SECONDS = 0.25
# ...but at most this many occurrences, and at least PREFETCH_PER_THREAD per thread.
PREFETCH_MAX = 1000
PREFETCH_PER_THREAD = 2
# A cached Task is re-read after this many seconds (edits apply to the next claim).
TASK_CACHE_SECONDS = 5.0
TASK_CACHE_MAX_ENTRIES = 10_000
# How long the loop blocks for the first result, then for more to join its commit.
RESULT_WAIT_SECONDS = 0.05
RESULT_BATCH_WINDOW_SECONDS = 0.01
# The main thread runs inline pipelines for at most this long before it records what
# finished and looks at the queue again (heartbeats, claims, pool results).
INLINE_SLICE_SECONDS = 0.1
# A run past its deadline gets this long to notice before the worker ends it itself.
TIMEOUT_GRACE_SECONDS = 5.0
# After a database error the loop waits this long, doubling up to the maximum.
DB_RETRY_FIRST_SECONDS = 0.5
DB_RETRY_MAX_SECONDS = 10.0
# Sleeps are cut in slices this long so a stop request is honoured quickly.
STOP_CHECK_SECONDS = 0.5


class _InlineFuture:
    """What `_InFlight` asks of a pool Future, for a run the main thread executes itself
    (a real Future builds a Condition per run, a few percent of a short run's cost)."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = "pending"

    def cancel(self) -> bool:
        if self.state == "pending":
            self.state = "canceled"
        return self.state == "canceled"

    def set_running_or_notify_cancel(self) -> bool:
        if self.state == "canceled":
            return False
        self.state = "running"
        return True

    def set_result(self, _result: None) -> None:
        self.state = "done"

    def running(self) -> bool:
        return self.state == "running"

    def done(self) -> bool:
        return self.state in ("done", "canceled")


@dataclass
class _InFlight:
    claimed: occurrence_queue.ClaimedOccurrence
    task: Task
    # The pool's future, or the main thread's own for an inline run (same meaning).
    future: Future | _InlineFuture
    deadline: float | None  # monotonic; None: no run timeout


def event_context(event_id: Any) -> dict[str, Any] | None:
    """The triggering event as the pipeline sees it (`${event.topic}`, `${event.payload.x}`)."""
    if event_id is None:
        return None
    event = Event.objects.filter(pk=event_id).first()
    if event is None:
        return None
    return {
        "id": str(event.id),
        "topic": event.topic,
        "payload": event.payload,
        "source_agent_id": str(event.source_agent_id) if event.source_agent_id else None,
        "published_at": event.published_at.isoformat(),
    }


def _structure_sound(payload: Any) -> bool:
    """True when the payload passes `validate_structure` (checked once per cached task)."""
    try:
        validate_structure(payload)
    except InvalidInput:
        return False
    return True


_TASK = ModelColumns(Task)
_AGENT = ModelColumns(Agent)


@functools.cache
def _task_sql() -> str:
    # Task.objects.select_related("created_by").get(pk=...) as a constant statement: the
    # ORM would compile it at every refresh, a millisecond on the path of a pickup.
    return (
        f"SELECT {_TASK.sql('t')}, {_AGENT.sql('a')} FROM tasks_task t"  # noqa: S608 (constants)
        " JOIN agents_agent a ON a.id = t.created_by_id WHERE t.id = %s"
    )


def _load_task(task_id: Any) -> Task:
    """The task with its agent (created_by) loaded; Task.DoesNotExist if it is gone."""
    with connection.cursor() as cursor:
        cursor.execute(_task_sql(), [task_id])
        row = cursor.fetchone()
    if row is None:
        raise Task.DoesNotExist(f"task {task_id} does not exist")
    split = len(_TASK.fields)
    task = _TASK.instance(row[:split])
    task.created_by = _AGENT.instance(row[split:])
    return task


# The worker's row in tasks_workerheartbeat, written or refreshed in one statement (the
# ORM's update_or_create takes a transaction, a locking read and an update: four round
# trips, a few milliseconds an idle worker would add to the pickup it is woken for).
BEAT = """
INSERT INTO tasks_workerheartbeat
    (id, host, pid, started_at, last_seen, concurrency, running, processed, stopping)
VALUES (%(id)s, %(host)s, %(pid)s, %(started_at)s, %(last_seen)s, %(concurrency)s,
        %(running)s, %(processed)s, false)
ON CONFLICT (id) DO UPDATE SET
    host = EXCLUDED.host, pid = EXCLUDED.pid, started_at = EXCLUDED.started_at,
    last_seen = EXCLUDED.last_seen, concurrency = EXCLUDED.concurrency,
    running = EXCLUDED.running, processed = EXCLUDED.processed
"""


class Worker:
    """Safe to run any number of copies, on any number of machines."""

    def __init__(
        self,
        *,
        concurrency: int = 4,
        burst: bool = False,
        concurrency_keys: list[str] | None = None,
        lease_seconds: float | None = None,
        poll_interval: float | None = None,
        shutdown_grace: float = 30.0,
        name: str | None = None,
    ) -> None:
        self.concurrency = concurrency
        self.burst = burst
        self.concurrency_keys = concurrency_keys
        self.lease_seconds = lease_seconds or settings.WORKER_LEASE_SECONDS
        self.poll_interval = poll_interval or settings.WORKER_POLL_INTERVAL
        self.shutdown_grace = shutdown_grace
        self.name = name or f"worker@{socket.gethostname()}:{os.getpid()}"
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="run")
        self._results: queue.Queue = queue.Queue()
        self._in_flight: dict[int, _InFlight] = {}
        self._unrecorded: list[occurrence_queue.Outcome] = []
        # Moving average of run durations (seconds); starts pessimistic (slow pipelines).
        self._avg_run_seconds = 1.0
        self._tasks: dict[Any, Task] = {}
        # Claimed inline runs not started yet, in claim order (most urgent first).
        self._inline: collections.deque[_InFlight] = collections.deque()
        self._listener = Listener(WORKER_CHANNEL)
        self._started = timezone.now()
        self._processed = 0
        self._last_beat = 0.0
        self._last_reclaim = 0.0

    # -- the loop ---------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Claim, execute, record, until `stop` (or, with burst, until the queue is empty)."""
        backoff = DB_RETRY_FIRST_SECONDS
        while not stop.is_set():
            try:
                self._listener.connect()
                worked = self.run_once()
                backoff = DB_RETRY_FIRST_SECONDS
                if self.burst and not worked and not self._in_flight:
                    break
                if not worked:
                    self._wait_for_work(stop)
            except (DatabaseError, psycopg.Error) as exc:
                logger.warning("database unavailable, retrying in %.1fs: %s", backoff, exc)
                self._reset_connections()
                stop.wait(backoff)
                backoff = min(backoff * 2, DB_RETRY_MAX_SECONDS)
        self._shutdown()

    def run_once(self) -> bool:
        """One pass: claim what fits, record what finished, housekeeping. True if it did work."""
        if not self._last_beat:
            # Announce this worker before its first claim: every lease owner has a row.
            self._heartbeat()
        room = self._prefetch() - len(self._in_flight)
        # Claim in batches: topping up one slot at a time would cost a commit per run.
        claimed, ran = [], 0
        if room > 0 and (not self._in_flight or room >= self._prefetch() // 2):
            claimed = self._claim(occurrence_queue.claim_unkeyed, room)
            # Keyed work costs a statement per occurrence: what one statement claimed starts
            # first, so its pickup does not wait on them.
            ran = self._run_inline()
            claimed += self._claim(occurrence_queue.claim_keyed, room - len(claimed))
        ran += self._run_inline()
        block = bool(self._in_flight) and not claimed and not ran and not self._inline
        finished = self._collect(block=block)
        # Housekeeping last: the work a NOTIFY woke us for starts without waiting on it.
        reclaimed = self._housekeeping()
        return bool(claimed or ran or finished or reclaimed)

    def _housekeeping(self) -> int:
        """Heartbeat (extending our leases) and reclaim expired leases, each when due;
        return how many occurrences were reclaimed (work for the next pass)."""
        self._beat_if_due()
        now = time.monotonic()
        if now - self._last_reclaim <= min(RECLAIM_INTERVAL_SECONDS, self.lease_seconds / 2):
            return 0
        self._last_reclaim = now
        reclaimed = occurrence_queue.reclaim_expired()
        for occurrence_id, state in reclaimed:
            logger.warning("reclaimed occurrence %s -> %s", occurrence_id, state)
        return len(reclaimed)

    def _prefetch(self) -> int:
        """How many occurrences to hold: enough to keep every thread busy for ~0.25 s.

        Slow pipelines get two per thread (a long run must not sit on work another worker
        could start); fast ones get big batches, because each batch costs two commits.
        """
        wanted = int(self.concurrency * PREFETCH_HORIZON_SECONDS / max(self._avg_run_seconds, 1e-4))
        return max(PREFETCH_PER_THREAD * self.concurrency, min(wanted, PREFETCH_MAX))

    # -- executing --------------------------------------------------------------------------

    def _claim(
        self, claim: Callable[..., list[occurrence_queue.ClaimedOccurrence]], limit: int
    ) -> list[occurrence_queue.ClaimedOccurrence]:
        """Claim with `claim` (one of the queue's two) and start what it leased."""
        claimed = claim(
            self.name, limit, lease_seconds=self.lease_seconds,
            concurrency_keys=self.concurrency_keys,
        )  # fmt: skip
        for item in claimed:
            self._start(item)
        return claimed

    def _start(self, claimed: occurrence_queue.ClaimedOccurrence) -> None:
        task = self._task(claimed.task_id)
        deadline = time.monotonic() + task.timeout_seconds if task.timeout_seconds else None
        if task._inline:
            item = _InFlight(claimed, task, _InlineFuture(), deadline)
            self._inline.append(item)
        else:
            future = self._pool.submit(self._execute, claimed, task, deadline)
            item = _InFlight(claimed, task, future, deadline)
        self._in_flight[claimed.occurrence_id] = item

    def _run_inline(self) -> int:
        """Run queued inline pipelines on this thread for up to INLINE_SLICE_SECONDS; their
        outcomes join the next batch to record. Returns how many ran."""
        ran, until = 0, time.monotonic() + INLINE_SLICE_SECONDS
        while self._inline and (ran == 0 or time.monotonic() < until):
            item = self._inline.popleft()
            if item.claimed.occurrence_id not in self._in_flight:
                continue  # timed out waiting, or its lease was lost: no longer ours to run
            if not item.future.set_running_or_notify_cancel():
                continue  # released by a shutdown before it started
            self._unrecorded.append(self._run(item.claimed, item.task, item.deadline))
            item.future.set_result(None)
            ran += 1
        return ran

    def _task(self, task_id: Any) -> Task:
        # Tasks change rarely and runs are many: cache them briefly (edits apply next claim).
        task = self._tasks.get(task_id)
        if task is None or time.monotonic() - task._cached_at > TASK_CACHE_SECONDS:
            task = _load_task(task_id)
            task._cached_at = time.monotonic()
            task._inline = inline_safe(task.payload)
            task._structure_checked = _structure_sound(task.payload)
            if len(self._tasks) > TASK_CACHE_MAX_ENTRIES:
                self._tasks.clear()
            self._tasks[task_id] = task
        return task

    def _execute(
        self, claimed: occurrence_queue.ClaimedOccurrence, task: Task, deadline: float | None
    ) -> None:
        """Runs in a pool thread: the outcome goes back to the main thread's queue."""
        try:
            outcome = self._run(claimed, task, deadline)
        finally:
            # A pool thread's connection outlives its runs; drop it if it broke or aged.
            close_old_connections()
        self._results.put(outcome)

    def _run(
        self, claimed: occurrence_queue.ClaimedOccurrence, task: Task, deadline: float | None
    ) -> occurrence_queue.Outcome:
        """Execute one attempt's pipeline. Never raises: every failure becomes an outcome."""
        token = set_correlation_id(claimed.correlation_id)
        started = time.perf_counter()
        began = timezone.now()
        try:
            run = RunView(
                id=claimed.run_id,
                task=task,
                occurrence_id=claimed.occurrence_id,
                scheduled_for=claimed.scheduled_for,
                attempt=claimed.attempt,
                trigger=claimed.trigger,
                correlation_id=claimed.correlation_id,
            )
            event = event_context(claimed.event_id)
            result = execute(
                run, event=event, deadline=deadline, structure_checked=task._structure_checked
            )
            outcome = self._finished(claimed, task, result)
        except Exception as exc:  # the executor promises not to raise; this is the backstop
            error = f"executor crashed: {type(exc).__name__}: {exc}"
            logger.error("%s\n%s", error, traceback.format_exc())
            outcome = self._outcome(claimed, task, RunStatus.FAILED, None, error)
        finally:
            reset_correlation_id(token)
        outcome.duration_ms = (time.perf_counter() - started) * 1000
        outcome.pipeline_started_at = began
        return outcome

    @classmethod
    def _finished(
        cls, claimed: occurrence_queue.ClaimedOccurrence, task: Task, result: ExecutionResult
    ) -> occurrence_queue.Outcome:
        """The queue's outcome for a pipeline that returned `result`."""
        outcome = cls._outcome(
            claimed, task, run_status_for(result.status), result.output, result.error,
            retryable=result.retryable,
        )  # fmt: skip
        outcome.steps = result.steps
        if outcome.status == RunStatus.CANCELED:
            # Stopped by the agent's pause: the occurrence waits (unclaimable) for the
            # resume, and this attempt does not use up a retry.
            outcome.counts_as_attempt = False
        if result.approval is not None:
            # Parked for a human decision: finish parks the occurrence and creates the
            # Approval; the decision requeues it. Not a failure, and not a retry.
            outcome.park = park_request(result.approval)
            outcome.retryable = False
        return outcome

    @staticmethod
    def _outcome(
        claimed: occurrence_queue.ClaimedOccurrence,
        task: Task,
        status: str,
        output: Any,
        error: str | None,
        *,
        retryable: bool = True,
    ) -> occurrence_queue.Outcome:
        return occurrence_queue.Outcome(
            claimed=claimed, status=status, output=output, error=error, retryable=retryable,
            max_retries=task.max_retries, backoff_strategy=task.backoff_strategy,
        )  # fmt: skip

    # -- recording --------------------------------------------------------------------------

    def _collect(self, *, block: bool) -> int:
        """Record finished attempts (and timed-out ones) in one batch; return how many.

        Outcomes leave memory only once their batch committed: if the database is down,
        they are kept and recorded on a later pass (leases are extended meanwhile).
        """
        outcomes = self._unrecorded
        try:
            if block and not outcomes:
                outcomes.append(self._results.get(timeout=RESULT_WAIT_SECONDS))
                # More results are usually a moment away: one commit for all of them.
                window = time.monotonic() + min(RESULT_BATCH_WINDOW_SECONDS, self._avg_run_seconds)
                while len(outcomes) < len(self._in_flight) and time.monotonic() < window:
                    outcomes.append(self._results.get(timeout=max(0.0, window - time.monotonic())))
            while True:
                outcomes.append(self._results.get_nowait())
        except queue.Empty:
            pass
        outcomes += self._timed_out()
        # Drop results for work no longer ours (timed out earlier, or lease taken over), and
        # a thread's result that raced its own timeout verdict (first verdict wins).
        unique: dict[int, occurrence_queue.Outcome] = {}
        for outcome in outcomes:
            if outcome.claimed.occurrence_id in self._in_flight:
                unique.setdefault(outcome.claimed.occurrence_id, outcome)
        outcomes = list(unique.values())
        self._unrecorded = outcomes
        if not outcomes:
            return 0
        counts = self._finish(outcomes)
        metrics.run_finished((o.status, o.duration_ms / 1000) for o in outcomes)
        self._unrecorded = []
        for outcome in outcomes:
            self._in_flight.pop(outcome.claimed.occurrence_id, None)
            self._avg_run_seconds += 0.05 * (outcome.duration_ms / 1000 - self._avg_run_seconds)
            self._log_run(outcome)
        self._processed += len(outcomes)
        logger.debug("recorded %s", counts)
        return len(outcomes)

    def _finish(self, outcomes: list[occurrence_queue.Outcome]) -> dict[str, int]:
        """Record a batch; one outcome that cannot be recorded must not hold up the rest.

        A database that is down raises on as before (the batch is kept and retried). An
        outcome the database refuses, or that cannot even be encoded (a value PostgreSQL
        cannot store, a number out of range), is found by recording the batch one by one and
        becomes a failed attempt carrying the error: retried, then dead-lettered as usual.
        """
        try:
            return occurrence_queue.finish(self.name, outcomes)
        except _UNRECORDABLE as exc:
            if len(outcomes) > 1:
                counts: collections.Counter[str] = collections.Counter()
                for outcome in outcomes:
                    counts.update(self._finish([outcome]))
                return dict(counts)
            (outcome,) = outcomes
            logger.exception(
                "run %s: its outcome could not be recorded; recording it as failed",
                outcome.claimed.run_id,
            )
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            failed = dataclasses.replace(
                outcome,
                status=RunStatus.FAILED,
                output=None,
                error=f"the attempt's outcome could not be recorded: {reason}"[:2000],
                steps=None,
                park=None,
                retryable=True,
            )
            return occurrence_queue.finish(self.name, [failed])

    def _timed_out(self) -> list[occurrence_queue.Outcome]:
        """Runs past their deadline (plus a grace for the executor to notice) end now.

        The thread may still be stuck in a tool that ignores timeouts; its late result is
        discarded because the occurrence is no longer in flight.
        """
        now = time.monotonic()
        late = []
        pending = {o.claimed.occurrence_id for o in self._unrecorded}
        for item in list(self._in_flight.values()):
            overdue = item.deadline is not None and now > item.deadline + TIMEOUT_GRACE_SECONDS
            if overdue and not item.future.done() and item.claimed.occurrence_id not in pending:
                late.append(
                    self._outcome(
                        item.claimed,
                        item.task,
                        RunStatus.TIMED_OUT,
                        None,
                        f"run exceeded its timeout of {item.task.timeout_seconds}s",
                    )
                )
        return late

    def _log_run(self, outcome: occurrence_queue.Outcome) -> None:
        if not run_logger.isEnabledFor(logging.INFO):
            return  # run logging off (LOG_LEVEL=WARNING): skip building the record's fields
        claimed = outcome.claimed
        run_logger.info(
            "run %s %s", claimed.run_id, outcome.status,
            extra={
                "correlation_id": claimed.correlation_id,
                "run_id": str(claimed.run_id),
                "task_id": str(claimed.task_id),
                "occurrence_id": claimed.occurrence_id,
                "attempt": claimed.attempt,
                "outcome": outcome.status,
                "duration_ms": round(outcome.duration_ms, 2),
                "error": outcome.error,
            },
        )  # fmt: skip

    # -- waiting, heartbeats, shutdown --------------------------------------------------------

    def _wait_for_work(self, stop: threading.Event) -> None:
        """Sleep until NOTIFY, the next queued run_at, or the poll interval.

        NOTIFY covers work inserted due; the run_at timer covers work queued ahead of time
        (the scheduler's look-ahead, retry backoffs), so it starts on time, not on a poll.
        """
        if self._in_flight:
            return  # _collect already blocked briefly on results
        wait = self.poll_interval
        due_in = occurrence_queue.seconds_until_next_due()
        if due_in is not None and due_in > 0:
            # Due rows that could not be claimed (a busy concurrency key, locked by another
            # worker) give due_in <= 0: those wait for a NOTIFY or the poll instead.
            wait = min(wait, due_in + 0.001)
        deadline = time.monotonic() + wait
        # Wake in short slices so a stop request is honoured quickly.
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self._listener.wait(min(left, STOP_CHECK_SECONDS)):
                return

    def _beat_if_due(self) -> None:
        if time.monotonic() - self._last_beat > self.lease_seconds / HEARTBEATS_PER_LEASE:
            self._heartbeat()

    def _heartbeat(self) -> None:
        self._last_beat = time.monotonic()
        held = occurrence_queue.heartbeat(
            self.name, list(self._in_flight), lease_seconds=self.lease_seconds
        )
        for occurrence_id in set(self._in_flight) - held:
            # Our lease was taken over (we were too slow): another attempt owns the work.
            logger.warning("lost the lease of occurrence %s", occurrence_id)
            self._in_flight.pop(occurrence_id, None)
        beat = {
            "id": self.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": self._started,
            "last_seen": timezone.now(),
            "concurrency": self.concurrency,
            # Pipelines executing now, not prefetched work waiting for a thread.
            "running": sum(item.future.running() for item in self._in_flight.values()),
            "processed": self._processed,
        }
        with connection.cursor() as cursor:
            cursor.execute(BEAT, beat)

    def _shutdown(self) -> None:
        """Stop claiming; release what never started; let running pipelines finish within
        the grace period; requeue what is still running after it (as a canceled attempt)."""
        with contextlib.suppress(DatabaseError, psycopg.Error):
            # Operators (and /health) see a draining worker as stopping, not as stale.
            WorkerHeartbeat.objects.filter(id=self.name).update(stopping=True)
        unstarted = [oid for oid, item in self._in_flight.items() if item.future.cancel()]
        for oid in unstarted:
            del self._in_flight[oid]
        self._inline.clear()
        with contextlib.suppress(DatabaseError, psycopg.Error):
            occurrence_queue.release(self.name, unstarted)
        deadline = time.monotonic() + self.shutdown_grace
        while self._in_flight and time.monotonic() < deadline:
            try:
                self._collect(block=True)
                self._beat_if_due()
            except (DatabaseError, psycopg.Error) as exc:
                logger.warning("cannot record results during shutdown: %s", exc)
                time.sleep(DB_RETRY_FIRST_SECONDS)
                self._reset_connections()
        if self._in_flight:
            stuck = [
                self._outcome(item.claimed, item.task, RunStatus.CANCELED, None,
                              f"worker shut down after a {self.shutdown_grace:g}s grace period")
                for item in self._in_flight.values()
            ]  # fmt: skip
            logger.warning("%d run(s) still running after the grace period; requeued", len(stuck))
            with contextlib.suppress(DatabaseError, psycopg.Error):
                occurrence_queue.finish(self.name, stuck)
            self._in_flight.clear()
        with contextlib.suppress(DatabaseError, psycopg.Error):
            WorkerHeartbeat.objects.filter(id=self.name).delete()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._listener.close()

    def threads_still_running(self) -> bool:
        """True when a pipeline thread is stuck past shutdown (the caller may hard-exit)."""
        return any(t.name.startswith("run") and t.is_alive() for t in threading.enumerate())

    def _reset_connections(self) -> None:
        self._listener.close()
        with contextlib.suppress(DatabaseError):
            connection.close()
