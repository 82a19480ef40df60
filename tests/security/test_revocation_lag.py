"""Revocation that cannot lag: the revoking process drops its own cache on commit, and a
LISTEN session that stops answering its own heartbeat turns the cache off."""

from __future__ import annotations

import os
import signal

import pytest
from django.db import connection
from django.test import TestCase
from django.test.utils import CaptureQueriesContext

from agents.auth_cache import auth_cache
from agents.services import credential_revoke
from ordinaut.database import listener_name, raw_connection
from tests.test_auth_cache import ACTOR, api_key, cache_on, eventually, refused, warm  # noqa: F401


@pytest.mark.django_db
def test_the_revoking_process_drops_its_cache_on_commit(cache_on, api_key):  # noqa: F811
    """Inside a test transaction nothing commits, so no NOTIFY can arrive: only the
    on-commit invalidation of the revoking process can drop the cached credential."""
    agent, key = api_key
    warm(key)
    credential = agent.credentials.get(kind="api_key")
    with TestCase.captureOnCommitCallbacks(execute=False) as callbacks:
        credential_revoke(agent=agent, key_id=credential.key_id, actor=ACTOR)
    assert not refused(key)  # still cached: the change has not committed yet
    for callback in callbacks:
        callback()  # the commit
    assert refused(key)


def listener_pid() -> int:
    with raw_connection() as admin:
        row = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
            [listener_name("ordinaut_auth")],
        ).fetchone()
    assert row is not None, "no auth-cache listener session"
    return row[0]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_listen_session_that_stops_answering_turns_the_cache_off(cache_on, api_key):  # noqa: F811
    """The listener's backend is frozen (SIGSTOP): its TCP connection stays up, nothing
    errors, NOTIFYs are no longer delivered. The missing heartbeat must turn caching off."""
    _, key = api_key
    warm(key)
    pid = listener_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        eventually(lambda: not auth_cache.listening, "the cache notices the silent listener")
        with CaptureQueriesContext(connection) as queries:
            authenticate_token_or_refuse(key)
        assert len(queries) == 1  # from the database, not the cache
    finally:
        os.kill(pid, signal.SIGCONT)
    eventually(lambda: auth_cache.listening, "the cache is back once heartbeats are")


def authenticate_token_or_refuse(key: str) -> None:
    from agents.authentication import authenticate_token

    authenticate_token(key)
