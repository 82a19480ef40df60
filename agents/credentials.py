"""Credential tokens: how they look, how they are hashed, how they are checked.

An agent secret looks like `ord_s_<key_id>_<random>`: the key id (public) finds the row,
the whole token is checked against the stored hash. Only hashes are stored.

An API key looks like `ord_k_<key_id>_<random>` and is sent as the Bearer token on every
request, so it is hashed with HMAC-SHA256 under a server-side key (API_KEY_HMAC_SECRET), not
with the deliberately slow password hasher: 256 random bits need no stretching, and a check
must cost microseconds. A leaked database alone cannot be used to forge or test keys.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.hashers import check_password, make_password

SECRET_PREFIX = "ord_s_"  # noqa: S105 (a prefix, not a secret)
API_KEY_PREFIX = "ord_k_"
# Stored API key hashes carry their scheme so a future change of algorithm can coexist.
_API_KEY_SCHEME = "hmac_sha256$"
_NO_API_KEY = _API_KEY_SCHEME + "0" * 64  # never an HMAC's output in practice


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


def parse_key_id(token: str, prefix: str = SECRET_PREFIX) -> str | None:
    """The key id inside a secret (or, with API_KEY_PREFIX, an API key), or None."""
    if not isinstance(token, str) or not token.startswith(prefix):
        return None
    key_id, _, rest = token[len(prefix) :].partition("_")
    if len(key_id) != 16 or not rest:
        return None
    return key_id


def verify_secret(token: str, stored_hash: str | None) -> bool:
    """Constant-time check of a presented secret against its stored hash.

    With no stored hash (an unknown key id) the secret is checked against a dummy one all
    the same and refused: the slow hash costs the same either way, so the answer's timing
    does not tell which key ids exist.
    """
    if stored_hash is None:
        check_password(token, _dummy_hash())
        return False
    return check_password(token, stored_hash)


@functools.cache
def _dummy_hash() -> str:
    # Made with the current default hasher, so it costs what a real secret's check does.
    return make_password(secrets.token_urlsafe(32))


def issue_api_key() -> IssuedSecret:
    """Generate an API key (256 bits of randomness) and its keyed hash."""
    key_id = secrets.token_hex(8)
    token = f"{API_KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return IssuedSecret(key_id=key_id, token=token, hash=hash_api_key(token))


def hash_api_key(token: str) -> str:
    """The stored form of an API key: HMAC-SHA256 under settings.API_KEY_HMAC_SECRET."""
    key = settings.API_KEY_HMAC_SECRET.encode()
    digest = hmac.new(key, token.encode(), hashlib.sha256).hexdigest()
    return f"{_API_KEY_SCHEME}{digest}"


def verify_api_key(token: str, stored_hash: str | None) -> bool:
    """Constant-time check of a presented API key against its stored keyed hash (an unknown
    key id, None, is hashed and compared all the same, and refused)."""
    matches = hmac.compare_digest(hash_api_key(token), stored_hash or _NO_API_KEY)
    return matches and stored_hash is not None


# -- webhook signing keys ---------------------------------------------------------------------

WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
_WEBHOOK_LABEL = b"ordinaut.webhooks.agent.v1"


def new_webhook_key_id() -> str:
    """A fresh public id for an agent's webhook signing key (rotation makes a new one)."""
    return secrets.token_hex(8)


def webhook_secret(agent_id: object, key_id: str) -> str:
    """The signing secret of an agent's webhook key.

    Derived from SECRET_KEY, the agent and the key id, never stored: the database holds only
    the public key id, so reading it does not let anyone sign as Ordinaut. A new key id
    (rotation) gives a new, unrelated secret; rotating SECRET_KEY changes every one.
    """
    message = _WEBHOOK_LABEL + f"|{agent_id}|{key_id}".encode()
    mac = hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256)
    return WEBHOOK_SECRET_PREFIX + mac.hexdigest()
