"""/health, /health/ready and /health/live against the real servers, including outages."""

import io
import json
import logging

import pytest
from django.db import connection

from ordinaut.logging import CorrelationIdFilter, JsonFormatter
from tests.factories import make_agent, make_occurrence, make_task


def checks_by_name(body):
    return {check["name"]: check for check in body["checks"]}


@pytest.fixture
def scheduler_ran():
    """A real scheduler tick and a real worker pass, so /health sees fresh heartbeats."""
    import threading

    from tasks.scheduler import Scheduler
    from tasks.worker import Worker

    Scheduler().run(threading.Event(), once=True)
    Worker(burst=True, concurrency=1)._heartbeat()


@pytest.mark.django_db
def test_health_is_healthy_with_database_and_redis_checks(client, scheduler_ran):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["version"] == "0.1.0"
    assert body["timestamp"].endswith("Z")
    checks = checks_by_name(body)
    assert checks["database"]["status"] == "healthy"
    assert checks["redis"]["status"] == "healthy"
    assert checks["scheduler"]["status"] == "healthy"
    assert checks["workers"]["status"] == "healthy"
    assert set(checks["database"]) == {"name", "status", "message", "latency_ms"}
    assert body["queue"] == {"queued": 0, "leased": 0, "dead": 0, "oldest_due_lag_seconds": None}


@pytest.mark.django_db
def test_no_scheduler_heartbeat_degrades_health(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    scheduler = checks_by_name(response.json())["scheduler"]
    assert scheduler["status"] == "unhealthy"
    assert "runscheduler" in scheduler["message"]


@pytest.mark.django_db
def test_no_worker_heartbeat_degrades_health(client):
    import threading

    from tasks.scheduler import Scheduler

    Scheduler().run(threading.Event(), once=True)
    body = client.get("/health").json()
    assert body["status"] == "degraded"
    workers = checks_by_name(body)["workers"]
    assert workers["status"] == "unhealthy"
    assert "runworker" in workers["message"]


@pytest.mark.django_db
def test_stale_scheduler_heartbeat_degrades_health(client, scheduler_ran):
    from datetime import timedelta

    from django.utils import timezone

    from tasks.models import SchedulerHeartbeat

    SchedulerHeartbeat.objects.update(last_seen=timezone.now() - timedelta(minutes=5))
    body = client.get("/health").json()
    assert body["status"] == "degraded"
    assert "stale" in checks_by_name(body)["scheduler"]["message"]


@pytest.mark.django_db
def test_health_queue_counts_states_and_due_lag(client):
    from datetime import timedelta

    from django.utils import timezone

    agent, _ = make_agent()
    task = make_task(agent)
    now = timezone.now()
    make_occurrence(task, at=now - timedelta(seconds=90))
    make_occurrence(task, at=now + timedelta(hours=1))
    make_occurrence(task, state="leased", lease_owner="w1", leased_until=now)
    make_occurrence(task, state="dead")
    queue = client.get("/health").json()["queue"]
    assert (queue["queued"], queue["leased"], queue["dead"]) == (2, 1, 1)
    # The oldest due occurrence is 90 s late (plus however long the request took).
    assert 90 <= queue["oldest_due_lag_seconds"] < 150


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/health", "/health/", "/health/ready", "/health/live"])
def test_head_is_answered_on_every_probe(client, path):
    assert client.head(path).status_code == 200


@pytest.mark.django_db
def test_post_to_health_is_405_json(client):
    assert client.post("/health").status_code == 405


@pytest.mark.django_db
def test_ready_reports_ready_when_migrated(client):
    response = client.get("/health/ready")
    assert response.status_code == 200
    assert response.json()["status"] == "ready"


@pytest.mark.django_db
def test_live_touches_no_database(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get("/health/live")
    assert response.status_code == 200
    assert response.json()["status"] == "alive"


@pytest.fixture
def redis_stopped(servers):
    servers.REDIS.stop()
    try:
        yield
    finally:
        servers.REDIS.start()


@pytest.mark.slow
@pytest.mark.django_db
def test_redis_down_degrades_but_keeps_200(client, scheduler_ran, redis_stopped):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    checks = checks_by_name(body)
    assert checks["redis"]["status"] == "unhealthy"
    assert checks["redis"]["message"]
    assert checks["database"]["status"] == "healthy"
    assert body["queue"]["queued"] == 0


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_postgres_down_is_503_unhealthy_and_recovers(client, servers, scheduler_ran):
    assert client.get("/health").status_code == 200
    connection.close()
    servers.POSTGRES.stop()
    try:
        response = client.get("/health")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "unhealthy"
        assert checks_by_name(body)["database"]["status"] == "unhealthy"
        assert checks_by_name(body)["redis"]["status"] == "healthy"
        assert client.get("/health/ready").status_code == 503
        assert client.get("/health/live").status_code == 200
    finally:
        servers.POSTGRES.start()
    # The same process recovers without a restart once PostgreSQL is back.
    assert client.get("/health").json()["status"] == "healthy"


@pytest.mark.django_db
def test_correlation_id_is_echoed_or_generated(client):
    echoed = client.get("/health/live", headers={"X-Correlation-ID": "abc-123"})
    assert echoed["X-Correlation-ID"] == "abc-123"
    generated = client.get("/health/live")
    assert len(generated["X-Correlation-ID"]) == 32
    forged = client.get("/health/live", headers={"X-Correlation-ID": "a\nb" + "x" * 100})
    assert forged["X-Correlation-ID"] != "a\nb" + "x" * 100


@pytest.mark.django_db
def test_request_logs_are_json_lines_with_the_correlation_id(client):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(CorrelationIdFilter())
    logger = logging.getLogger("django.request")
    logger.addHandler(handler)
    try:
        response = client.get("/no-such-page", headers={"X-Correlation-ID": "corr-42"})
    finally:
        logger.removeHandler(handler)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["level"] == "WARNING"
    assert line["logger"] == "django.request"
    assert "no-such-page" in line["message"]
    assert line["correlation_id"] == "corr-42"


def test_root_names_the_service_and_its_links(client):
    body = client.get("/").json()
    assert (body["name"], body["health_url"]) == ("Ordinaut", "/health")
