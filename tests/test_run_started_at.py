"""A run's started_at is when its pipeline began, not when its occurrence was claimed: a
worker holds prefetched work that waits for a free thread."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.utils import timezone

from tasks.models import Run
from tasks.worker import PREFETCH_PER_THREAD, Worker
from tests.conftest import pipeline_threads_gone
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
