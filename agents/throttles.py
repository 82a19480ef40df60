"""Per-agent rate limits in Redis: fixed windows counted with one INCR per request.

A view names its bucket with `throttle_scope` (a name from DEFAULT_THROTTLE_RATES, or a
mapping of HTTP method to name). The count lives in Redis so every web process shares it.
When Redis is unreachable the limit fails open — the API stays up unthrottled — and that is
logged; for a few seconds after a failure Redis is not even tried, so an outage does not add
a connect timeout to every request. `clock` is injectable so tests need no sleeps.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from django.core.cache import cache
from django.core.cache.backends.base import InvalidCacheBackendError
from django_redis import get_redis_connection
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

from ordinaut.errors import RateLimited
from ordinaut.middleware import client_ip

logger = logging.getLogger(__name__)

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(s|sec|second|m|min|minute|h|hour|d|day)s?\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# After a Redis failure, skip it for this long (seconds) before trying again.
_BREAKER_SECONDS = 5.0


def parse_rate(rate: str) -> tuple[int, int]:
    """'60/min' -> (60, 60); '5/10s' -> (5, 10). Raise ValueError for anything else."""
    match = _RATE.match(rate or "")
    if not match:
        raise ValueError(f"invalid rate {rate!r}; use e.g. 60/min, 1200/minute, 5/10s")
    count, multiplier, unit = match.groups()
    return int(count), int(multiplier or 1) * _UNIT_SECONDS[unit[0]]


class _Breaker:
    """Remembers a recent Redis failure so the next requests skip Redis for a moment."""

    def __init__(self) -> None:
        self._open_until = 0.0
        self._lock = threading.Lock()

    def is_open(self, now: float) -> bool:
        return now < self._open_until

    def trip(self, now: float, exc: Exception) -> None:
        with self._lock:
            if now >= self._open_until:
                logger.warning(
                    "throttling disabled for %.0fs: Redis unavailable (%s: %s)",
                    _BREAKER_SECONDS,
                    type(exc).__name__,
                    exc,
                )
            self._open_until = now + _BREAKER_SECONDS


breaker = _Breaker()


def _redis_client() -> Any | None:
    """The django-redis client behind the default cache, or None for other backends."""
    try:
        return get_redis_connection("default")
    except (NotImplementedError, InvalidCacheBackendError, AttributeError):
        return None


def count_hit(key: str, window_seconds: int) -> int:
    """Add one hit to `key` (expiring with its window) and return the window's count."""
    client = _redis_client()
    if client is not None:
        # One round trip; INCR is atomic, so concurrent processes never lose a hit.
        pipe = client.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, window_seconds + 1)
        return int(pipe.execute()[0])
    # Without Redis (development without REDIS_URL) the local cache counts per process.
    cache.add(key, 0, timeout=window_seconds + 1)
    return cache.incr(key)


KEY_PREFIX = "ordinaut:throttle"


def _window(bucket: str, now: float) -> tuple[int, int, float] | None:
    """(limit, window seconds, window start) of `bucket`, or None when it is not limited."""
    rate = api_settings.DEFAULT_THROTTLE_RATES.get(bucket)
    if not rate:
        return None
    limit, window = parse_rate(rate)
    return limit, window, math.floor(now / window) * window


def hit(bucket: str, ident: str, *, now: float) -> float | None:
    """Count one request of `ident` in `bucket`; return the seconds to wait when it is over
    the limit, else None. Fails open (and says so) when Redis is down."""
    found = _window(bucket, now)
    if found is None or breaker.is_open(now):
        return None
    limit, window, start = found
    key = f"{KEY_PREFIX}:{bucket}:{ident}:{start}"
    try:
        hits = count_hit(key, window)
    except Exception as exc:  # any Redis failure: fail open, loudly
        breaker.trip(now, exc)
        return None
    return max(start + window - now, 1.0) if hits > limit else None


def check_agent(agent_id: Any, bucket: str) -> None:
    """The REST throttle for a caller that is not a DRF view (an MCP tool call): raise
    RateLimited with `retry_after` when the agent is over `bucket`'s limit."""
    wait = hit(bucket, f"agent:{agent_id}", now=AgentRateThrottle.clock())
    if wait is not None:
        retry_after = math.ceil(wait)
        raise RateLimited(
            f"rate limit of {bucket} exceeded; retry in {retry_after} s",
            details={"retry_after": retry_after},
        )


def record_failed_exchange(agent_id: Any) -> float | None:
    """Count a refused token exchange against the agent id it claimed; return the seconds
    to wait when that id is now over its limit of failures."""
    return hit("auth_failures", f"agent-id:{str(agent_id).lower()}", now=AgentRateThrottle.clock())


class AgentRateThrottle(BaseThrottle):
    """Fixed-window limit per (bucket, caller); caller is the agent, or the IP before login."""

    clock: Callable[[], float] = time.time
    key_prefix = KEY_PREFIX

    def __init__(self) -> None:
        self.wait_seconds: float | None = None

    def get_ident(self, request: Request) -> str:
        # The one rule for the client address (the audit log uses it too): the socket's,
        # unless TRUST_X_FORWARDED_FOR. DRF's own would believe any X-Forwarded-For.
        return client_ip(request) or "unknown"

    def bucket(self, request: Request, view: Any) -> str | None:
        declared = getattr(view, "throttle_scope", None)
        if isinstance(declared, dict):
            method = "GET" if request.method in ("HEAD", "OPTIONS") else request.method
            return declared.get(method)
        return declared

    def idents(self, request: Request, view: Any) -> list[str]:
        """Who is counted: the agent when authenticated, else the client address."""
        if request.user is not None and getattr(request.user, "pk", None):
            return [f"agent:{request.user.pk}"]
        return [f"ip:{self.get_ident(request)}"]

    def allow_request(self, request: Request, view: Any) -> bool:
        bucket = self.bucket(request, view)
        if not bucket:
            return True
        now = self.clock()
        for ident in self.idents(request, view):
            wait = hit(bucket, ident, now=now)
            if wait is not None:
                self.wait_seconds = wait
                return False
        return True

    def wait(self) -> float | None:
        return self.wait_seconds


class TokenExchangeThrottle(AgentRateThrottle):
    """For /agents/auth/*: every attempt counted per client address (one client cannot try
    many agents, or one agent many times).

    Refused exchanges are also counted per claimed agent id (`record_failed_exchange`, from
    the view): past RATE_LIMIT_AUTH_FAILURES a wrong secret for that id is answered 429.
    A correct secret is still accepted then — whoever merely knows an agent's id must not
    be able to lock the agent out by failing on purpose.
    """

    def idents(self, request: Request, view: Any) -> list[str]:
        return [f"ip:{self.get_ident(request)}"]
