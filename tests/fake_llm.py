"""A local HTTP server that speaks OpenAI chat completions (for llm.chat), and echoes.

`POST /v1/chat/completions` answers like OpenAI: the reply is "PLAN: " plus the first 60
characters of the last user message, or JSON when a json_schema response format is asked
for. `GET /echo?...` and `POST /echo` return the request as JSON (for http.request).
Every request is recorded in `requests`.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class FakeOpenAI:
    """Start with `start()`; `base_url` is the OpenAI-style `.../v1` root."""

    def __init__(self, *, api_key: str = "test-llm-key") -> None:
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        self.fail_next: list[int] = []  # statuses to answer with, one per request, first
        self.flaky_failures = 0  # how many more POST /flaky requests answer 503
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer._record(self, None)
                parts = urlsplit(self.path)
                if parts.path == "/echo":
                    self._send(200, {"method": "GET", "query": parse_qs(parts.query)})
                elif parts.path == "/redirect-internal":
                    self.send_response(302)
                    self.send_header("Location", "http://169.254.169.254/latest/meta-data")
                    self.end_headers()
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                outer._record(self, body)
                if outer.fail_next:
                    self._send(outer.fail_next.pop(0), {"error": {"message": "injected"}})
                    return
                if self.path == "/echo":
                    self._send(200, {"method": "POST", "json": body})
                    return
                if self.path == "/flaky":
                    if outer.flaky_failures > 0:
                        outer.flaky_failures -= 1
                        self._send(503, {"error": "try again"})
                    else:
                        self._send(200, {"ok": True, "json": body})
                    return
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": "not found"})
                    return
                if self.headers.get("Authorization") != f"Bearer {outer.api_key}":
                    self._send(401, {"error": {"message": "bad key"}})
                    return
                self._send(200, outer.completion(body))

            def _send(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _record(self, handler: BaseHTTPRequestHandler, body: Any) -> None:
        self.requests.append(
            {"method": handler.command, "path": handler.path, "headers": dict(handler.headers),
             "json": body}
        )  # fmt: skip

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        user = [m for m in body["messages"] if m.get("role") == "user"]
        prompt = str(user[-1]["content"]) if user else ""
        if (body.get("response_format") or {}).get("type") == "json_schema":
            content = json.dumps({"summary": prompt[:20], "priority": "high"})
        else:
            content = "PLAN: " + prompt[:60]
        return {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "model": body.get("model", "fake"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }
