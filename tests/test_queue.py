"""Queue statements against the real database: claim, finish, retry, reclaim, dead letters."""

import threading
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.utils import timezone

from audit.services import Actor
from tasks import queue, services
from tasks.models import Occurrence, Run
from tests.factories import make_agent, make_occurrence, make_task

pytestmark = pytest.mark.django_db


@pytest.fixture
def task():
    return make_task(make_agent()[0], max_retries=2)


def due(task, seconds_ago=1, **fields):
    return make_occurrence(task, at=timezone.now() - timedelta(seconds=seconds_ago), **fields)


def outcome(claimed, status, **fields):
    values = {"max_retries": 2, "backoff_strategy": "fixed"}
    values.update(fields)
    return queue.Outcome(claimed=claimed, status=status, **values)


def test_claim_leases_due_work_and_starts_a_run(task):
    occurrence = due(task)
    [claimed] = queue.claim("w1", 10, lease_seconds=30)
    occurrence.refresh_from_db()
    assert (occurrence.state, occurrence.lease_owner, occurrence.attempt) == ("leased", "w1", 1)
    assert occurrence.leased_until > timezone.now() + timedelta(seconds=25)
    run = Run.objects.get(pk=claimed.run_id)
    assert (run.status, run.attempt, run.occurrence_id, run.lease_owner) == (
        "running", 1, occurrence.id, "w1",
    )  # fmt: skip
    assert run.correlation_id


def test_claim_skips_future_and_already_leased_work(task):
    due(task, seconds_ago=-60)  # due in a minute
    due(task, state="leased", lease_owner="w0", leased_until=timezone.now())
    assert queue.claim("w1", 10) == []


def test_claim_orders_by_priority_then_run_at(task):
    agent = task.created_by
    low, high = make_task(agent, priority=1), make_task(agent, priority=9)
    due(low, seconds_ago=30, priority=1)
    due(task, seconds_ago=20, priority=5)
    due(high, seconds_ago=10, priority=9)
    due(high, seconds_ago=20, priority=9)
    claimed = queue.claim("w1", 10)
    assert [c.priority for c in claimed] == [9, 9, 5, 1]
    assert claimed[0].run_at < claimed[1].run_at


def test_claim_respects_the_limit(task):
    for n in range(5):
        due(task, seconds_ago=n + 1)
    assert len(queue.claim("w1", 3)) == 3
    assert Occurrence.objects.filter(state="queued").count() == 2


@pytest.mark.django_db(transaction=True)
def test_concurrent_claims_never_share_an_occurrence(task):
    for n in range(200):
        due(task, seconds_ago=n + 1)
    results: dict[str, list] = {}
    barrier = threading.Barrier(4)

    def grab(name):
        barrier.wait()
        got = []
        while batch := queue.claim(name, 7):
            got += [c.occurrence_id for c in batch]
        results[name] = got
        connections.close_all()

    threads = [threading.Thread(target=grab, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [oid for got in results.values() for oid in got]
    assert len(everything) == len(set(everything)) == 200


def test_one_leased_occurrence_per_concurrency_key(task):
    agent = task.created_by
    other = make_task(agent)
    due(task, seconds_ago=3, concurrency_key="mailbox")
    due(other, seconds_ago=2, concurrency_key="mailbox")
    due(other, seconds_ago=1, concurrency_key="calendar")
    claimed = queue.claim("w1", 10)
    assert sorted(Occurrence.objects.get(pk=c.occurrence_id).concurrency_key for c in claimed) == [
        "calendar", "mailbox",
    ]  # fmt: skip
    assert queue.claim("w2", 10) == []  # mailbox is busy until its run finishes
    queue.finish("w1", [outcome(c, "succeeded") for c in claimed])
    [second] = queue.claim("w2", 10)
    assert Occurrence.objects.get(pk=second.occurrence_id).concurrency_key == "mailbox"


def test_concurrency_keys_are_per_agent(task):
    """Two agents using the same key never block each other; the same agent's do."""
    other_agent = make_task(make_agent()[0])
    mine = due(task, seconds_ago=3, concurrency_key="email")
    due(make_task(task.created_by), seconds_ago=2, concurrency_key="email")
    theirs = due(other_agent, seconds_ago=1, concurrency_key="email")
    claimed = queue.claim("w1", 10)
    assert sorted(c.occurrence_id for c in claimed) == sorted([mine.id, theirs.id])


def test_concurrency_key_filter_takes_only_those_keys(task):
    due(task, seconds_ago=2)
    due(task, seconds_ago=1, concurrency_key="mailbox")
    [claimed] = queue.claim("w1", 10, concurrency_keys=["mailbox"])
    assert Occurrence.objects.get(pk=claimed.occurrence_id).concurrency_key == "mailbox"


def test_success_records_run_and_removes_occurrence(task):
    due(task)
    [claimed] = queue.claim("w1", 1)
    counts = queue.finish("w1", [outcome(claimed, "succeeded", output={"ok": True})])
    assert counts["done"] == 1
    assert not Occurrence.objects.exists()
    run = Run.objects.get(pk=claimed.run_id)
    assert (run.status, run.output, run.success) == ("succeeded", {"ok": True}, True)
    assert run.finished_at >= run.started_at


def test_failure_requeues_after_backoff_then_dead_letters(task):
    occurrence = due(task)
    for attempt in (1, 2, 3):
        Occurrence.objects.filter(pk=occurrence.pk).update(run_at=timezone.now())
        [claimed] = queue.claim("w1", 1)
        assert claimed.attempt == attempt
        queue.finish("w1", [outcome(claimed, "failed", error=f"boom {attempt}")])
        occurrence.refresh_from_db()
        if attempt < 3:
            assert occurrence.state == "queued"
            assert occurrence.run_at > timezone.now() + timedelta(seconds=0.5)  # fixed: 1 s
            assert occurrence.last_error == f"boom {attempt}"
    assert occurrence.state == "dead"
    runs = Run.objects.filter(occurrence_id=occurrence.id).order_by("attempt")
    assert [(r.attempt, r.status, r.error) for r in runs] == [
        (1, "failed", "boom 1"), (2, "failed", "boom 2"), (3, "failed", "boom 3"),
    ]  # fmt: skip


def test_non_retryable_failure_goes_straight_to_dead(task):
    due(task)
    [claimed] = queue.claim("w1", 1)
    queue.finish("w1", [outcome(claimed, "failed", retryable=False)])
    assert Occurrence.objects.get().state == "dead"


def test_dead_occurrence_can_be_rerun_with_a_fresh_budget(task):
    occurrence = due(task)
    [claimed] = queue.claim("w1", 1)
    queue.finish("w1", [outcome(claimed, "failed", retryable=False)])
    [new_id] = services.occurrence_rerun_dead(
        occurrence_ids=[occurrence.id], actor=Actor.system("tests")
    )
    fresh = Occurrence.objects.get(pk=new_id)
    assert (fresh.state, fresh.attempt, fresh.scheduled_for) == (
        "queued", 0, occurrence.scheduled_for,
    )  # fmt: skip
    [again] = queue.claim("w2", 1)
    assert (again.occurrence_id, again.attempt) == (new_id, 1)
    assert Run.objects.filter(task=task).count() == 2


def test_rerun_ignores_occurrences_that_are_not_dead(task):
    occurrence = due(task)
    assert (
        services.occurrence_rerun_dead(occurrence_ids=[occurrence.id], actor=Actor.system("tests"))
        == []
    )


def test_late_result_of_a_reclaimed_attempt_changes_nothing(task):
    due(task)
    [claimed] = queue.claim("w1", 1, lease_seconds=0.01)
    connection.cursor().execute("SELECT pg_sleep(0.05)")
    reclaimed = queue.reclaim_expired()
    assert [state for _, state in reclaimed] == ["queued"]
    queue.finish("w1", [outcome(claimed, "succeeded")])  # the slow worker reports anyway
    run = Run.objects.get(pk=claimed.run_id)
    assert run.status == "lost"
    assert Occurrence.objects.get().state == "queued"  # still there, for the next attempt
    [again] = queue.claim("w2", 1)
    assert again.attempt == 2


def test_expired_lease_on_last_attempt_goes_dead(task):
    due(task, attempt=2)  # attempts 1 and 2 used; max_retries=2 allows a third
    [claimed] = queue.claim("w1", 1, lease_seconds=0.01)
    assert claimed.attempt == 3
    connection.cursor().execute("SELECT pg_sleep(0.05)")
    assert [state for _, state in queue.reclaim_expired()] == ["dead"]


def test_heartbeat_extends_only_leases_still_held(task):
    due(task, seconds_ago=2)
    due(task, seconds_ago=1)
    first, second = queue.claim("w1", 2, lease_seconds=0.01)
    connection.cursor().execute("SELECT pg_sleep(0.05)")
    Occurrence.objects.filter(pk=second.occurrence_id).update(lease_owner="w9")
    held = queue.heartbeat("w1", [first.occurrence_id, second.occurrence_id], lease_seconds=60)
    assert held == {first.occurrence_id}
    assert Occurrence.objects.get(pk=first.occurrence_id).leased_until > timezone.now()


def test_release_returns_unstarted_work_without_counting_an_attempt(task):
    occurrence = due(task)
    [claimed] = queue.claim("w1", 1)
    queue.release("w1", [claimed.occurrence_id])
    occurrence.refresh_from_db()
    assert (occurrence.state, occurrence.attempt, occurrence.lease_owner) == ("queued", 0, None)
    assert not Run.objects.filter(pk=claimed.run_id).exists()


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8])
def test_exponential_jitter_stays_within_its_bounds(attempt, settings):
    settings.WORKER_BACKOFF_MAX_DELAY = 20
    ceiling = min(20, 2 ** (attempt - 1))
    delays = [queue.occurrence_retry_delay("exponential_jitter", attempt) for _ in range(2000)]
    assert all(0 <= d <= ceiling for d in delays)
    # Full jitter spreads over the whole range, not just near the ceiling.
    assert min(delays) < ceiling * 0.1
    assert max(delays) > ceiling * 0.9


def test_linear_and_fixed_backoff_are_capped(settings):
    settings.WORKER_BACKOFF_MAX_DELAY = 5
    assert [queue.occurrence_retry_delay("linear", a) for a in (1, 3, 9)] == [1, 3, 5]
    assert [queue.occurrence_retry_delay("fixed", a) for a in (1, 9)] == [1, 1]


@pytest.mark.django_db(transaction=True)
def test_queueing_work_notifies_listeners(task):
    from ordinaut.database import raw_connection

    with raw_connection() as listener:
        listener.execute("LISTEN ordinaut_occurrences")
        due(task, state="dead")  # nothing to run: no wake-up
        assert list(listener.notifies(timeout=0.3)) == []
        due(task, seconds_ago=-3600)  # queued (even for later): one notification, at commit
        notes = list(listener.notifies(timeout=2, stop_after=1))
    assert [n.channel for n in notes] == ["ordinaut_occurrences"]
