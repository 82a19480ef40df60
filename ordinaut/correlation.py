"""The correlation id of the current request, run or command, carried in a context variable."""

from __future__ import annotations

import contextvars
import re
import uuid

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "correlation_id", default=None
)
# Accept callers' ids only when they are short and printable, so logs cannot be forged.
_VALID = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")


def new_correlation_id() -> str:
    """Return a fresh random id."""
    return uuid.uuid4().hex


def clean_correlation_id(value: str | None) -> str:
    """Return `value` when it is a safe id, else a fresh one."""
    if value and _VALID.match(value):
        return value
    return new_correlation_id()


def get_correlation_id() -> str | None:
    """The id bound to the current context, or None."""
    return _current.get()


def set_correlation_id(value: str | None) -> contextvars.Token:
    """Bind `value` to the current context; reset with the returned token."""
    return _current.set(value)


def reset_correlation_id(token: contextvars.Token) -> None:
    """Restore the id that was bound before `set_correlation_id`."""
    _current.reset(token)
