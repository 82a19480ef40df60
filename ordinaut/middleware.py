"""Request middleware: correlation ids and the client address, for logs and the audit log."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from ordinaut.correlation import (
    clean_correlation_id,
    reset_client_ip,
    reset_correlation_id,
    set_client_ip,
    set_correlation_id,
)

HEADER = "X-Correlation-ID"


class CorrelationIdMiddleware:
    """Take X-Correlation-ID from the request (or make one), bind it, return it in the response."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        correlation_id = clean_correlation_id(request.headers.get(HEADER))
        request.correlation_id = correlation_id
        token = set_correlation_id(correlation_id)
        ip_token = set_client_ip(client_ip(request))
        try:
            response = self.get_response(request)
        finally:
            reset_correlation_id(token)
            reset_client_ip(ip_token)
        response[HEADER] = correlation_id
        return response


def client_ip(request: HttpRequest) -> str | None:
    """REMOTE_ADDR, or the first X-Forwarded-For hop when TRUST_X_FORWARDED_FOR is set.

    The header is only trusted behind a proxy that sets it: otherwise any client could
    write whatever address it likes into the audit log.
    """
    if getattr(settings, "TRUST_X_FORWARDED_FOR", False):
        forwarded = request.headers.get("X-Forwarded-For", "")
        first = forwarded.split(",")[0].strip()
        if first:
            return first[:64]
    return request.META.get("REMOTE_ADDR") or None
