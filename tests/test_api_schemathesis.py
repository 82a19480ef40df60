"""Property-based contract test: schemathesis drives every operation in /openapi.json.

Every response must be documented (status, content type, body schema) and nothing may be a
500, whatever the generated input (valid and invalid). Runs in-process over WSGI against the
test database. Not checked: that unknown query parameters are refused (we tolerate them, as
proxies add cache-busters) and auth-stripping probes (the Authorization header is forced;
auth failures have their own tests).
"""

from __future__ import annotations

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis import checks

from ordinaut.wsgi import application
from tests.api_support import agent_with_key, fresh_throttles  # noqa: F401 (fixtures)

schema = schemathesis.openapi.from_wsgi("/openapi.json", application)


@pytest.fixture
def admin_token(db):
    # Requests go through the real WSGI handler, which closes "old" connections at request
    # start and end; that would close the test's transaction, so (like Django's test Client)
    # keep the connection for the test's duration.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    _, key = agent_with_key(scopes=["admin"])
    yield key
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_honours_its_openapi_contract(case, admin_token):
    case.call_and_validate(
        headers={"Authorization": f"Bearer {admin_token}"},
        checks=[
            checks.not_a_server_error,
            checks.status_code_conformance,
            checks.content_type_conformance,
            checks.response_schema_conformance,
            checks.response_headers_conformance,
        ],
    )
