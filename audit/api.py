"""GET /audit: the audit log for agents holding `admin`."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.permissions import HasScope
from agents.throttles import AgentRateThrottle
from audit.models import AuditEvent
from audit.selectors import audit_event_list
from ordinaut import scopes
from ordinaut.api import PageQuerySerializer, PageSerializer, iso, page, parse_query


class AuditQuerySerializer(PageQuerySerializer):
    action = serializers.CharField(required=False, max_length=100)
    actor_id = serializers.CharField(required=False, max_length=64)
    subject_type = serializers.CharField(required=False, max_length=50)
    subject_id = serializers.CharField(required=False, max_length=64)
    correlation_id = serializers.CharField(required=False, max_length=64)
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)


class AuditEventSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    at = serializers.DateTimeField()
    actor_type = serializers.CharField()
    actor_id = serializers.CharField()
    actor_name = serializers.CharField()
    action = serializers.CharField()
    subject_type = serializers.CharField()
    subject_id = serializers.CharField()
    details = serializers.DictField()
    correlation_id = serializers.CharField()
    prev_hash = serializers.CharField(help_text="The hash of the event before (chain link).")
    hash = serializers.CharField(help_text="SHA-256 over prev_hash and this event's fields.")


class AuditListSerializer(PageSerializer):
    items = AuditEventSerializer(many=True)


def audit_event_data(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": iso(event.at),
        "actor_type": event.actor_type,
        "actor_id": event.actor_id,
        "actor_name": event.actor_name,
        "action": event.action,
        "subject_type": event.subject_type,
        "subject_id": event.subject_id,
        "details": event.details,
        "correlation_id": event.correlation_id,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


class AuditListApi(APIView):
    permission_classes = [HasScope]
    required_scope = scopes.ADMIN
    throttle_classes = [AgentRateThrottle]
    throttle_scope = "reads"

    @extend_schema(
        operation_id="audit_list",
        parameters=[AuditQuerySerializer],
        responses=AuditListSerializer,
        description="Audit events, newest first (admin only).",
    )
    def get(self, request: Request) -> Response:
        query = parse_query(AuditQuerySerializer, request)
        limit, offset = query.pop("limit"), query.pop("offset")
        events = audit_event_list(**query)
        return Response(page(events, limit=limit, offset=offset, render=audit_event_data))
