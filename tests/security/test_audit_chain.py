"""A tamper-evident audit log: each event hashes the one before it; verifyaudit finds the
first event changed or removed behind the app's back; the truncate escape hatch works only
in a test database."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import uuid

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections

from audit import record
from audit.models import AuditEvent
from audit.services import Actor
from tests.conftest import command_env, run_manage

pytestmark = pytest.mark.django_db

ACTOR = Actor.system("tests")


def verify() -> str:
    out = io.StringIO()
    call_command("verifyaudit", stdout=out, stderr=io.StringIO())
    return out.getvalue()


def as_owner(sql: str, params: list | None = None) -> None:
    """What someone holding the table owner's credentials could do, trigger switched off."""
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_append_only")
        cursor.execute(sql, params or [])
        cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_append_only")


def events(n: int) -> list[AuditEvent]:
    made = [record(actor=ACTOR, action="thing.done", details={"n": i}) for i in range(n)]
    return list(AuditEvent.objects.filter(pk__in=[e.pk for e in made]).order_by("id"))


def test_each_event_links_to_the_one_before_and_the_chain_verifies():
    first, second, third = events(3)
    assert second.prev_hash == first.hash
    assert third.prev_hash == second.hash
    assert len(third.hash) == 64
    total = AuditEvent.objects.count()
    assert verify().strip() == f"audit chain intact: {total} events"


def test_the_hash_is_sha256_over_the_link_and_the_canonical_row():
    """Anyone can recompute it: the documented recipe, from the row as JSON."""
    (event,) = events(1)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT jsonb_build_object('id', e.id, 'at', to_char(e.at AT TIME ZONE 'UTC',"
            " 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), 'actor_type', e.actor_type, 'actor_id',"
            " e.actor_id, 'actor_name', e.actor_name, 'action', e.action, 'subject_type',"
            " e.subject_type, 'subject_id', e.subject_id, 'details', e.details,"
            " 'correlation_id', e.correlation_id)::text FROM audit_auditevent e WHERE id = %s",
            [event.pk],
        )
        (canonical,) = cursor.fetchone()
    assert json.loads(canonical)["details"] == {"n": 0}
    expected = hashlib.sha256(f"{event.prev_hash}|{canonical}".encode()).hexdigest()
    assert event.hash == expected


def test_a_changed_event_is_named():
    _, forged, _ = events(3)
    as_owner("UPDATE audit_auditevent SET details = '{\"n\": 99}' WHERE id = %s", [forged.pk])
    with pytest.raises(CommandError, match=f"event {forged.pk}: its hash does not match"):
        verify()


def test_a_removed_event_is_named_by_the_one_after_it():
    _, removed, after = events(3)
    as_owner("DELETE FROM audit_auditevent WHERE id = %s", [removed.pk])
    with pytest.raises(CommandError, match=f"event {after.pk}: its prev_hash does not match"):
        verify()


@pytest.mark.django_db(transaction=True)
def test_the_command_exits_non_zero_naming_the_event(test_database_url):
    _, forged = events(2)
    as_owner("UPDATE audit_auditevent SET actor_name = 'someone else' WHERE id = %s", [forged.pk])
    env = command_env(DEBUG="0", DATABASE_URL=test_database_url, SECRET_KEY="x" * 60)
    done = run_manage("verifyaudit", env=env)
    assert done.returncode != 0
    assert f"audit chain broken at event {forged.pk}" in done.stderr


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_never_fork_the_chain():
    def writer(n: int) -> None:
        try:
            for i in range(20):
                record(actor=ACTOR, action="thing.parallel", details={"writer": n, "i": i})
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert AuditEvent.objects.filter(action="thing.parallel").count() == 80
    hashes = list(AuditEvent.objects.order_by("id").values_list("prev_hash", "hash"))
    assert all(prev == hashes[i - 1][1] for i, (prev, _) in enumerate(hashes) if i)
    assert "intact: " in verify()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_truncate_escape_hatch_is_ignored_outside_a_test_database(test_database_url):
    """A production-named database, migrated for real: SET ordinaut.audit_truncate does not
    let anyone TRUNCATE its audit log."""
    import psycopg

    name = f"hatch_{uuid.uuid4().hex[:8]}"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    url = test_database_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        done = run_manage(
            "migrate", "--no-input", env=command_env(DEBUG="0", DATABASE_URL=url,
                                                     SECRET_KEY="x" * 60),
            timeout=180,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET ordinaut.audit_truncate = 'on'")
            with pytest.raises(psycopg.Error, match="append-only"):
                conn.execute("TRUNCATE audit_auditevent")
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_admin_agents_read_the_audit_log_over_mcp_and_others_cannot():
    from asgiref.sync import async_to_sync
    from mcp import Client

    from agents.mcp_server import build_server
    from tests.api_support import agent_with_key

    _, admin_key = agent_with_key(["admin"])
    _, reader_key = agent_with_key(["tasks:read"])
    (event,) = events(1)

    def call(key: str):
        async def scenario():
            async with Client(build_server(stdio_token=key)) as client:
                return await client.call_tool("list_audit", {"action": "thing.done"})

        return async_to_sync(scenario)()

    listed = call(admin_key)
    assert not listed.is_error, listed.content
    [item] = listed.structured_content["items"]
    assert (item["id"], item["hash"]) == (event.pk, event.hash)
    refused = call(reader_key)
    assert refused.is_error
    assert "403" in refused.content[0].text
