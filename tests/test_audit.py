"""The audit log is append-only in PostgreSQL itself, whatever the caller."""

import pytest
from django.db import DatabaseError, connection, transaction
from django.http import HttpResponse
from django.test import RequestFactory

import audit
from audit.models import AuditEvent, AuditLogIsAppendOnly
from audit.services import Actor
from ordinaut.correlation import reset_correlation_id, set_correlation_id
from ordinaut.middleware import CorrelationIdMiddleware
from tests.factories import make_agent

pytestmark = pytest.mark.django_db


@pytest.fixture
def event():
    return audit.record(
        actor=Actor.system("tests"),
        action="thing.done",
        subject_type="thing",
        subject_id="42",
        details={"a": 1},
    )


def assert_unchanged(event):
    fresh = AuditEvent.objects.get(pk=event.pk)
    assert (fresh.action, fresh.details, fresh.subject_id) == ("thing.done", {"a": 1}, "42")


def test_record_writes_actor_subject_details_and_correlation_id():
    agent, _ = make_agent()
    token = set_correlation_id("req-123")
    try:
        event = audit.record(actor=Actor.agent(agent), action="task.created", subject=agent)
    finally:
        reset_correlation_id(token)
    stored = AuditEvent.objects.get(pk=event.pk)
    assert (stored.actor_type, stored.actor_id, stored.actor_name) == (
        "agent",
        str(agent.id),
        agent.name,
    )
    assert (stored.subject_type, stored.subject_id) == ("agent", str(agent.id))
    assert stored.correlation_id == "req-123"


def test_raw_sql_update_is_refused_and_row_unchanged(event):
    update = "UPDATE audit_auditevent SET action = 'forged' WHERE id = %s"
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(update, [event.pk])
    assert_unchanged(event)


def test_raw_sql_delete_is_refused_and_row_kept(event):
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("DELETE FROM audit_auditevent WHERE id = %s", [event.pk])
    assert_unchanged(event)


def test_queryset_update_and_delete_are_refused(event):
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(action="forged")
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).delete()
    assert_unchanged(event)


def test_model_save_and_delete_are_refused_in_python(event):
    event.action = "forged"
    with pytest.raises(AuditLogIsAppendOnly):
        event.save()
    with pytest.raises(AuditLogIsAppendOnly):
        event.delete()
    assert_unchanged(event)


def test_truncate_is_refused_outside_the_test_flush(event):
    # Only the test database's sessions turn the flush escape hatch on; switch it off here.
    with (  # noqa: PT012 (the SET must share the TRUNCATE's transaction)
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("SET LOCAL ordinaut.audit_truncate = 'off'")
        cursor.execute("TRUNCATE audit_auditevent")
    assert_unchanged(event)


def test_changes_over_http_record_the_client_address():
    seen = {}

    def view(request):
        seen["event"] = audit.record(actor=Actor.system("tests"), action="thing.viaweb")
        return HttpResponse("ok")

    request = RequestFactory().get("/", REMOTE_ADDR="203.0.113.7")
    CorrelationIdMiddleware(view)(request)
    assert AuditEvent.objects.get(pk=seen["event"].pk).details["ip"] == "203.0.113.7"
    outside = audit.record(actor=Actor.system("tests"), action="thing.offline")
    assert "ip" not in AuditEvent.objects.get(pk=outside.pk).details
