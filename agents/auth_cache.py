"""Per-process cache of credential lookups, invalidated by PostgreSQL NOTIFY.

Every API request authenticates, and a database round trip per request costs more than the
rest of a single-object read. So each process keeps the credential rows it has looked up
(the row values, never shared model instances) and drops all of them whenever anything that
decides authentication changes: a trigger on agents, credentials and revoked tokens sends
NOTIFY on `CHANNEL` when such a change commits (migration agents 0003), and a daemon thread
here LISTENs for it.

Guarantees:
- A change reaches every process as soon as PostgreSQL delivers the NOTIFY (at commit; well
  under a millisecond on one host). What is checked per request from the row — revoked,
  expired, agent inactive, scopes — is re-evaluated on every request.
- The process that makes such a change drops its own cache when it commits
  (`invalidate_on_commit`), not when its NOTIFY comes back.
- The cache is only used while LISTEN is known to work: the listener NOTIFYs itself every
  HEARTBEAT_SECONDS, and a heartbeat not heard back in time (a half-open TCP connection, a
  pooler that dropped the LISTEN) turns the cache off until a fresh connection hears one.
  Its connection has TCP keepalives. Before the listener has connected, and from the moment
  it is in doubt until it has reconnected, every lookup goes to the database; a (re)connect
  drops everything cached before it. LISTEN needs a direct or session-pooled connection
  (PgBouncer in transaction pooling mode cannot hold one: the heartbeat then keeps the
  cache off).
- A lookup that raced with an invalidation is not stored (generation check), so a row read
  before a change committed cannot outlive the change's NOTIFY.
- Entries also expire after AUTH_CACHE_SECONDS (0 disables the cache) as a safety net.
Misses (unknown keys) are never cached, so a new credential works at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

from django.conf import settings

from ordinaut.database import Listener

logger = logging.getLogger(__name__)

CHANNEL = "ordinaut_auth"
# Bounds memory per process; when full the cache starts over (keys are few in practice).
MAX_ENTRIES = 10_000
# The listener's wait slice: how soon `stop()` is noticed.
_WAIT_SECONDS = 1.0
# The listener NOTIFYs itself this often; a heartbeat not heard back within _HEARTBEAT_LATE
# means the LISTEN is not working (a half-open connection, a pooler that dropped it): the
# cache is off until a fresh connection hears one again.
HEARTBEAT_SECONDS = 3.0
_HEARTBEAT_LATE = 2.0
_HEARTBEAT = "heartbeat"
_RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)


class AuthCache:
    """Credential rows by lookup key, valid while LISTEN on CHANNEL is active."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: dict[Hashable, tuple[float, Any]] = {}
        self._generation = 0
        self._listening = False
        self._pid: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._beats = 0
        self._last_heard = float("-inf")  # clock() when our last heartbeat came back

    @property
    def ttl(self) -> float:
        return float(settings.AUTH_CACHE_SECONDS or 0)

    @property
    def listening(self) -> bool:
        """True while the invalidation listener holds a LISTEN that heard its own heartbeat
        lately. Checked from the requests' side too: a listener stuck on a dead session
        (a NOTIFY that never returns) cannot keep the cache on."""
        fresh = self.clock() - self._last_heard < HEARTBEAT_SECONDS + _HEARTBEAT_LATE
        return self._listening and self._pid == os.getpid() and fresh

    def lookup(self, key: Hashable, load: Callable[[], Any]) -> Any:
        """The cached value for `key`, or `load()` (stored unless None or raced)."""
        if self.ttl <= 0:
            return load()
        self._ensure_listener()
        if not self.listening:
            return load()
        now = self.clock()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            return entry[1]
        generation = self._generation
        value = load()
        if value is not None:
            with self._lock:
                if self._generation == generation and self.listening:
                    if len(self._entries) >= MAX_ENTRIES:
                        self._entries.clear()
                    self._entries[key] = (now + self.ttl, value)
        return value

    def invalidate(self) -> None:
        """Drop every entry, and make lookups already in flight not store their result."""
        with self._lock:
            self._generation += 1
            self._entries.clear()

    def stop(self) -> None:
        """Stop the listener thread (tests; a process that exits needs nothing)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(timeout=_WAIT_SECONDS * 5)
        self._set_listening(False)
        self._thread = None
        self._stop = threading.Event()

    def _ensure_listener(self) -> None:
        # Started lazily, in the process that serves requests: a thread does not survive
        # gunicorn's fork, so a child finds the parent's pid here and starts its own.
        if self._pid == os.getpid() and self._thread is not None:
            return
        with self._lock:
            if self._pid == os.getpid() and self._thread is not None:
                return
            self._pid = os.getpid()
            self._listening = False
            self._entries.clear()
            self._thread = threading.Thread(
                target=self._listen, args=(self._stop,), name="auth-cache-listener", daemon=True
            )
            self._thread.start()

    def _beat(self, listener: Listener, stop: threading.Event) -> None:
        """Send a heartbeat and listen for up to HEARTBEAT_SECONDS; invalidate on any change.

        Raises HeartbeatMissed when our own heartbeat does not come back in time.
        """
        self._beats += 1
        token = f"{_HEARTBEAT}:{os.getpid()}:{self._beats}"
        listener.notify_self(token)
        sent = time.monotonic()
        heard = False
        deadline = sent + HEARTBEAT_SECONDS
        while not stop.is_set() and time.monotonic() < deadline:
            payloads = listener.payloads(min(_WAIT_SECONDS, deadline - time.monotonic()))
            if token in payloads:
                heard, self._last_heard = True, self.clock()
            if any(not payload.startswith(_HEARTBEAT) for payload in payloads):
                self.invalidate()
            if not heard and time.monotonic() - sent > _HEARTBEAT_LATE:
                raise HeartbeatMissed(f"no heartbeat back within {_HEARTBEAT_LATE:g}s")

    def _set_listening(self, listening: bool) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()
            self._listening = listening

    def _listen(self, stop: threading.Event) -> None:
        listener = Listener(CHANNEL)
        failures = 0
        while not stop.is_set():
            try:
                listener.connect()
                # Caching starts only once our own heartbeat came back: LISTEN works.
                self._beat(listener, stop)
                # Whatever was cached before LISTEN was active may have missed a NOTIFY.
                self._set_listening(True)
                failures = 0
                while not stop.is_set():
                    self._beat(listener, stop)
            except Exception as exc:  # any failure: stop caching, then reconnect
                self._set_listening(False)
                listener.close()
                delay = _RETRY_SECONDS[min(failures, len(_RETRY_SECONDS) - 1)]
                failures += 1
                logger.warning(
                    "auth cache disabled, reconnecting in %.1fs: %s: %s",
                    delay,
                    type(exc).__name__,
                    exc,
                )
                stop.wait(delay)
        self._set_listening(False)
        listener.close()


class HeartbeatMissed(Exception):
    """The LISTEN session did not hear its own NOTIFY: treat it as down."""


auth_cache = AuthCache()


def invalidate_on_commit() -> None:
    """Drop this process's cached credentials once the current transaction commits.

    The use cases that revoke or narrow (agents.services) call it, so the process that made
    the change refuses the old credential from its next request, without waiting for its
    own NOTIFY to come back.
    """
    from django.db import transaction

    transaction.on_commit(auth_cache.invalidate)


__all__ = ["CHANNEL", "AuthCache", "auth_cache"]
