"""The web's `/metrics`: django-prometheus' series and this process's (ordinaut.metrics),
plus the system's state read from the database at scrape time.

State gauges come from one query per scrape, so they are the same whichever gunicorn worker
answers and however many there are; nothing is kept between scrapes. Per-process counters
of the workers and schedulers are on their own ports (`--metrics-port`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_http_methods
from django_prometheus.exports import ExportToDjangoView
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ordinaut.health import metrics_refusal
from tasks.health import worker_fresh_seconds
from tasks.models import OccurrenceState

logger = logging.getLogger(__name__)

# One round trip for every gauge. The worker freshness window is the one /health uses.
STATE_SQL = """
SELECT
  (SELECT coalesce(json_object_agg(state, n), '{}') FROM
     (SELECT state, count(*) AS n FROM tasks_occurrence GROUP BY state) s),
  (SELECT EXTRACT(EPOCH FROM clock_timestamp() - min(run_at))
     FROM tasks_occurrence WHERE state = 'queued' AND run_at <= now()),
  (SELECT EXTRACT(EPOCH FROM max(last_seen)) FROM tasks_schedulerheartbeat),
  (SELECT count(*) FROM tasks_workerheartbeat
     WHERE last_seen >= now() - make_interval(secs => %(worker_fresh)s)),
  (SELECT count(*) FROM tasks_approval WHERE status = 'pending'),
  (SELECT count(*) FROM tasks_outboxmessage WHERE sent_at IS NULL)
"""


class StateCollector(Collector):
    """Gauges of the system's state, read from PostgreSQL when collected."""

    def collect(self) -> Iterator[Metric]:
        try:
            row = self._read()
        except DatabaseError as exc:
            # No state series this scrape: Prometheus sees them absent (alerts on `up` and
            # on absent() fire), rather than a zero that looks like an empty queue.
            logger.warning("metrics: database state unavailable: %s", exc)
            yield _gauge("ordinaut_state_scrape_ok", "1 when the state gauges were read.", 0)
            return
        by_state, lag, last_tick, workers, approvals, outbox = row
        occurrences = GaugeMetricFamily(
            "ordinaut_queue_occurrences", "Occurrences in the queue, by state.", labels=["state"]
        )
        for state in OccurrenceState.values:
            occurrences.add_metric([state], float((by_state or {}).get(state, 0)))
        yield occurrences
        yield _gauge(
            "ordinaut_queue_oldest_due_lag_seconds",
            "How late the oldest due queued occurrence is (0 when none is due).",
            float(lag or 0.0),
        )
        if last_tick is not None:
            yield _gauge(
                "ordinaut_scheduler_last_tick_timestamp_seconds",
                "Unix time of the latest tick of any scheduler.",
                float(last_tick),
            )
        yield _gauge("ordinaut_workers_alive", "Workers with a fresh heartbeat.", workers)
        yield _gauge("ordinaut_approvals_waiting", "Approvals waiting for a decision.", approvals)
        yield _gauge("ordinaut_outbox_backlog", "Lifecycle events not yet relayed.", outbox)
        yield _gauge("ordinaut_state_scrape_ok", "1 when the state gauges were read.", 1)

    @staticmethod
    def _read() -> tuple:
        with connection.cursor() as cursor:
            cursor.execute(STATE_SQL, {"worker_fresh": worker_fresh_seconds()})
            return cursor.fetchone()


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


_state = CollectorRegistry(auto_describe=False)
_state.register(StateCollector())


@require_http_methods(["GET", "HEAD"])
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition, for a bearer METRICS_TOKEN or a client address in
    METRICS_ALLOWED_NETS (see ordinaut.health.metrics_refusal)."""
    refused = metrics_refusal(request)
    if refused is not None:
        return refused
    # django-prometheus' own view: it knows its multi-process mode.
    response = ExportToDjangoView(request)
    response.content = response.content + generate_latest(_state)
    return response
