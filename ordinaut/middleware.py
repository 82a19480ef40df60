"""Request middleware: correlation ids."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from ordinaut.correlation import clean_correlation_id, reset_correlation_id, set_correlation_id

HEADER = "X-Correlation-ID"


class CorrelationIdMiddleware:
    """Take X-Correlation-ID from the request (or make one), bind it, return it in the response."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        correlation_id = clean_correlation_id(request.headers.get(HEADER))
        request.correlation_id = correlation_id
        token = set_correlation_id(correlation_id)
        try:
            response = self.get_response(request)
        finally:
            reset_correlation_id(token)
        response[HEADER] = correlation_id
        return response
