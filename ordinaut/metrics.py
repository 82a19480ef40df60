"""Prometheus series of this process: what it did, counted where it happens.

Two kinds of series, served from two places (so every figure is right with any number of
processes):

- **Per process** (this module): counters and histograms of what the process itself did —
  runs finished, their and their steps' durations, the scheduler's enqueue lag, webhook
  deliveries, events relayed. A worker or scheduler serves them on its own port
  (`runworker --metrics-port N`, `runscheduler --metrics-port N`, see `serve`); Prometheus
  scrapes each process and sums.
- **State** (tasks/metrics.py): gauges read from the database when the web's `/metrics` is
  scraped — queue depth, lag, last scheduler tick, live workers, approvals, outbox backlog.
  Any gunicorn worker answers them alike.

Labels stay low-cardinality: a status, a result, a tool name; never a task or agent id.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Histogram, start_http_server

logger = logging.getLogger(__name__)

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
_LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)

RUNS = Counter("ordinaut_runs", "Run attempts finished by this process, by status.", ["status"])
RUN_DURATION = Histogram(
    "ordinaut_run_duration_seconds",
    "Wall time of a run attempt, from its pipeline's start to its result.",
    buckets=_DURATION_BUCKETS,
)
STEP_DURATION = Histogram(
    "ordinaut_step_duration_seconds",
    "Wall time of a pipeline step that ran (all its tool attempts), by tool.",
    ["tool"],
    buckets=_DURATION_BUCKETS,
)
ENQUEUE_LAG = Histogram(
    "ordinaut_scheduler_enqueue_lag_seconds",
    "When a scheduled occurrence was committed to the queue minus its instant (0 when it "
    "was queued ahead of time).",
    buckets=_LAG_BUCKETS,
)
WEBHOOK_DELIVERIES = Counter(
    "ordinaut_webhook_deliveries",
    "Webhook delivery attempts by result: delivered, retry (failed, tried again later), "
    "failed (given up).",
    ["result"],
)
EVENTS_PUBLISHED = Counter(
    "ordinaut_events_published",
    "Lifecycle events relayed from the outbox to the Redis stream.",
)


# Series exist at zero from the start, so rate() and the alerts see a counter before its
# first increment (the statuses a finished attempt can have: tasks.models.RunStatus).
for _status in ("succeeded", "failed", "timed_out", "canceled", "waiting_approval"):
    RUNS.labels(_status)
for _result in ("delivered", "retry", "failed"):
    WEBHOOK_DELIVERIES.labels(_result)


def run_finished(outcomes: Iterable[tuple[str, float]]) -> None:
    """Count finished attempts: (status, duration in seconds) each."""
    for status, seconds in outcomes:
        RUNS.labels(status).inc()
        RUN_DURATION.observe(max(0.0, seconds))


def enqueued(lags: Iterable[float]) -> None:
    """Observe the enqueue lag of each occurrence a scheduler tick committed."""
    for lag in lags:
        ENQUEUE_LAG.observe(max(0.0, lag))


def serve(port: int, host: str = "127.0.0.1") -> WSGIServer:
    """Serve this process's series at http://host:port/metrics in a daemon thread.

    Loopback by default: the series are harmless but not public. Containers and pods that
    Prometheus scrapes from outside pass `--metrics-host 0.0.0.0`.
    """
    server, thread = start_http_server(port, addr=host)
    thread.name = "metrics-http"
    logger.info("metrics on http://%s:%d/metrics", host, server.server_port)
    return server


def add_arguments(parser: Any) -> None:
    """`--metrics-port` and `--metrics-host` for a long-running command."""
    parser.add_argument(
        "--metrics-port", type=int, help="serve this process's Prometheus series on this port"
    )
    parser.add_argument(
        "--metrics-host", default="127.0.0.1", help="address to serve them on (default loopback)"
    )


def serve_from_options(options: dict[str, Any]) -> WSGIServer | None:
    """Start the metrics server when the command was given --metrics-port."""
    if options.get("metrics_port") is None:
        return None
    return serve(options["metrics_port"], options["metrics_host"])
