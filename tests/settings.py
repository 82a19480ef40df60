"""Settings for the test session: real PostgreSQL and Redis, started here, once.

pytest-django imports this module before anything touches the database, so this is where
the session's servers start (on free loopback ports, in a temporary directory). The rest
is the production settings module, with DEBUG off, as CI and operators run it.
"""

import os
import tempfile
from pathlib import Path

from ordinaut.embedded import EmbeddedPostgres, EmbeddedRedis, free_port

TEST_ROOT = Path(tempfile.mkdtemp(prefix="ordinaut-test-"))
POSTGRES = EmbeddedPostgres(TEST_ROOT / "postgres", port=free_port(), fast=True)
REDIS = EmbeddedRedis(TEST_ROOT / "redis", port=free_port())
POSTGRES.start()
REDIS.start()

os.environ.update(
    {
        "ORDINAUT_ENV_FILE": "",  # a developer's .env must not leak into tests
        "DEBUG": "0",
        "SECRET_KEY": "test-secret-key-" + "x" * 48,
        "DATABASE_URL": POSTGRES.tcp_url("ordinaut"),
        "REDIS_URL": REDIS.url(),
        "ORDINAUT_VAR_DIR": str(TEST_ROOT / "var"),
    }
)

from ordinaut.settings import *  # noqa: E402, F403
from ordinaut.settings import DATABASES  # noqa: E402

# Django's test flush truncates every table; the audit trigger allows that only when this
# setting is on, and only the test database's connections turn it on.
DATABASES["default"]["OPTIONS"]["options"] = "-c ordinaut.audit_truncate=on"
# Test transactions never commit, so they never NOTIFY: the per-process credential cache
# would keep serving what a test just revoked. tests/test_auth_cache.py turns it on with
# committed changes to check exactly that path.
AUTH_CACHE_SECONDS = 0
# A fast hasher keeps credential-heavy tests quick; production uses Django's default, which
# stays listed so hashes written by child processes (production settings) still verify.
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.MD5PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
