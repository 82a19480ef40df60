"""Run inside a fresh network namespace (tests/security/test_ssrf.py): http.request and a
webhook POST against every address form the guard must refuse, and a rebinding name.

The namespace has only `lo`, carrying 127.0.0.1, 100.100.100.200 (a cloud metadata address)
and 93.184.216.34 (a public address, here a local stand-in), so nothing can leave the
machine whatever the code under test does. A canary HTTP server listens on the two internal
addresses and a "public" one on the third; the resolver is hooked at the socket boundary
(`socket.getaddrinfo`), where a rebinding name answers the public address to its first
lookup and 127.0.0.1 to every later one. Prints one JSON line after MARK: each probe's
outcome and the requests each server received.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import django

PUBLIC = "93.184.216.34"
METADATA = "100.100.100.200"
PORT = 8080
MARK = "PROBE-RESULT "
hits: dict[str, list[str]] = {"canary": [], "public": []}


def serve(address: str, role: str) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def _answer(self) -> None:
            hits[role].append(f"{address} {self.command} {self.path} {self.headers['Host']}")
            body = json.dumps({"served_by": role}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    server_class = type("Server", (ThreadingHTTPServer,), {"address_family": family})
    server = server_class((address, PORT), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()


lookups: dict[str, int] = {}
real_getaddrinfo = socket.getaddrinfo


def answers(name: str) -> list[str] | None:
    """The scripted DNS: None for names it does not know (resolved as usual)."""
    seen = lookups[name] = lookups.get(name, 0) + 1
    if name in ("rebind.example", "hook-rebind.example"):
        return [PUBLIC] if seen == 1 else ["127.0.0.1"]
    return {
        "metadata.example": [METADATA],
        "mixed.example": [PUBLIC, "127.0.0.1"],
        "public.example": [PUBLIC],
    }.get(name)


def hooked_getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list:
    scripted = answers(str(host))
    if scripted is None:
        return real_getaddrinfo(host, port, *args, **kwargs)
    return [
        (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ip, int(port or 80)))
        for ip in scripted
    ]


def probe_tool(url: str) -> dict[str, Any]:
    from pipelines.tools.base import ToolContext, ToolError
    from pipelines.tools.http import request

    try:
        answer = request({"url": url, "timeout": 3}, ToolContext(step_id="probe", timeout=3))
    except ToolError as exc:
        return {"error": exc.message, "retryable": exc.retryable}
    return {"status": answer["status"], "json": answer.get("json")}


def probe_webhook(url: str) -> dict[str, Any]:
    from pipelines import egress
    from tasks.delivery.webhooks import ClaimedDelivery, post

    claimed = ClaimedDelivery(
        id=1, url=url, event_type="run.succeeded", payload={"probe": True}, attempt=1,
        created_at=datetime.now(UTC),
    )  # fmt: skip
    with egress.client(timeout=3) as client:
        result = post(client, claimed)
    return {"status": result.status_code, "error": result.error, "retryable": result.retryable}


def main() -> None:
    django.setup()
    serve("127.0.0.1", "canary")
    serve(METADATA, "canary")
    serve("::1", "canary")
    serve(PUBLIC, "public")
    socket.getaddrinfo = hooked_getaddrinfo
    port = f":{PORT}"
    targets = {
        "metadata": f"http://{METADATA}{port}/latest/meta-data/",
        "sixtofour": f"http://[2002:7f00:1::]{port}/",
        "short_loopback": f"http://127.1{port}/",
        "mapped": f"http://[::ffff:127.0.0.1]{port}/",
        "unspecified": f"http://0.0.0.0{port}/",
        "ipv6_loopback": f"http://[::1]{port}/",
        "nat64": f"http://[64:ff9b::7f00:1]{port}/",
        "loopback": f"http://127.0.0.1{port}/",
        "metadata_name": f"http://metadata.example{port}/",
        "mixed_name": f"http://mixed.example{port}/",
        "rebind": f"http://rebind.example{port}/",
        "public": f"http://public.example{port}/",
    }
    results = {name: probe_tool(url) for name, url in targets.items()}
    results["webhook_rebind"] = probe_webhook(f"http://hook-rebind.example{port}/hook")
    results["webhook_metadata"] = probe_webhook(f"http://{METADATA}{port}/hook")
    # Log lines go to stdout too: the result is the line with its own prefix.
    sys.stdout.write(MARK + json.dumps({"results": results, "hits": hits, "lookups": lookups}))


if __name__ == "__main__":
    main()
