"""How the queue talks to PostgreSQL: prepared hot statements, single statements committed
by themselves, the worker's one-statement heartbeat and task load."""

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from ordinaut.database import PREPARE_ON_REQUEST_ONLY, database_settings, raw_connection
from tasks import queue
from tasks.models import Occurrence, Run, Task, WorkerHeartbeat
from tasks.worker import Worker, _load_task
from tests.conftest import command_env, run_manage
from tests.factories import make_agent, make_occurrence, make_task

URL = "postgresql://u:p@db.example:5432/ordinaut"
# What a child process reports: the statements its connection prepared while claiming.
PREPARED_PROBE = (
    "from django.db import connection; from tasks import queue; "
    "queue.claim('probe', 10); queue.claim('probe', 10); "
    "cur = connection.cursor(); "
    "cur.execute('SELECT statement FROM pg_prepared_statements'); "
    "print(sum('SKIP LOCKED' in row[0] for row in cur.fetchall()))"
)


def prepared_statements() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall()]


def test_connections_prepare_only_when_a_statement_asks_by_default(monkeypatch):
    monkeypatch.delenv("DB_PREPARED_STATEMENTS", raising=False)
    assert database_settings(URL)["OPTIONS"]["prepare_threshold"] == PREPARE_ON_REQUEST_ONLY


@pytest.mark.parametrize("value", ["0", "false", "No"])
def test_prepared_statements_can_be_turned_off(monkeypatch, value):
    monkeypatch.setenv("DB_PREPARED_STATEMENTS", value)
    assert database_settings(URL)["OPTIONS"]["prepare_threshold"] is None


@pytest.mark.django_db(transaction=True)
def test_the_claim_is_prepared_once_and_orm_queries_never():
    agent, _ = make_agent()
    task = make_task(agent)
    for seconds in (1, 2, 3):
        make_occurrence(task, at=timezone.now() - timedelta(seconds=seconds))
    connection.close()  # a fresh connection: nothing prepared yet
    assert queue.claim_unkeyed("w1", 1)
    assert queue.claim_unkeyed("w1", 1)
    list(Task.objects.filter(pk=task.pk))  # the ORM binds client-side: never prepared
    prepared = prepared_statements()
    assert len([s for s in prepared if "FOR UPDATE SKIP LOCKED" in s]) == 1
    assert not [s for s in prepared if "tasks_task" in s and "SKIP LOCKED" not in s]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("setting", "prepared"), [("1", "2"), ("0", "0")])
def test_a_process_prepares_the_claims_unless_turned_off(servers, setting, prepared):
    url = servers.POSTGRES.tcp_url(connection.settings_dict["NAME"])
    env = command_env(
        DEBUG="0", SECRET_KEY="k" * 50, DATABASE_URL=url, REDIS_URL="",
        DB_PREPARED_STATEMENTS=setting,
    )  # fmt: skip
    result = run_manage("shell", "-c", PREPARED_PROBE, env=env)
    assert result.returncode == 0, result.stderr
    # Unkeyed and keyed claim, each prepared once although each ran twice.
    assert result.stdout.split()[-1] == prepared


@pytest.mark.django_db(transaction=True)
def test_a_claim_outside_a_transaction_commits_by_itself():
    agent, _ = make_agent()
    occurrence = make_occurrence(make_task(agent), at=timezone.now() - timedelta(seconds=1))
    [claimed] = queue.claim_unkeyed("w1", 10)
    # Another session sees the lease and the Run at once: nothing is left uncommitted.
    with raw_connection() as other:
        state = other.execute(
            "SELECT state, lease_owner FROM tasks_occurrence WHERE id = %s", [occurrence.id]
        ).fetchone()
        run = other.execute(
            "SELECT status FROM tasks_run WHERE id = %s", [claimed.run_id]
        ).fetchone()
    assert state == ("leased", "w1")
    assert run == ("running",)
    assert not connection.in_atomic_block


@pytest.mark.django_db(transaction=True)
def test_a_claim_inside_a_transaction_is_rolled_back_with_it():
    agent, _ = make_agent()
    occurrence = make_occurrence(make_task(agent), at=timezone.now() - timedelta(seconds=1))

    def claim_then_fail() -> None:
        with transaction.atomic():
            assert queue.claim("w1", 10)
            raise RuntimeError("the caller fails after claiming")

    with pytest.raises(RuntimeError):
        claim_then_fail()
    assert Occurrence.objects.get(pk=occurrence.pk).state == "queued"
    assert not Run.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_keyed_work_is_claimed_after_unkeyed_and_once_per_key():
    agent, _ = make_agent()
    task = make_task(agent)
    now = timezone.now()
    plain = make_occurrence(task, at=now - timedelta(seconds=1))
    keyed = [
        make_occurrence(task, at=now - timedelta(seconds=s), concurrency_key="mailbox")
        for s in (3, 2)
    ]
    claimed = queue.claim("w1", 10)
    assert [c.occurrence_id for c in claimed] == [plain.id, keyed[0].id]
    assert queue.claim_keyed("w1", 10) == []  # the key is busy
    assert queue.claim_unkeyed("w1", 10, concurrency_keys=["mailbox"]) == []


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_writes_then_refreshes_one_row_and_keeps_stopping():
    worker = Worker(concurrency=3, name="w-beat")
    worker._heartbeat()
    first = WorkerHeartbeat.objects.get(id="w-beat")
    assert (first.concurrency, first.running, first.processed, first.stopping) == (3, 0, 0, False)
    WorkerHeartbeat.objects.filter(id="w-beat").update(stopping=True)
    worker._processed = 7
    worker._heartbeat()
    again = WorkerHeartbeat.objects.get(id="w-beat")
    assert (again.processed, again.stopping, again.started_at) == (7, True, first.started_at)
    assert again.last_seen > first.last_seen
    assert WorkerHeartbeat.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_worker_loads_a_task_with_its_agent_in_one_statement(django_assert_num_queries):
    agent, _ = make_agent()
    task = make_task(agent)
    with django_assert_num_queries(1):
        loaded = _load_task(task.pk)
        assert loaded.created_by.name == agent.name
    expected = Task.objects.get(pk=task.pk)
    assert {f.attname: getattr(loaded, f.attname) for f in Task._meta.concrete_fields} == {
        f.attname: getattr(expected, f.attname) for f in Task._meta.concrete_fields
    }
    assert not loaded._state.adding
    task.delete()
    with pytest.raises(Task.DoesNotExist, match=str(task.pk)):
        _load_task(task.pk)


@pytest.mark.django_db(transaction=True)
def test_a_woken_pass_starts_the_run_before_its_housekeeping():
    agent, _ = make_agent()
    task = make_task(agent)
    worker = Worker(concurrency=2, name="w-order")
    try:
        assert not worker.run_once()  # the first pass announces the worker: nothing to do
        announced = WorkerHeartbeat.objects.get(id="w-order")
        make_occurrence(task, at=timezone.now() - timedelta(seconds=1))
        worker._last_beat -= worker.lease_seconds  # the heartbeat and the reclaim are due
        worker._last_reclaim -= worker.lease_seconds
        assert worker.run_once()
        beat = WorkerHeartbeat.objects.get(id="w-order")  # the heartbeat ran in that pass...
    finally:
        worker._shutdown()
    assert beat.last_seen > announced.last_seen
    run = Run.objects.get(task=task)
    assert run.status == "succeeded"
    # ...after the pipeline had started (a Run's start is its pipeline's own start).
    assert run.started_at < beat.last_seen


@pytest.mark.django_db(transaction=True)
def test_a_worker_has_its_heartbeat_row_before_its_first_claim():
    agent, _ = make_agent()
    task = make_task(agent)
    make_occurrence(task, at=timezone.now() - timedelta(seconds=1))
    worker = Worker(concurrency=2, name="w-first")
    try:
        assert worker.run_once()
        beat = WorkerHeartbeat.objects.get(id="w-first")
    finally:
        worker._shutdown()
    # Written before the claim: the Run it leased started after the row's first write.
    assert beat.last_seen < Run.objects.get(task=task).started_at


@pytest.mark.django_db(transaction=True)
def test_a_burst_worker_runs_what_its_housekeeping_reclaimed():
    agent, _ = make_agent()
    task = make_task(agent, max_retries=2)
    make_occurrence(task, at=timezone.now() - timedelta(seconds=1))
    [lost] = queue.claim("w-crashed", 10, lease_seconds=0.01)  # a worker that died holding it
    time.sleep(0.05)  # its lease runs out
    Worker(concurrency=1, burst=True, name="w-rescuer").run(threading.Event())
    runs = list(Run.objects.filter(task=task).order_by("attempt"))
    assert [(r.attempt, r.status) for r in runs] == [(1, "lost"), (2, "succeeded")]
    assert runs[0].id == lost.run_id
    assert not Occurrence.objects.filter(task=task).exists()
