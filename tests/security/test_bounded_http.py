"""http.request is bounded: a byte cap on the body, one deadline for the whole exchange, and
redirects that carry credentials and bodies only where their owner sent them.

Run through the real executor against HTTP servers on loopback (allow-listed).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.test_pipeline_executor import run_payload

pytestmark = pytest.mark.django_db

MIB = 1024 * 1024
SECRET_VALUE = "sk-live-0123456789abcdef"


class Target:
    """An HTTP server on loopback whose routes a test sets; records what it was sent."""

    def __init__(self) -> None:
        self.routes: dict[str, Callable[[BaseHTTPRequestHandler], None]] = {}
        self.received: list[dict[str, Any]] = []
        self.bytes_sent = 0
        target = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._route()

            def do_POST(self) -> None:
                self._route()

            def _route(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                path = self.path.split("?")[0]
                target.received.append(
                    {"method": self.command, "path": path, "headers": dict(self.headers),
                     "body": body}
                )  # fmt: skip
                # The client may hang up mid-body: what a cap or a deadline does.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    target.routes[path](self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def targets(settings) -> Iterator[tuple[Target, Target]]:
    """Two servers: two origins (same host, different ports)."""
    settings.HTTP_TOOL_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.PIPELINE_SECRETS = {"API_TOKEN": SECRET_VALUE}
    first, second = Target(), Target()
    yield first, second
    first.stop()
    second.stop()


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"", **headers: str) -> None:
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def echo(handler: BaseHTTPRequestHandler) -> None:
    body = json.dumps({"headers": dict(handler.headers)}).encode()
    send(handler, 200, body, Content_Type="application/json")


def step(url: str, **arguments: Any) -> dict:
    return {"pipeline": [{"id": "get", "uses": "http.request", "with": {"url": url, **arguments}}]}


def huge(target: Target, *, chunked: bool) -> Callable[[BaseHTTPRequestHandler], None]:
    """20 MiB of 'a', with or without a Content-Length."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain")
        if chunked:
            handler.send_header("Transfer-Encoding", "chunked")
        else:
            handler.send_header("Content-Length", str(20 * MIB))
        handler.end_headers()
        block = b"a" * 65536
        for _ in range(20 * MIB // len(block)):
            data = b"%x\r\n%s\r\n" % (len(block), block) if chunked else block
            handler.wfile.write(data)
            target.bytes_sent += len(block)
        if chunked:
            handler.wfile.write(b"0\r\n\r\n")

    return route


@pytest.mark.parametrize("chunked", [False, True])
def test_a_20_mib_body_fails_the_step_past_the_cap(targets, settings, chunked):
    first, _ = targets
    settings.HTTP_TOOL_MAX_RESPONSE_BYTES = MIB
    first.routes["/huge"] = huge(first, chunked=chunked)
    run, result = run_payload(step(f"{first.url}/huge"))
    assert result.status == "failed"
    assert "response_too_large" in result.error
    assert "more than 1048576 bytes" in result.error
    assert result.retryable is False
    assert len(json.dumps(run.steps)) < 10_000  # nothing of the body was stored


def test_truncate_keeps_exactly_the_cap_and_says_so(targets, settings):
    first, _ = targets
    settings.HTTP_TOOL_MAX_RESPONSE_BYTES = MIB
    first.routes["/huge"] = huge(first, chunked=True)
    run, result = run_payload(step(f"{first.url}/huge", truncate=True))
    assert result.status == "succeeded", result.error
    output = run.steps[0]["output"]
    assert output["truncated"] is True
    assert len(output["text"]) == MIB
    assert len(json.dumps(run.output)) < MIB + 10_000


def test_a_step_asks_for_less_than_the_installation_cap(targets):
    first, _ = targets
    first.routes["/ten"] = lambda handler: send(handler, 200, b"0123456789")
    run, result = run_payload(step(f"{first.url}/ten", max_bytes=4, truncate=True))
    assert run.steps[0]["output"]["text"] == "0123"
    run, result = run_payload(step(f"{first.url}/ten", max_bytes=4))
    assert "response_too_large" in result.error


def test_a_server_dripping_a_byte_a_second_is_cut_at_the_step_timeout(targets):
    first, _ = targets

    def drip(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "60")
        handler.end_headers()
        for _ in range(60):
            handler.wfile.write(b".")
            handler.wfile.flush()
            time.sleep(0.5)

    first.routes["/drip"] = drip
    payload = step(f"{first.url}/drip")
    payload["pipeline"][0]["timeout_seconds"] = 2
    _, result = run_payload(payload)
    # Each read returns within the per-read timeout: only a deadline over the whole
    # exchange ends this before the 30 s the server takes.
    assert result.status == "failed"
    assert "timed out after 2s" in result.error
    assert len(first.received) == 1


def test_a_cross_origin_redirect_drops_credentials_and_secret_headers(targets):
    first, second = targets
    first.routes["/go"] = lambda handler: send(handler, 302, Location=f"{second.url}/echo")
    second.routes["/echo"] = echo
    headers = {"Authorization": "Bearer abcdefgh12345678", "Cookie": "session=abcdefgh12345678",
               "Proxy-Authorization": "Basic abcdefgh", "X-Api-Key": "${secrets.API_TOKEN}",
               "X-Trace": "trace-1"}  # fmt: skip
    _, result = run_payload(
        step(f"{first.url}/go", headers=headers), scopes=["http", "secrets:api_token"]
    )
    assert result.status == "succeeded", result.error
    sent = {name.lower() for name in second.received[0]["headers"]}
    assert {"authorization", "cookie", "proxy-authorization", "x-api-key"}.isdisjoint(sent)
    assert "x-trace" in sent
    assert SECRET_VALUE not in json.dumps(second.received)
    # The first origin got everything it was sent.
    assert first.received[0]["headers"]["X-Api-Key"] == SECRET_VALUE


def test_a_same_origin_redirect_keeps_the_headers(targets):
    first, _ = targets
    first.routes["/go"] = lambda handler: send(handler, 302, Location="/echo")
    first.routes["/echo"] = echo
    run, _ = run_payload(step(f"{first.url}/go", headers={"Authorization": "Bearer t0k3n"}))
    assert run.steps[0]["output"]["json"]["headers"]["Authorization"] == "Bearer t0k3n"


def test_a_307_re_sends_the_body_to_the_same_origin_only(targets):
    first, second = targets
    first.routes["/same"] = lambda handler: send(handler, 307, Location="/echo")
    first.routes["/echo"] = lambda handler: send(handler, 200, handler.rfile.read(0) or b"{}")
    first.routes["/away"] = lambda handler: send(handler, 307, Location=f"{second.url}/echo")
    second.routes["/echo"] = echo

    _, same = run_payload(step(f"{first.url}/same", method="POST", json={"order": 1}))
    assert same.status == "succeeded", same.error
    assert [r["body"] for r in first.received] == ['{"order":1}', '{"order":1}']

    _, away = run_payload(step(f"{first.url}/away", method="POST", json={"order": 2}))
    assert away.status == "failed"
    assert "would re-send the request body" in away.error
    assert second.received == []


def test_a_303_turns_into_a_get_without_the_body(targets):
    first, second = targets
    first.routes["/made"] = lambda handler: send(handler, 303, Location=f"{second.url}/echo")
    second.routes["/echo"] = echo
    _, result = run_payload(step(f"{first.url}/made", method="POST", json={"order": 3}))
    assert result.status == "succeeded", result.error
    assert second.received[0]["method"] == "GET"
    assert second.received[0]["body"] == ""
    assert "content-type" not in {name.lower() for name in second.received[0]["headers"]}
