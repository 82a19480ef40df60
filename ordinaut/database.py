"""DATABASE_URL parsing, raw psycopg connections for both URL forms, fast row loading."""

from __future__ import annotations

import collections
import contextlib
import functools
import os
from collections.abc import Sequence
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

# psycopg prepares a statement after this many executions, or at once when the call asks
# (`execute(..., prepare=True)`); this many means never unasked.
PREPARE_ON_REQUEST_ONLY = 2**31 - 1


def database_settings(url: str) -> dict[str, Any]:
    """Return a Django DATABASES entry for a postgresql:// URL, TCP or Unix-socket form.

    `postgresql://u:p@host:5432/db` and `postgresql://u:@/db?host=/run/pg&port=5433` both
    work. Socket host/port given as query parameters are moved into HOST/PORT so that every
    consumer (Django, raw psycopg LISTEN connections, test database creation) sees them.
    Raises ImproperlyConfigured for anything that is not PostgreSQL.
    """
    try:
        config = environ.Env.db_url_config(url)
    except Exception as exc:  # environ raises bare errors for unknown schemes
        raise ImproperlyConfigured(f"DATABASE_URL is not a valid URL: {exc}") from exc
    if config.get("ENGINE") != "django.db.backends.postgresql":
        raise ImproperlyConfigured(
            "DATABASE_URL must be a postgresql:// URL (Ordinaut needs PostgreSQL: its queue "
            f"uses SKIP LOCKED and LISTEN/NOTIFY), got scheme of {url.split(':', 1)[0]!r}"
        )
    options = dict(config.get("OPTIONS") or {})
    if "host" in options:
        config["HOST"] = options.pop("host")
    if "port" in options:
        config["PORT"] = str(options.pop("port"))
    if not config.get("NAME"):
        raise ImproperlyConfigured("DATABASE_URL must name a database, e.g. .../ordinaut")
    options.setdefault("connect_timeout", 5)
    # Django turns psycopg's prepared statements off (for PgBouncer's sake); the queue's hot
    # statements ask for it explicitly (tasks.queue), and nothing else is ever prepared.
    # DB_PREPARED_STATEMENTS=0 turns that off, for a pooler that cannot keep them.
    prepared = environ.Env().bool("DB_PREPARED_STATEMENTS", default=True)
    options.setdefault("prepare_threshold", PREPARE_ON_REQUEST_ONLY if prepared else None)
    options.setdefault("application_name", os.environ.get("ORDINAUT_PROCESS", "ordinaut"))
    config["OPTIONS"] = options
    config["CONN_MAX_AGE"] = int(os.environ.get("DB_CONN_MAX_AGE", "60"))
    # A dropped connection (database restart) is noticed and replaced, not raised.
    config["CONN_HEALTH_CHECKS"] = True
    return config


def raw_connection(alias: str = "default", *, autocommit: bool = True, **extra: Any):  # noqa: ANN201
    """Open a psycopg connection with Django's parameters, outside Django's management.

    For LISTEN/NOTIFY and other long-lived sessions; the caller closes it. Works for both
    DATABASE_URL forms because it reuses exactly what Django connects with.
    """
    import psycopg
    from django.db import connections

    params = connections[alias].get_connection_params()
    # A long-lived session must notice a peer that vanished without closing (a NAT or load
    # balancer dropping idle flows, a host gone): TCP keepalives, unless the URL sets them.
    for key, value in KEEPALIVES.items():
        params.setdefault(key, value)
    return psycopg.connect(**{**params, **extra}, autocommit=autocommit)


KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


def listener_name(channel: str) -> str:
    """The application_name of the session that LISTENs on `channel`."""
    return f"ordinaut listen {channel}"


class Listener:
    """A LISTEN session on its own autocommit connection, for one channel.

    The scheduler and the workers sleep on it. A broken connection (database restart)
    surfaces as psycopg.Error from `connect` or `wait`; `close` then drops it and the next
    `connect` starts afresh.
    """

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self._conn = None

    def connect(self) -> None:
        """LISTEN now (idempotent), so NOTIFYs sent from here on are kept for `wait`."""
        if self._conn is None or self._conn.closed:
            # Named, so an operator (or a test) finds the session in pg_stat_activity.
            self._conn = raw_connection(
                autocommit=True, application_name=listener_name(self.channel)
            )
            self._conn.execute(f"LISTEN {self.channel}")

    def wait(self, timeout: float) -> bool:
        """Block up to `timeout` seconds for a NOTIFY; True if one came (others are drained)."""
        return bool(self.payloads(timeout))

    def payloads(self, timeout: float) -> list[str]:
        """Block up to `timeout` seconds for a NOTIFY; return its payload and those of the
        others that arrived with it (one wake-up serves any number of them)."""
        self.connect()
        notes = self._conn.notifies(timeout=max(0.0, timeout), stop_after=1)
        found = [note.payload for note in notes]
        # Close the generator before anything else: it holds the connection's lock.
        notes.close()
        if found:
            # Drain what has already arrived without waiting for more: every millisecond
            # spent here is a millisecond added to the pickup of the work that woke us.
            found += [note.payload for note in self._conn.notifies(timeout=0)]
        return found

    def notify_self(self, payload: str) -> None:
        """NOTIFY our own channel from this session (it hears its own notifications)."""
        self.connect()
        self._conn.execute("SELECT pg_notify(%s, %s)", [self.channel, payload])

    def close(self) -> None:
        """Drop the connection (closing one whose server went away may itself fail)."""
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


class ModelColumns:
    """Every concrete column of a model, for hand-written SELECTs on the hottest read paths.

    The ORM compiles its SQL on every call; on a small machine that costs about a millisecond
    per query, more than PostgreSQL needs to answer it. A statement written once as a
    constant (`SELECT {cols} FROM ... WHERE id = %s`, with `sql(alias)` as the column list)
    and turned back into a model instance by `instance(row)` costs only the round trip, and
    the instance is what the ORM would have returned (same fields, same converters, `_state`
    marking it as loaded from the database).
    """

    def __init__(self, model: type, *, omit: tuple[str, ...] = ()) -> None:
        self.model = model
        # Fields left unread (a list that never shows them); instances have them deferred.
        self.omit = frozenset(omit)

    @functools.cached_property
    def fields(self) -> list[Any]:
        # Resolved on first use: model fields are complete only once the app registry is.
        return [f for f in self.model._meta.concrete_fields if f.name not in self.omit]

    @functools.cached_property
    def _attnames(self) -> list[str]:
        return [field.attname for field in self.fields]

    @functools.cached_property
    def _decoded(self) -> list[tuple[int, Any]]:
        # JSONField and friends decode in Python (Django loads jsonb as text).
        return [(i, f) for i, f in enumerate(self.fields) if hasattr(f, "from_db_value")]

    def sql(self, alias: str) -> str:
        """`alias."col1", alias."col2", ...` in field order."""
        return ", ".join(f'{alias}."{field.column}"' for field in self.fields)

    def _decode(self, values: Sequence[Any], using: str) -> list[Any]:
        from django.db import connections

        values = list(values)
        for index, field in self._decoded:
            if values[index] is not None:
                values[index] = field.from_db_value(values[index], None, connections[using])
        return values

    def instance(self, values: Sequence[Any], *, using: str = "default") -> Any:
        """A model instance from one row's values, in the order of `sql()`'s columns."""
        return self.model.from_db(using, self._attnames, self._decode(values, using))

    @functools.cached_property
    def _record_type(self) -> type:
        return collections.namedtuple(f"{self.model.__name__}Record", self._attnames)

    def record(self, values: Sequence[Any], *, using: str = "default") -> Any:
        """A read-only row with the instance's field values under the same attribute names.

        For list pages rendered straight to JSON: a model instance costs ~20 µs to build, a
        named tuple ~1 µs, and a page of 50 pays that 50 times. No model methods or
        properties: render only fields from it.
        """
        return self._record_type._make(self._decode(values, using))


TIMESTAMPTZ_OID = 1184


def use_fast_timestamptz_loader(sender: Any, connection: Any, **kwargs: Any) -> None:
    """connection_created receiver: parse timestamptz in psycopg's C loader, not in Python.

    Django registers its own timestamptz loader, a subclass of psycopg's pure-Python one
    (to attach its time zone), so with psycopg[binary] every timestamp is still parsed by a
    Python regex — about 11 µs each here, 3.5 µs in C: a few milliseconds per list page and
    a visible share of a worker's time. This loader gives exactly Django's result (parse,
    convert to the session time zone, then attach `connection.timezone`) with the C parser.
    Only for the UTC sessions Django opens with USE_TZ, where attaching is exact.
    """
    import psycopg
    from psycopg.adapt import Loader
    from psycopg.pq import Format

    if connection.vendor != "postgresql" or connection.timezone_name != "UTC":
        return
    parser = psycopg.adapters.get_loader(TIMESTAMPTZ_OID, Format.TEXT)
    if parser.__module__.startswith("psycopg.types"):
        return  # no C extension installed: Django's loader is as fast
    tz = connection.timezone

    class UtcTimestamptzLoader(Loader):
        timezone = tz  # Django's create_cursor compares this before overriding per cursor

        def __init__(self, oid: int, context: Any = None) -> None:
            super().__init__(oid, context)
            self._parse = parser(oid, context).load

        def load(self, data: Any) -> Any:
            return self._parse(data).replace(tzinfo=tz)

    connection.connection.adapters.register_loader(TIMESTAMPTZ_OID, UtcTimestamptzLoader)


def advisory_xact_lock(key: str) -> None:
    """Hold a PostgreSQL advisory lock on `key` until the current transaction ends.

    Serialises racing requests that would create the same row (dedupe keys, idempotency
    keys): the second waits, then sees what the first committed.
    """
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [key])
