"""Request context carried in context variables: the correlation id and the client address."""

from __future__ import annotations

import contextvars
import re
import uuid

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "correlation_id", default=None
)
# The address of the client behind the current request (None outside requests).
_client_ip: contextvars.ContextVar[str | None] = contextvars.ContextVar("client_ip", default=None)
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


def get_client_ip() -> str | None:
    """The current request's client address, or None outside a request."""
    return _client_ip.get()


def set_client_ip(value: str | None) -> contextvars.Token:
    """Bind the client address; reset with the returned token."""
    return _client_ip.set(value)


def reset_client_ip(token: contextvars.Token) -> None:
    """Restore the address bound before `set_client_ip`."""
    _client_ip.reset(token)
