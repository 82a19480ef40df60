"""One error hierarchy with stable codes, and the one handler that renders it for the API.

Every API error is `{"error": {"code", "message", "details", "correlation_id"}}`: a client
can branch on `code`, show `message`, find the offending fields in `details`, and quote
`correlation_id` to find the server's log lines for the request.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions as drf
from rest_framework.response import Response

from ordinaut.correlation import get_correlation_id

logger = logging.getLogger(__name__)

# The challenge sent with every 401 (RFC 6750): the API takes Bearer tokens only.
WWW_AUTHENTICATE = 'Bearer realm="ordinaut"'


class OrdinautError(Exception):
    """Base of every error a service raises on purpose; `code` is stable, `status` is HTTP."""

    code = "error"
    status = 400

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class InvalidInput(OrdinautError):
    """The request is well-formed but a field's value is not acceptable."""

    code = "validation_error"
    status = 422


class NotFound(OrdinautError):
    code = "not_found"
    status = 404


class Conflict(OrdinautError):
    """The change contradicts current state (duplicate name, wrong state for the action)."""

    code = "conflict"
    status = 409


class Unauthenticated(OrdinautError):
    """Credentials or a token were not accepted; rendered 401 with WWW-Authenticate."""

    code = "authentication_failed"
    status = 401


class Forbidden(OrdinautError):
    code = "forbidden"
    status = 403


class BudgetExceeded(OrdinautError):
    """The change would take an agent past one of its budgets; `details` names it:
    {budget, limit, usage}."""

    code = "budget_exceeded"
    status = 403


class RateLimited(OrdinautError):
    """Too many requests in the caller's window; `details.retry_after` says when to retry.

    REST raises DRF's Throttled (with Retry-After); MCP tools raise this, with the same code.
    """

    code = "throttled"
    status = 429


class PayloadTooLarge(drf.APIException):
    """A body over DATA_UPLOAD_MAX_MEMORY_SIZE, refused before it is read."""

    status_code = 413
    default_detail = "Request body too large."
    default_code = "payload_too_large"


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The JSON error envelope, carrying the current request's correlation id."""
    return {
        "error": {
            "code": code,
            "message": message,
            "details": details or {},
            "correlation_id": get_correlation_id(),
        }
    }


_DRF_CODES = {
    drf.ParseError: "parse_error",
    drf.AuthenticationFailed: "authentication_failed",
    drf.NotAuthenticated: "not_authenticated",
    drf.PermissionDenied: "forbidden",
    drf.NotFound: "not_found",
    drf.MethodNotAllowed: "method_not_allowed",
    drf.NotAcceptable: "not_acceptable",
    drf.UnsupportedMediaType: "unsupported_media_type",
    drf.Throttled: "throttled",
}


def _drf_code(exc: drf.APIException) -> str:
    for exc_type, code in _DRF_CODES.items():
        if isinstance(exc, exc_type):
            return code
    # Our own APIException subclasses (e.g. 413) carry their code.
    return getattr(exc, "default_code", None) or "error"


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF EXCEPTION_HANDLER: render every known error in the envelope; unknown ones propagate."""
    if isinstance(exc, OrdinautError):
        response = Response(error_body(exc.code, exc.message, exc.details), status=exc.status)
        if exc.status == 401:
            response["WWW-Authenticate"] = WWW_AUTHENTICATE
        return response
    if isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge()
    elif isinstance(exc, Http404):
        exc = drf.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf.PermissionDenied()
    if isinstance(exc, drf.ValidationError):
        # 422: the body parsed, but fields failed validation; details maps field -> reasons.
        detail = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        first = _first_message(detail)
        return Response(error_body("validation_error", first, detail), status=422)
    if isinstance(exc, drf.APIException):
        response = Response(error_body(_drf_code(exc), str(exc.detail)), status=exc.status_code)
        if getattr(exc, "auth_header", None):
            response["WWW-Authenticate"] = exc.auth_header
        if getattr(exc, "wait", None):
            response["Retry-After"] = str(int(exc.wait))
        return response
    return None


def _first_message(detail: Any, path: str = "") -> str:
    """'field.sub: reason' for the first error in a nested DRF error structure."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            prefix = key if not path else f"{path}.{key}"
            if key == "non_field_errors":
                prefix = path
            return _first_message(value, prefix)
    if isinstance(detail, list) and detail:
        return _first_message(detail[0], path)
    return f"{path}: {detail}" if path else str(detail)


def json_404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    """handler404 for non-admin paths: the API never answers with an HTML page."""
    return JsonResponse(error_body("not_found", f"No route for {request.path}"), status=404)


def json_500(request: HttpRequest) -> JsonResponse:
    """handler500: a JSON body with the correlation id so the log line can be found."""
    # The middleware has reset the context variable by now; the request keeps the id.
    body = error_body("internal_error", "Internal error")
    body["error"]["correlation_id"] = getattr(request, "correlation_id", None)
    return JsonResponse(body, status=500)
