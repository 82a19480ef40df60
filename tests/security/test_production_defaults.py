"""Production defaults: separate derived keys, a closed /metrics, Secure cookies over HTTPS,
secrets shown once in the admin's response only, and refusals that take as long for an
unknown key id as for a known one."""

from __future__ import annotations

import jwt
import pytest
from django.conf import settings as django_settings
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.contrib.sessions.models import Session

from agents.models import Agent
from agents.services import token_exchange
from ordinaut.errors import Unauthenticated
from tests.conftest import command_env, run_manage
from tests.factories import make_agent
from tests.test_webhooks import agent_with_webhook

pytestmark = pytest.mark.django_db

SHORT = "s" * 31
LONG_ENOUGH = "k" * 32


# -- keys -------------------------------------------------------------------------------------


def test_each_key_is_derived_separately_from_secret_key():
    keys = {
        "SECRET_KEY": django_settings.SECRET_KEY,
        "JWT": django_settings.SIMPLE_JWT["SIGNING_KEY"],
        "API_KEY_HMAC": django_settings.API_KEY_HMAC_SECRET,
    }
    assert len(set(keys.values())) == len(keys)


def test_a_jwt_cannot_be_verified_with_secret_key(api_client_token):
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(api_client_token, django_settings.SECRET_KEY, algorithms=["HS256"],
                   options={"verify_aud": False})  # fmt: skip
    claims = jwt.decode(api_client_token, django_settings.SIMPLE_JWT["SIGNING_KEY"],
                        algorithms=["HS256"], options={"verify_aud": False})  # fmt: skip
    assert claims["iss"] == "ordinaut"


@pytest.fixture
def api_client_token() -> str:
    agent, secret = make_agent(scopes=["tasks:read"])
    _, pair = token_exchange(agent_id=str(agent.pk), agent_secret=secret)
    return pair.access


@pytest.mark.parametrize("variable", ["JWT_SECRET_KEY", "API_KEY_HMAC_SECRET",
                                      "WEBHOOK_SIGNING_SECRET"])  # fmt: skip
def test_a_set_key_shorter_than_32_bytes_is_refused_with_debug_off(variable):
    env = command_env(DEBUG="0", SECRET_KEY="x" * 60, **{variable: SHORT},
                      DATABASE_URL="postgresql://u:p@127.0.0.1:1/unused")  # fmt: skip
    refused = run_manage("check", env=env)
    assert refused.returncode != 0
    assert f"{variable} must be at least 32 bytes" in refused.stderr
    accepted = run_manage("check", env={**env, variable: LONG_ENOUGH})
    assert accepted.returncode == 0, accepted.stderr[-2000:]


# -- /metrics ---------------------------------------------------------------------------------


def test_metrics_is_open_to_loopback_by_default(client):
    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1")
    assert response.status_code == 200
    assert b"django_http_requests" in response.content


def test_metrics_refuses_other_addresses_without_a_token(client):
    response = client.get("/metrics", REMOTE_ADDR="203.0.113.7")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert "METRICS_ALLOWED_NETS" in response.json()["error"]["message"]


def test_metrics_ignores_a_forwarded_address(client, settings):
    # Behind a proxy the first X-Forwarded-For hop is whatever the client wrote.
    settings.TRUST_X_FORWARDED_FOR = True
    spoofed = client.get("/metrics", REMOTE_ADDR="203.0.113.7", HTTP_X_FORWARDED_FOR="127.0.0.1")
    assert spoofed.status_code == 403


def test_metrics_answers_the_bearer_token_from_anywhere(client, settings):
    settings.METRICS_TOKEN = "m" * 40
    wrong = client.get("/metrics", REMOTE_ADDR="203.0.113.7", HTTP_AUTHORIZATION="Bearer nope")
    assert wrong.status_code == 401
    assert wrong["WWW-Authenticate"].startswith("Bearer")
    right = client.get("/metrics", REMOTE_ADDR="203.0.113.7",
                       HTTP_AUTHORIZATION=f"Bearer {'m' * 40}")  # fmt: skip
    assert right.status_code == 200


def test_metrics_answers_an_allowed_network(client, settings):
    import ipaddress

    settings.METRICS_ALLOWED_NETS = [ipaddress.ip_network("203.0.113.0/24")]
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.7").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403


# -- cookies ----------------------------------------------------------------------------------


def test_cookies_set_over_https_are_secure(client):
    response = client.get("/admin/login/", secure=True)
    assert response.cookies["csrftoken"]["secure"] is True
    plain = client.get("/admin/login/")
    assert not plain.cookies["csrftoken"]["secure"]


def test_https_behind_a_proxy_counts_with_secure_proxy_ssl_header(client, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    response = client.get("/admin/login/", HTTP_X_FORWARDED_PROTO="https")
    assert response.cookies["csrftoken"]["secure"] is True


def test_the_session_cookie_of_an_https_login_is_secure(client, admin_user):
    client.get("/admin/login/", secure=True)
    response = client.post(
        "/admin/login/?next=/admin/", {"username": "admin", "password": "password"}, secure=True
    )
    assert response.status_code == 302
    assert response.cookies["sessionid"]["secure"] is True


# -- secrets shown once -----------------------------------------------------------------------


def _new_agent_form(**extra: str) -> dict[str, str]:
    return {
        "name": "console-made",
        "description": "",
        "scopes": "tasks:read",
        "webhook_url": "",
        "is_active": "on",
        "credentials-TOTAL_FORMS": "0",
        "credentials-INITIAL_FORMS": "0",
        **extra,
    }


def _nowhere_but_the_page(response, secret: str) -> None:
    assert secret in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    for morsel in response.cookies.values():
        assert secret not in morsel.value
    for session in Session.objects.all():
        assert secret not in str(session.get_decoded())


def test_a_new_agents_secret_is_in_the_response_and_nowhere_else(admin_client):
    response = admin_client.post("/admin/agents/agent/add/", _new_agent_form())
    assert response.status_code == 200, response.content.decode()[:2000]
    agent = Agent.objects.get(name="console-made")
    page = response.content.decode()
    start = page.index('value="ord_s_') + len('value="')
    secret = page[start : page.index('"', start)]
    _nowhere_but_the_page(response, secret)
    # It is the agent's real secret.
    found, _ = token_exchange(agent_id=str(agent.pk), agent_secret=secret)
    assert found.pk == agent.pk


def test_a_rotated_webhook_secret_is_in_the_response_only(admin_client, settings):
    agent = agent_with_webhook("http://127.0.0.1:9/hook")
    response = admin_client.post(
        "/admin/agents/agent/",
        {"action": "rotate_webhook_secret", "_selected_action": [str(agent.pk)]},
    )
    assert response.status_code == 200
    page = response.content.decode()
    start = page.index('value="whsec_') + len('value="')
    _nowhere_but_the_page(response, page[start : page.index('"', start)])


# -- timing -----------------------------------------------------------------------------------


class CountingHasher(PBKDF2PasswordHasher):
    """Django's default hasher, counting the secrets it verifies (the slow part)."""

    verified = 0

    def verify(self, password: str, encoded: str) -> bool:
        CountingHasher.verified += 1
        return super().verify(password, encoded)


@pytest.fixture
def counting(settings):
    settings.PASSWORD_HASHERS = ["tests.security.test_production_defaults.CountingHasher"]
    from agents import credentials

    credentials._dummy_hash.cache_clear()
    CountingHasher.verified = 0
    yield CountingHasher
    credentials._dummy_hash.cache_clear()


def test_an_unknown_key_id_costs_a_hash_check_as_a_known_one_does(counting):
    agent, secret = make_agent(scopes=["tasks:read"])
    wrong = secret[:-4] + "abcd"
    unknown = "ord_s_" + "f" * 16 + secret[len("ord_s_") + 16 :]
    for presented in (wrong, unknown):
        with pytest.raises(Unauthenticated):
            token_exchange(agent_id=str(agent.pk), agent_secret=presented)
    assert counting.verified == 2


def test_an_api_key_issued_in_the_admin_is_shown_once_and_works(admin_client, client):
    agent, _ = make_agent(scopes=["tasks:read"])
    response = admin_client.post(
        "/admin/agents/agent/", {"action": "issue_api_key", "_selected_action": [str(agent.pk)]}
    )
    assert response.status_code == 200
    page = response.content.decode()
    start = page.index('value="ord_k_') + len('value="')
    key = page[start : page.index('"', start)]
    _nowhere_but_the_page(response, key)
    assert client.get("/tasks", HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 200
