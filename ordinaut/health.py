"""Health endpoints in the original project's shape, so existing monitors keep working.

`/health` reports every check: 200 `healthy`; 200 `degraded` when only a non-critical
part (Redis, later the scheduler and workers) is unwell; 503 `unhealthy` when PostgreSQL,
the single source of truth, is unreachable. `/health/ready` and `/health/live` are probes.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_http_methods

import ordinaut
from ordinaut.errors import error_body

logger = logging.getLogger(__name__)

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"
# A check that is not configured (e.g. Redis in production without REDIS_URL).
DISABLED = "disabled"


@dataclass
class CheckResult:
    name: str
    status: str
    message: str
    latency_ms: float
    # Critical checks make the whole service unhealthy; the others only degrade it.
    critical: bool = False

    def as_dict(self) -> dict:
        data = asdict(self)
        del data["critical"]
        return data


def timed_check(name: str, critical: bool, probe: Callable[[], str]) -> CheckResult:
    """Run `probe`; its return value is the message, any exception makes it unhealthy."""
    started = time.perf_counter()
    try:
        message = probe()
        status = DISABLED if message.startswith("not configured") else HEALTHY
    except Exception as exc:  # a health check reports failures, it never raises them
        status, message = UNHEALTHY, f"{type(exc).__name__}: {exc}".strip()[:500]
    latency = round((time.perf_counter() - started) * 1000, 2)
    return CheckResult(name, status, message, latency, critical)


def _database_probe() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return "PostgreSQL reachable"


def _redis_probe() -> str:
    if not settings.REDIS_URL:
        return "not configured (REDIS_URL unset)"
    import redis

    client = redis.Redis.from_url(
        settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1, retry_on_timeout=False
    )
    try:
        client.ping()
    finally:
        client.close()
    return "Redis reachable"


def check_database() -> CheckResult:
    return timed_check("database", True, _database_probe)


def check_redis() -> CheckResult:
    return timed_check("redis", False, _redis_probe)


# Later components append their checks here (scheduler and worker heartbeats).
CHECKS: list[Callable[[], CheckResult]] = [check_database, check_redis]


QUEUE_STATS_SQL = """
SELECT count(*) FILTER (WHERE state = 'queued'),
       count(*) FILTER (WHERE state = 'leased'),
       count(*) FILTER (WHERE state = 'dead'),
       EXTRACT(EPOCH FROM clock_timestamp()
                          - min(run_at) FILTER (WHERE state = 'queued' AND run_at <= now()))
FROM tasks_occurrence
"""


def queue_stats() -> dict[str, float | int | None]:
    """Counts by state and how late the oldest due occurrence is (None when none is due)."""
    with connection.cursor() as cursor:
        cursor.execute(QUEUE_STATS_SQL)
        queued, leased, dead, lag = cursor.fetchone()
    return {
        "queued": queued,
        "leased": leased,
        "dead": dead,
        "oldest_due_lag_seconds": round(float(lag), 3) if lag is not None else None,
    }


def overall_status(results: list[CheckResult]) -> str:
    """unhealthy if a critical check failed, degraded if another did, else healthy."""
    failed = [r for r in results if r.status not in (HEALTHY, DISABLED)]
    if any(r.critical for r in failed):
        return UNHEALTHY
    if failed:
        return DEGRADED
    return HEALTHY


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@require_http_methods(["GET", "HEAD"])
def health(request: HttpRequest) -> JsonResponse:
    results = [check() for check in CHECKS]
    status = overall_status(results)
    queue = None
    if status != UNHEALTHY:
        try:
            queue = queue_stats()
        except DatabaseError as exc:
            logger.warning("queue stats unavailable: %s", exc)
    body = {
        "status": status,
        "timestamp": _now(),
        "version": ordinaut.__version__,
        "checks": [r.as_dict() for r in results],
        "queue": queue,
    }
    return JsonResponse(body, status=503 if status == UNHEALTHY else 200)


_migrations_done = False


def _pending_migrations() -> int:
    """Number of unapplied migrations; remembered once zero (they do not come back)."""
    global _migrations_done
    if _migrations_done:
        return 0
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    _migrations_done = not plan
    return len(plan)


@require_http_methods(["GET", "HEAD"])
def ready(request: HttpRequest) -> JsonResponse:
    """Ready to serve: the database answers and every migration is applied."""
    database = check_database()
    body = {"status": "ready", "timestamp": _now(), "checks": [database.as_dict()]}
    if database.status != HEALTHY:
        body["status"] = "not_ready"
        return JsonResponse(body, status=503)
    try:
        pending = _pending_migrations()
    except DatabaseError as exc:
        body.update(status="not_ready", message=f"cannot read migrations: {exc}")
        return JsonResponse(body, status=503)
    if pending:
        body.update(status="not_ready", message=f"{pending} migration(s) not applied")
        return JsonResponse(body, status=503)
    return JsonResponse(body)


_started = time.monotonic()


@require_http_methods(["GET", "HEAD"])
def live(request: HttpRequest) -> JsonResponse:
    """Alive: the process answers. Touches nothing else, so a database outage never restarts it."""
    return JsonResponse(
        {
            "status": "alive",
            "timestamp": _now(),
            "uptime_seconds": round(time.monotonic() - _started, 3),
        }
    )


# Browsers ask every site for one; without it each admin page logs a 404.
FAVICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    '<circle cx="8" cy="8" r="7" fill="#417690"/><circle cx="8" cy="8" r="3" fill="#fff"/></svg>'
)


@require_http_methods(["GET", "HEAD"])
def favicon(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(FAVICON, content_type="image/svg+xml")
    response["Cache-Control"] = "public, max-age=86400"
    return response


@require_http_methods(["GET", "HEAD"])
def index(request: HttpRequest) -> JsonResponse:
    """Service identity and where to go next (the original's root document)."""
    return JsonResponse(
        {
            "name": "Ordinaut",
            "version": ordinaut.__version__,
            "health_url": "/health",
            "admin_url": "/admin/",
            "metrics_url": "/metrics",
        }
    )


def metrics_refusal(request: HttpRequest) -> HttpResponse | None:
    """The 401/403 for a scraper that is neither allowed by address nor holds the token."""
    token = settings.METRICS_TOKEN
    presented = request.headers.get("Authorization", "")
    if token and hmac.compare_digest(presented.encode(), f"Bearer {token}".encode()):
        return None
    # The direct peer, never X-Forwarded-For: a scraper connects directly, and a client
    # behind a proxy could write any address into that header.
    address = request.META.get("REMOTE_ADDR") or ""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        ip = None
    if ip is not None and any(ip in net for net in settings.METRICS_ALLOWED_NETS):
        return None
    if token:
        message = "/metrics needs Authorization: Bearer <METRICS_TOKEN>"
        response = JsonResponse(error_body("unauthenticated", message), status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    message = (
        f"/metrics is not open to {address}: set METRICS_TOKEN or add the scraper's network "
        "to METRICS_ALLOWED_NETS"
    )
    return JsonResponse(error_body("forbidden", message), status=403)
