"""Pipelines of pure built-in tools run on the worker's own thread; the rest in its pool.

Both kinds are leased, recorded, released on shutdown and dropped when no longer ours in
the same way; only where the pipeline executes differs.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import timedelta

import pytest
from django.utils import timezone
from hypothesis import given
from hypothesis import strategies as st

from pipelines.executor import _jsonable, inline_safe
from pipelines.tools.base import ANY_OBJECT, schema_errors
from tasks import queue
from tasks.models import Occurrence, OccurrenceState, Run
from tasks.worker import Worker
from tests.conftest import pipeline_threads_gone
from tests.factories import make_agent, make_occurrence, make_task

ECHO = {"id": "echo", "uses": "debug.echo", "with": {"x": 1}}


def pipeline(*steps: dict) -> dict:
    return {"pipeline": list(steps)}


@pytest.mark.parametrize(
    ("payload", "inline"),
    [
        (pipeline(ECHO), True),
        (
            pipeline(
                ECHO,
                {"id": "shape", "uses": "transform.jmespath", "with": {"expression": "a"}},
                {"id": "log", "uses": "debug.log", "with": {"message": "hi"}},
                {"id": "ask", "uses": "approval.request", "with": {"prompt": "ok?"}},
            ),
            True,
        ),
        # Anything that waits (a sleep, the network, a retry's backoff) goes to the pool.
        (pipeline(ECHO, {"id": "nap", "uses": "debug.sleep", "with": {"seconds": 0}}), False),
        (pipeline({"id": "get", "uses": "http.request", "with": {"url": "http://x"}}), False),
        (pipeline({**ECHO, "retry": {"attempts": 3}}), False),
        (pipeline({**ECHO, "max_retries": 2}), False),
        # Registered by the tasks app (it writes through the services): not a pure tool.
        (pipeline({"id": "t", "uses": "task.create", "with": {}}), False),
        (pipeline({"id": "m", "uses": "mcp:files:read", "with": {}}), False),
        # Not a pipeline at all: the pool path reports the error as it always did.
        ({"pipeline": []}, False),
        ({"pipeline": "echo"}, False),
        ({"pipeline": [{"id": "no-uses"}]}, False),
        ([], False),
    ],
)
def test_a_pipeline_runs_inline_only_when_every_step_is_a_pure_single_call(payload, inline):
    assert inline_safe(payload) is inline


@pytest.mark.django_db(transaction=True)
def test_pure_pipelines_run_on_the_worker_thread_and_the_others_in_its_pool(caplog):
    agent, _ = make_agent()
    pure = make_task(agent, payload=pipeline({"id": "log", "uses": "debug.log",
                                              "with": {"message": "pure"}}))  # fmt: skip
    waits = make_task(agent, payload=pipeline(
        {"id": "log", "uses": "debug.log", "with": {"message": "pooled"}},
        {"id": "nap", "uses": "debug.sleep", "with": {"seconds": 0}},
    ))  # fmt: skip
    for task in (pure, waits, pure, waits):
        make_occurrence(task, at=timezone.now() - timedelta(seconds=1))

    with caplog.at_level(logging.INFO):
        Worker(concurrency=2, burst=True, poll_interval=0.1).run(threading.Event())
    pipeline_threads_gone()

    threads = {"pure": set(), "pooled": set()}
    for record in caplog.records:
        if record.name == "pipelines.debug":
            threads[record.getMessage().removeprefix("step log: ")].add(record.threadName)
    assert threads["pure"] == {threading.current_thread().name}
    assert threads["pooled"]
    assert all(name.startswith("run") for name in threads["pooled"])
    runs = Run.objects.filter(task__in=[pure, waits])
    assert sorted(runs.values_list("status", flat=True)) == ["succeeded"] * 4
    assert not Occurrence.objects.filter(task__in=[pure, waits]).exists()
    for run in runs:
        assert run.started_at <= run.finished_at
        assert run.steps[-1]["status"] == "succeeded"


@pytest.mark.django_db(transaction=True)
def test_a_large_inline_batch_is_recorded_in_full_with_each_runs_own_output():
    agent, _ = make_agent()
    task = make_task(agent, payload=pipeline(
        {"id": "echo", "uses": "debug.echo", "with": {"n": "${run.occurrence_id}"}}
    ))  # fmt: skip
    now = timezone.now()
    made = [make_occurrence(task, at=now - timedelta(milliseconds=n)).pk for n in range(1, 301)]

    Worker(concurrency=1, burst=True, poll_interval=0.1).run(threading.Event())

    runs = Run.objects.filter(task=task)
    assert runs.count() == 300
    assert {run.status for run in runs} == {"succeeded"}
    # Each run echoed its own occurrence: no outcome was paired with another run's.
    assert sorted(int(run.output["steps"]["echo"]["n"]) for run in runs) == sorted(made)
    assert sorted(run.occurrence_id for run in runs) == sorted(made)


@pytest.mark.django_db(transaction=True)
def test_shutdown_gives_back_inline_runs_that_never_started():
    task = make_task(make_agent()[0])
    for seconds in (3, 2, 1):
        make_occurrence(task, at=timezone.now() - timedelta(seconds=seconds))
    worker = Worker(concurrency=1, name="w-inline-release", shutdown_grace=1)
    for claimed in queue.claim(worker.name, 3):
        worker._start(claimed)
    assert len(worker._inline) == 3

    worker._shutdown()

    rows = Occurrence.objects.filter(task=task)
    assert [(o.state, o.attempt, o.lease_owner) for o in rows] == [
        (OccurrenceState.QUEUED, 0, None)
    ] * 3
    assert not Run.objects.filter(task=task).exists()


@pytest.mark.django_db(transaction=True)
def test_an_inline_run_no_longer_ours_is_not_executed():
    task = make_task(make_agent()[0])
    make_occurrence(task, at=timezone.now() - timedelta(seconds=1))
    worker = Worker(concurrency=1, name="w-inline-lost")
    (claimed,) = queue.claim(worker.name, 1)
    worker._start(claimed)
    # What a heartbeat does when another worker took the lease over.
    worker._in_flight.pop(claimed.occurrence_id)

    assert worker._run_inline() == 0
    assert worker._unrecorded == []
    assert Run.objects.get(pk=claimed.run_id).steps == []
    worker._shutdown()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=5) | st.integers(), inner, max_size=4)
    ),
    max_leaves=40,
)


@given(json_values)
def test_a_step_output_is_stored_as_the_json_round_trip_would_store_it(value):
    assert _jsonable(value) == json.loads(json.dumps(value, default=str))


def test_an_output_with_odd_types_still_goes_through_the_round_trip():
    class Label(str):
        pass

    value = {"when": timezone.now(), "label": Label("x"), "pair": (1, 2), 3: "three"}
    assert _jsonable(value) == json.loads(json.dumps(value, default=str))
    assert type(_jsonable({"label": Label("x")})["label"]) is str


@pytest.mark.parametrize("value", [[1], "text", 3, None, True])
def test_the_any_object_shortcut_reports_what_the_full_schema_check_reports(value):
    # The same schema as a distinct object with an annotation, so the full validator runs.
    full = schema_errors({"type": "object", "description": "any object"}, value)
    assert schema_errors(ANY_OBJECT, value) == full == [([], "must be of type object")]
    assert schema_errors(ANY_OBJECT, {"a": 1}) == []
