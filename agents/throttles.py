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


class AgentRateThrottle(BaseThrottle):
    """Fixed-window limit per (bucket, caller); caller is the agent, or the IP before login."""

    clock: Callable[[], float] = time.time
    key_prefix = "ordinaut:throttle"

    def __init__(self) -> None:
        self.wait_seconds: float | None = None

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
        rate = api_settings.DEFAULT_THROTTLE_RATES.get(bucket)
        if not rate:
            return True
        limit, window = parse_rate(rate)
        now = self.clock()
        if breaker.is_open(now):
            return True
        window_start = math.floor(now / window) * window
        for ident in self.idents(request, view):
            key = f"{self.key_prefix}:{bucket}:{ident}:{window_start}"
            try:
                hits = count_hit(key, window)
            except Exception as exc:  # any Redis failure: fail open, loudly
                breaker.trip(now, exc)
                return True
            if hits > limit:
                self.wait_seconds = max(window_start + window - now, 1.0)
                return False
        return True

    def wait(self) -> float | None:
        return self.wait_seconds


class TokenExchangeThrottle(AgentRateThrottle):
    """For /agents/auth/*: counted per client address and per claimed agent id.

    Before authentication there is no agent to count, so the claimed id in the body is used
    (guessing one agent's secret from many addresses is limited) alongside the address
    (trying many agents from one address is limited).
    """

    def idents(self, request: Request, view: Any) -> list[str]:
        idents = [f"ip:{self.get_ident(request)}"]
        data = request.data if isinstance(request.data, dict) else {}
        claimed = data.get("agent_id")
        if isinstance(claimed, str) and 0 < len(claimed) <= 64:
            idents.append(f"agent-id:{claimed.lower()}")
        return idents
