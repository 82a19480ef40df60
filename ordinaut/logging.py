"""JSON-lines logging with the correlation id on every record."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from ordinaut.correlation import get_correlation_id

# Attributes every LogRecord has; anything else was passed via `extra=` and is emitted.
STANDARD_ATTRIBUTES = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
}
# Django attaches the request object itself; its repr is noise in a log line.
_NOT_EMITTED = {"request", "server_time"}


class CorrelationIdFilter(logging.Filter):
    """Stamp each record with the current correlation id (unless one was given).

    Django logs a request's error response after the middleware has returned, so for
    records that carry the request, the id stored on the request wins.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "correlation_id", None):
            request = getattr(record, "request", None)
            record.correlation_id = getattr(request, "correlation_id", None) or (
                get_correlation_id()
            )
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, correlation id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "correlation_id": getattr(record, "correlation_id", None),
        }
        for key, value in vars(record).items():
            if key in _NOT_EMITTED or key in entry or key.startswith("_"):
                continue
            if key not in STANDARD_ATTRIBUTES:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            # Already rendered (and redacted) by a filter.
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str, ensure_ascii=False)


def log_to_stderr() -> None:
    """Point every console handler at stderr, for commands whose stdout is their result."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)
