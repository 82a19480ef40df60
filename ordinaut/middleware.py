"""Request middleware: correlation ids and the client address; browser sessions for the admin."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

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
    if settings.TRUST_X_FORWARDED_FOR:
        forwarded = request.headers.get("X-Forwarded-For", "")
        first = forwarded.split(",")[0].strip()
        if first:
            return first[:64]
    return request.META.get("REMOTE_ADDR") or None


class SecureCookiesMiddleware:
    """Mark every cookie set on a request that came over HTTPS `Secure`.

    SESSION_COOKIE_SECURE and CSRF_COOKIE_SECURE are all-or-nothing, so a deployment
    reachable over both plain HTTP (a health port, `make dev`) and HTTPS would leave them
    off; this covers the HTTPS side whatever they say. Behind a TLS-terminating proxy it
    needs SECURE_PROXY_SSL_HEADER so that `request.is_secure()` knows.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if request.is_secure():
            for morsel in response.cookies.values():
                morsel["secure"] = True
        return response


# -- browser sessions: the admin only ---------------------------------------------------------
# The API authenticates every request with a bearer token and never reads a session, a
# message or request.user; only the admin (mounted at /admin/ in ordinaut/urls.py) does.
# Skipping these three for everything else saves a noticeable share of a small API call.
# They are subclasses, so Django's checks (admin.E408-E410) still recognise them.
ADMIN_PREFIX = "/admin"


class _AdminOnly:
    """Mixin: run the wrapped middleware for the admin's URLs, pass everything else through."""

    get_response: Callable[[HttpRequest], HttpResponse]

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info.startswith(ADMIN_PREFIX):
            return super().__call__(request)  # type: ignore[misc]
        return self.get_response(request)


class AdminSessionMiddleware(_AdminOnly, SessionMiddleware):
    """SessionMiddleware for the admin's URLs only."""


class AdminAuthenticationMiddleware(_AdminOnly, AuthenticationMiddleware):
    """AuthenticationMiddleware (request.user from the session) for the admin's URLs only."""


class AdminMessageMiddleware(_AdminOnly, MessageMiddleware):
    """MessageMiddleware (the admin's flash messages) for the admin's URLs only."""


class ConsoleTimeZoneMiddleware:
    """The admin shows every time in CONSOLE_TIME_ZONE (and names it: ordinaut.formats)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path_info.startswith(ADMIN_PREFIX):
            return self.get_response(request)
        with timezone.override(settings.CONSOLE_TIME_ZONE):
            return self.get_response(request)
