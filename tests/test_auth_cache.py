"""The per-process credential cache: answers from memory, forgets on every committed change.

These tests commit (transactional database), because only a committed change sends the
NOTIFY that invalidates the cache; a gunicorn process checks the same across processes.
"""

from __future__ import annotations

import http.client
import subprocess
import sys
import tempfile

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.exceptions import AuthenticationFailed

from agents.auth_cache import CHANNEL, AuthCache, auth_cache
from agents.authentication import authenticate_token
from agents.models import Credential
from agents.services import (
    agent_create,
    agent_deactivate,
    credential_issue_api_key,
    credential_revoke,
    token_exchange,
    token_revoke,
)
from audit.services import Actor
from ordinaut.database import listener_name, raw_connection
from ordinaut.embedded import free_port
from tests.conftest import ROOT, command_env, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

ACTOR = Actor.system("test")
# Generous deadlines for events that take milliseconds; a test only waits when it fails.
DEADLINE = 10.0


def eventually(predicate, what: str) -> None:
    wait_for(predicate, DEADLINE, f"not within {DEADLINE}s: {what}")


def refused(token: str) -> bool:
    try:
        authenticate_token(token)
    except AuthenticationFailed:
        return True
    return False


@pytest.fixture
def cache_on(settings):
    settings.AUTH_CACHE_SECONDS = 30
    yield auth_cache
    auth_cache.stop()


@pytest.fixture
def api_key():
    agent, _ = agent_create(name="cached", scopes=["tasks:read"], actor=ACTOR)
    _, key = credential_issue_api_key(agent=agent, actor=ACTOR)
    return agent, key


def warm(token: str) -> None:
    """Authenticate until the answer comes from the cache (the listener must be up first)."""
    authenticate_token(token)
    eventually(lambda: auth_cache.listening, "the invalidation listener is up")
    authenticate_token(token)


def test_cached_credential_is_checked_without_a_query(cache_on, api_key):
    agent, key = api_key
    warm(key)
    with CaptureQueriesContext(connection) as queries:
        found, grant = authenticate_token(key)
    assert len(queries) == 0
    assert found.pk == agent.pk
    assert grant.scopes == frozenset({"tasks:read"})


def test_requests_get_their_own_agent_instances(cache_on, api_key):
    _, key = api_key
    warm(key)
    first, _ = authenticate_token(key)
    first.name = "changed in one request"
    second, _ = authenticate_token(key)
    assert second is not first
    assert second.name == "cached"


def test_revoked_api_key_is_refused_once_the_revocation_commits(cache_on, api_key):
    agent, key = api_key
    warm(key)
    key_id = Credential.objects.get(agent=agent, kind="api_key").key_id
    credential_revoke(agent=agent, key_id=key_id, actor=ACTOR)
    eventually(lambda: refused(key), "the revoked key is refused")


def test_deactivated_agent_is_refused_once_the_change_commits(cache_on, api_key):
    agent, key = api_key
    warm(key)
    agent_deactivate(agent_id=agent.pk, actor=ACTOR)
    eventually(lambda: refused(key), "the inactive agent's key is refused")


def test_revoked_jwt_is_refused_once_the_revocation_commits(cache_on):
    agent, secret = agent_create(name="jwt", scopes=["tasks:read"], actor=ACTOR)
    _, pair = token_exchange(agent_id=str(agent.pk), agent_secret=secret)
    warm(pair.access)
    assert token_revoke(token=pair.access)
    eventually(lambda: refused(pair.access), "the revoked access token is refused")


def test_without_the_listener_every_request_reads_the_database(cache_on, api_key):
    _, key = api_key
    warm(key)
    with raw_connection() as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            [listener_name(CHANNEL)],
        )
    eventually(lambda: not auth_cache.listening, "the cache notices its listener is gone")
    with CaptureQueriesContext(connection) as queries:
        authenticate_token(key)
    assert len(queries) == 1
    # It reconnects by itself, and starts from an empty cache.
    eventually(lambda: auth_cache.listening, "the listener reconnects")
    with CaptureQueriesContext(connection) as queries:
        authenticate_token(key)
    assert len(queries) == 1


def test_a_lookup_racing_an_invalidation_is_not_stored(cache_on):
    cache = AuthCache()
    calls = []

    def load_while_invalidated():
        calls.append("raced")
        cache.invalidate()
        return ("row",)

    try:
        cache.lookup("warm-up", lambda: None)
        eventually(lambda: cache.listening, "the listener is up")
        assert cache.lookup("key", load_while_invalidated) == ("row",)
        assert cache.lookup("key", lambda: calls.append("reloaded") or ("row",)) == ("row",)
        assert cache.lookup("key", lambda: calls.append("not cached") or ("row",)) == ("row",)
        assert calls == ["raced", "reloaded"]
    finally:
        cache.stop()


def test_unknown_keys_are_not_cached(cache_on):
    cache = AuthCache()
    try:
        cache.lookup("warm-up", lambda: None)
        eventually(lambda: cache.listening, "the listener is up")
        loads = []
        for _ in range(2):
            cache.lookup("missing", lambda: loads.append(1))
        assert len(loads) == 2
    finally:
        cache.stop()


def test_only_changes_that_decide_authentication_notify(api_key):
    agent, _ = api_key
    credentials = Credential.objects.filter(agent=agent)
    with raw_connection() as listener:
        listener.execute(f"LISTEN {CHANNEL}")

        def notified() -> bool:
            return next(listener.notifies(timeout=0.5, stop_after=1), None) is not None

        credentials.update(last_used_at="2026-01-01T00:00:00Z")
        assert not notified()
        credentials.update(label="renamed")
        assert not notified()
        credentials.update(expires_at="2030-01-01T00:00:00Z")
        assert notified()


def test_another_process_refuses_a_key_revoked_here(api_key, test_database_url):
    """gunicorn runs with the cache on (production settings); a revocation here reaches it."""
    agent, key = api_key
    port = free_port()
    env = command_env(
        DEBUG="0",
        SECRET_KEY="test-secret-key-" + "x" * 48,
        DATABASE_URL=test_database_url,
        REDIS_URL="",
        LOG_LEVEL="WARNING",
    )
    with tempfile.TemporaryFile() as output:
        web = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "ordinaut.wsgi", "-b", f"127.0.0.1:{port}",
             "--workers", "1", "--threads", "2"],
            env=env, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:

            def status() -> int:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                try:
                    conn.request("GET", "/tasks", headers={"Authorization": f"Bearer {key}"})
                    return conn.getresponse().status
                except OSError:
                    return 0
                finally:
                    conn.close()

            eventually(lambda: status() == 200, "gunicorn answers")
            with raw_connection() as admin:
                eventually(
                    lambda: (
                        admin.execute(
                            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                            [listener_name(CHANNEL)],
                        ).fetchone()[0]
                        > 0
                    ),
                    "gunicorn's cache listens",
                )
            assert status() == 200  # now answered from its cache
            key_id = Credential.objects.get(agent=agent, kind="api_key").key_id
            credential_revoke(agent=agent, key_id=key_id, actor=ACTOR)
            eventually(lambda: status() == 401, "gunicorn refuses the revoked key")
        finally:
            web.terminate()
            web.wait(timeout=30)
            output.seek(0)
            log = output.read().decode(errors="replace")
        assert "Traceback" not in log, log
