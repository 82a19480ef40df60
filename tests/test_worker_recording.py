"""A batch of finished attempts is recorded even when one of its outcomes cannot be."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tasks import queue
from tasks.models import Occurrence, OccurrenceState, Run
from tasks.worker import Worker
from tests.factories import make_agent, make_occurrence, make_task

pytestmark = pytest.mark.django_db


def test_an_outcome_the_database_refuses_fails_alone_and_the_rest_commits(caplog):
    task = make_task(make_agent()[0], max_retries=2)
    for seconds_ago in (2, 1):
        make_occurrence(task, at=timezone.now() - timedelta(seconds=seconds_ago))
    worker = Worker(concurrency=2, name="w-record")
    good, bad = queue.claim(worker.name, 2)
    fields = {"max_retries": 2, "backoff_strategy": "fixed"}
    outcomes = [
        queue.Outcome(claimed=good, status="succeeded", output={"ok": True}, **fields),
        # PostgreSQL's jsonb cannot hold U+0000: a tool answered with it, say.
        queue.Outcome(claimed=bad, status="succeeded", output={"text": "a\x00b"}, **fields),
    ]

    counts = worker._finish(outcomes)

    assert counts == {"done": 1, "retry": 1, "dead": 0}
    assert Run.objects.get(pk=good.run_id).status == "succeeded"
    assert not Occurrence.objects.filter(pk=good.occurrence_id).exists()
    refused = Run.objects.get(pk=bad.run_id)
    assert refused.status == "failed"
    assert refused.output is None
    assert refused.error.startswith("the attempt's outcome could not be recorded: ")
    assert Occurrence.objects.get(pk=bad.occurrence_id).state == OccurrenceState.QUEUED
    assert "could not be recorded" in caplog.text


@pytest.mark.parametrize("expires", [10.0**13, float("inf")])
def test_a_park_with_an_expiry_out_of_range_fails_the_attempt_instead_of_the_batch(expires):
    # What `approval.request {"expires_in_seconds": 1e400}` (or 10**13) produced before its
    # schema had a maximum: PostgreSQL cannot compute the expiry, and the batch was retried
    # forever (or the worker died).
    task = make_task(make_agent()[0], max_retries=2)
    make_occurrence(task, at=timezone.now() - timedelta(seconds=1))
    worker = Worker(concurrency=1, name="w-park")
    (claimed,) = queue.claim(worker.name, 1)
    park = queue.Park(step_id="ask", prompt="ok?", context={}, approvers=[],
                      expires_in_seconds=expires)  # fmt: skip
    parked = queue.Outcome(claimed=claimed, status="waiting_approval", park=park, max_retries=2,
                           backoff_strategy="fixed")  # fmt: skip

    counts = worker._finish([parked])

    assert counts == {"done": 0, "retry": 1, "dead": 0}
    run = Run.objects.get(pk=claimed.run_id)
    assert run.status == "failed"
    assert run.error.startswith("the attempt's outcome could not be recorded: ")
    assert Occurrence.objects.get(pk=claimed.occurrence_id).state == OccurrenceState.QUEUED
