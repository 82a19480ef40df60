"""Credential tokens: how they look, how they are hashed, how they are checked.

An agent secret looks like `ord_s_<key_id>_<random>`: the key id (public) finds the row,
the whole token is checked against the stored hash. Only hashes are stored.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.contrib.auth.hashers import check_password, make_password

SECRET_PREFIX = "ord_s_"  # noqa: S105 (a prefix, not a secret)


@dataclass(frozen=True)
class IssuedSecret:
    """A freshly generated secret: `token` is shown once, `key_id`/`hash` are stored."""

    key_id: str
    token: str
    hash: str


def issue_secret() -> IssuedSecret:
    """Generate an agent secret (256 bits of randomness) and its password hash."""
    key_id = secrets.token_hex(8)
    token = f"{SECRET_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return IssuedSecret(key_id=key_id, token=token, hash=make_password(token))


def parse_key_id(token: str) -> str | None:
    """The key id inside a secret token, or None when the token is not one of ours."""
    if not token.startswith(SECRET_PREFIX):
        return None
    key_id, _, rest = token[len(SECRET_PREFIX) :].partition("_")
    if len(key_id) != 16 or not rest:
        return None
    return key_id


def verify_secret(token: str, stored_hash: str) -> bool:
    """Constant-time check of a presented secret against its stored hash."""
    return check_password(token, stored_hash)
