"""Secrets that templates reference as `${secrets.NAME}`, and their redaction.

A secret comes from the `PIPELINE_SECRETS` setting (a dict) or from the environment
variable `ORDINAUT_SECRET_<NAME>`. Secret values are never stored: whatever a run records
(step input, output, errors, the run's output) passes through `redact` first.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from django.conf import settings

ENV_PREFIX = "ORDINAUT_SECRET_"
REDACTED = "[redacted]"


def get_secret(name: str) -> str | None:
    """The secret called `name`, or None when neither the setting nor the environment has it."""
    configured = settings.PIPELINE_SECRETS
    if name in configured:
        return str(configured[name])
    return os.environ.get(f"{ENV_PREFIX}{name}") or os.environ.get(f"{ENV_PREFIX}{name.upper()}")


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
