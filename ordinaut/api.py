"""Shared REST plumbing: the body-size-limited JSON parser, strict serializers, list envelopes.

The envelopes are the original project's: lists are `{items, total, limit, offset, has_more}`
and actions answer `{success, message, details}`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from django.db.models import QuerySet
from rest_framework import exceptions, serializers
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import JSONParser
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


class JSONBodyParser(JSONParser):
    """JSON parser whose failures are all 4xx.

    Bodies over DATA_UPLOAD_MAX_MEMORY_SIZE never get here: DRF reads request.body, where
    Django refuses them from Content-Length before reading (413, see ordinaut.errors).
    """

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            # json.loads recurses per nesting level; "[[[[..." must be a 400, not a 500.
            raise exceptions.ParseError("JSON parse error - nested too deeply") from exc


class JSONFirstNegotiation(DefaultContentNegotiation):
    """DRF's negotiation, minus its media-type parsing for what every agent sends.

    No Accept header, `*/*` or the first renderer's own type select the first renderer —
    DRF's own answer for them — without parsing and ranking media types on each request;
    anything else (including a type no renderer offers: 406) goes through DRF unchanged.
    """

    def select_renderer(
        self, request: Request, renderers: list[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        accept = request.META.get("HTTP_ACCEPT", "")
        first = renderers[0]
        if (
            accept in ("", "*/*", first.media_type)
            and not format_suffix
            and self.settings.URL_FORMAT_OVERRIDE not in request.query_params
        ):
            return first, first.media_type
        return super().select_renderer(request, renderers, format_suffix)


class StrictSerializer(serializers.Serializer):
    """Unknown fields are refused with 422, naming each of them."""

    # The docstring above is what OpenAPI shows for every request body without its own.
    # Why strict: a silently ignored misspelt field (`schedule_exp`) is a bug the client
    # would never see.

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {name: ["unknown field"] for name in unknown}, code="unknown_field"
                )
        return super().to_internal_value(data)


class PageQuerySerializer(serializers.Serializer):
    """`limit` 1..200 (default 50) and `offset` >= 0, as in the original.

    Query strings are not strict: proxies and clients add cache-busting parameters.
    """

    limit = serializers.IntegerField(min_value=1, max_value=MAX_LIMIT, default=DEFAULT_LIMIT)
    offset = serializers.IntegerField(min_value=0, max_value=10**9, default=0)


# The original's list envelope as `page()` builds it; each list's subclass declares `items`.
# The docstring is the OpenAPI description every list inherits, so it speaks to API users.
class PageSerializer(serializers.Serializer):
    """One page of a list: `items`, the `total` that match, the `limit` and `offset` asked
    for, and `has_more` when later pages follow."""

    total = serializers.IntegerField()
    limit = serializers.IntegerField()
    offset = serializers.IntegerField()
    has_more = serializers.BooleanField()


def parse_query(serializer_class: type[serializers.Serializer], request: Any) -> dict[str, Any]:
    """Validate query parameters with `serializer_class`; raise a 422 naming the bad ones."""
    serializer = serializer_class(data=request.query_params.dict())
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def validated(serializer_class: type[serializers.Serializer], data: Any) -> dict[str, Any]:
    """Validate a request object (a REST body or MCP tool arguments); 422 naming bad fields."""
    if not isinstance(data, dict):
        raise serializers.ValidationError({"non_field_errors": ["body must be a JSON object"]})
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def parse_body(serializer_class: type[serializers.Serializer], request: Any) -> dict[str, Any]:
    """Validate the JSON body, which must be an object; raise a 422 naming the bad fields."""
    return validated(serializer_class, request.data)


def reject_nul(value: Any, path: str) -> None:
    """Raise a 422 when a JSON value holds U+0000, which PostgreSQL cannot store in jsonb."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise serializers.ValidationError({where: ["must not contain NUL characters"]})
        elif isinstance(item, dict):
            for key, child in item.items():
                if "\x00" in key:
                    raise serializers.ValidationError({where: ["must not contain NUL characters"]})
                stack.append((child, f"{where}.{key}"))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{index}]") for index, child in enumerate(item))


def iso(value: datetime | None) -> str | None:
    """An instant as ISO 8601 in UTC (one form whatever zone the value was computed in)."""
    return value.astimezone(UTC).isoformat() if value is not None else None


def page(
    queryset: QuerySet,
    *,
    limit: int,
    offset: int,
    render: Callable[[Any], dict[str, Any]],
) -> dict[str, Any]:
    """One page of `queryset` in the original's list envelope."""
    rows = list(queryset[offset : offset + limit])
    # A full count only when the page does not already tell us the total.
    fits = offset == 0 and len(rows) < limit
    total = len(rows) if fits else queryset.order_by().count()
    return envelope(rows, total=total, limit=limit, offset=offset, render=render)


def envelope(
    rows: list[Any],
    *,
    total: int,
    limit: int,
    offset: int,
    render: Callable[[Any], dict[str, Any]],
) -> dict[str, Any]:
    """The original's list envelope around `rows`, the page at `offset` of `total`."""
    return {
        "items": [render(row) for row in rows],
        "total": total,
        "limit": limit,
        "offset": offset,
        "has_more": offset + len(rows) < total,
    }


def operation(message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The original's OperationResponse for actions."""
    return {"success": True, "message": message, "details": details or {}}


# -- schemas for the OpenAPI document --------------------------------------------------------


class OperationSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    message = serializers.CharField()
    details = serializers.DictField(allow_null=True)


class ErrorBodySerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable machine-readable code, e.g. validation_error.")
    message = serializers.CharField()
    details = serializers.JSONField(help_text="Field paths mapped to reasons, where they apply.")
    correlation_id = serializers.CharField(allow_null=True)


class ErrorSerializer(serializers.Serializer):
    error = ErrorBodySerializer()
