"""CORS: none by default; CORS_ALLOWED_ORIGINS opens the API, never the admin."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db

ORIGIN = "https://app.example.com"


def preflight(client, path: str, origin: str = ORIGIN):
    return client.options(
        path,
        HTTP_ORIGIN=origin,
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization,content-type",
    )


def test_no_origin_is_allowed_by_default(client):
    assert "access-control-allow-origin" not in preflight(client, "/tasks").headers


def test_an_allowed_origin_may_call_the_api(client, settings):
    settings.CORS_ALLOWED_ORIGINS = [ORIGIN]
    response = preflight(client, "/tasks")
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in response.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in response.headers
    other = preflight(client, "/tasks", "https://evil.example.net")
    assert "access-control-allow-origin" not in other.headers


def test_the_admin_is_never_cross_origin(client, settings):
    settings.CORS_ALLOWED_ORIGINS = [ORIGIN]
    assert "access-control-allow-origin" not in preflight(client, "/admin/login/").headers
