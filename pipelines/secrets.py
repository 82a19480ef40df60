"""Secrets that templates reference as `${secrets.NAME}`, and their redaction.

A secret comes from the `PIPELINE_SECRETS` setting (a dict) or from the environment
variable `ORDINAUT_SECRET_<NAME>`. Secret values are never stored: whatever a run records
(step input, output, errors, the run's output) passes through `redact` first, and every
log line passes through `RedactSecretsFilter` (configured on the console handler).

Using one needs a scope: `${secrets.NAME}` is allowed for an agent holding
`secrets:<name in lowercase>` or `secrets:*` (ordinaut.scopes.grants_secret), checked when
a task is saved and again when the step renders.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from ordinaut.logging import STANDARD_ATTRIBUTES

ENV_PREFIX = "ORDINAUT_SECRET_"
REDACTED = "[redacted]"
# A shorter value cannot be redacted safely: it would also hide ordinary words and numbers
# in every log line and output, and would be easy to recognise around the redactions.
MIN_SECRET_LENGTH = 8


def get_secret(name: str) -> str | None:
    """The secret called `name`, or None when neither the setting nor the environment has it."""
    configured = settings.PIPELINE_SECRETS
    if name in configured:
        return str(configured[name])
    return os.environ.get(f"{ENV_PREFIX}{name}") or os.environ.get(f"{ENV_PREFIX}{name.upper()}")


def configured_secrets() -> dict[str, str]:
    """Every secret this process can resolve, by name (the setting wins over the environment)."""
    found = {
        key[len(ENV_PREFIX) :]: value
        for key, value in os.environ.items()
        if key.startswith(ENV_PREFIX) and value
    }
    found.update({str(name): str(value) for name, value in settings.PIPELINE_SECRETS.items()})
    return found


def check_secrets() -> None:
    """Refuse to start with a secret too short to redact; raise ImproperlyConfigured."""
    secrets = configured_secrets()
    short = sorted(name for name, value in secrets.items() if len(value) < MIN_SECRET_LENGTH)
    if short:
        raise ImproperlyConfigured(
            f"pipeline secrets shorter than {MIN_SECRET_LENGTH} characters cannot be redacted "
            f"safely: {', '.join(short)} (PIPELINE_SECRETS / {ENV_PREFIX}<NAME>)"
        )


class RedactSecretsFilter(logging.Filter):
    """Replace every configured secret value in a log record by `[redacted]`.

    The message is rendered and redacted here (its arguments dropped), as are string
    `extra=` fields and the exception text, so no formatter can print a secret a tool or
    a library happened to log.
    """

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self._needles: list[str] | None = None
        self._source: object = None

    def needles(self) -> list[str]:
        configured = settings.PIPELINE_SECRETS
        if self._needles is None or configured is not self._source:
            # Read once: settings and the environment are fixed for the process's life
            # (read again when the setting is replaced, as a test's override does).
            self._source = configured
            values = {value for value in configured_secrets().values() if value}
            self._needles = sorted(values, key=len, reverse=True)
        return self._needles

    def filter(self, record: logging.LogRecord) -> bool:
        needles = self.needles()
        if not needles:
            return True
        record.msg = _redact(record.getMessage(), needles)
        record.args = None
        for key, value in list(vars(record).items()):
            # `extra=` fields (not the LogRecord's own) are redacted like the message.
            if key not in STANDARD_ATTRIBUTES and not key.startswith("_"):
                setattr(record, key, _redact(value, needles))
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = _redact(text, needles)
        return True


def redact(value: Any, secrets: Iterable[str]) -> Any:
    """`value` with every occurrence of each secret replaced by `[redacted]` (a deep copy)."""
    # Longest first, so a secret that contains another is replaced whole.
    needles = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
    if not needles:
        return value
    return _redact(value, needles)


def _redact(value: Any, needles: list[str]) -> Any:
    if isinstance(value, str):
        for needle in needles:
            if needle in value:
                value = value.replace(needle, REDACTED)
        return value
    if isinstance(value, dict):
        return {_redact(k, needles): _redact(v, needles) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(item, needles) for item in value]
    return value
