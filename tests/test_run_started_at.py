"""A run's started_at is when its pipeline began, not when its occurrence was claimed: a
worker holds prefetched work that waits for a free thread."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.utils import timezone

from tasks.models import Run
from tasks.worker import PREFETCH_PER_THREAD, Worker
from tests.conftest import pipeline_threads_gone, wait_for
from tests.factories import make_agent, make_occurrence, make_task

pytestmark = pytest.mark.django_db(transaction=True)

SLEEP = {"pipeline": [{"id": "nap", "uses": "debug.sleep", "with": {"seconds": 0.6}}]}


def test_prefetched_work_starts_when_a_thread_takes_it():
    assert PREFETCH_PER_THREAD >= 2  # one thread, two claimed at once: the second waits
    agent, _ = make_agent()
    task = make_task(agent, payload=SLEEP)
    for _ in range(2):
        make_occurrence(task, at=timezone.now() - timedelta(seconds=1))
    Worker(concurrency=1, burst=True, poll_interval=0.1).run(threading.Event())
    pipeline_threads_gone()
    first, second = Run.objects.filter(task=task).order_by("started_at")
    assert first.status == second.status == "succeeded"
    # The second pipeline could only start once the first had finished.
    assert second.started_at >= first.finished_at - timedelta(milliseconds=50)


def test_the_heartbeat_counts_running_pipelines_not_prefetched_work():
    from tasks.models import WorkerHeartbeat

    agent, _ = make_agent()
    slow = {"pipeline": [{"id": "nap", "uses": "debug.sleep", "with": {"seconds": 3}}]}
    task = make_task(agent, payload=slow)
    for _ in range(2):
        make_occurrence(task, at=timezone.now() - timedelta(seconds=1))
    stop = threading.Event()
    # A short lease: heartbeats every 0.5 s, so one is written while the first pipeline runs.
    worker = Worker(concurrency=1, lease_seconds=1.5, poll_interval=0.1)
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: len(worker._in_flight) == 2, 20, "two occurrences were not held")
        # One pipeline runs, the other waits for the thread: the heartbeats say 1, never 2.
        seen: set[int] = set()

        def one_running_seen() -> bool:
            row = WorkerHeartbeat.objects.filter(id=worker.name).first()
            if row is not None and len(worker._in_flight) == 2:
                seen.add(row.running)
            return 1 in seen

        wait_for(one_running_seen, 20, "no heartbeat counted the running pipeline")
        assert seen <= {0, 1}
    finally:
        stop.set()
        thread.join(timeout=30)
        pipeline_threads_gone()
