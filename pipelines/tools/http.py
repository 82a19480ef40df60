"""http.request: an HTTP call with httpx, guarded against server-side request forgery and
bounded in size and time.

- Every connection, the first and each redirect hop's, goes through pipelines.egress: the
  host is resolved once, every address must be public, and the socket connects to the
  address that was checked (`HTTP_TOOL_ALLOWED_HOSTS` is the one way in to internal hosts).
- The body is streamed and cut at `HTTP_TOOL_MAX_RESPONSE_BYTES` (or the step's smaller
  `max_bytes`): past it the step fails with `response_too_large`, or, with `truncate: true`,
  returns the prefix marked `truncated: true`. The step's timeout bounds the whole exchange,
  redirects and body included, not each read.
- Redirects are followed by hand, at most MAX_REDIRECTS. A hop to another origin (scheme,
  host or port) carries no `Authorization`, `Cookie` or `Proxy-Authorization` header and no
  header holding a `${secrets.*}` value; a 307/308 re-sends the body only to the same origin.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
from django.conf import settings

from pipelines import egress
from pipelines.tools.base import ToolContext, ToolError, ToolSpec, ToolTimeout

MAX_REDIRECTS = 5
_RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
# Credentials the caller meant for the first origin only (as browsers and curl do).
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
_BODY_HEADERS = frozenset({"content-type", "content-length", "content-encoding"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class _Hop:
    """One request of the chain: what it sends and where."""

    method: str
    url: httpx.URL
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)

    def origin(self) -> tuple[str, str, int]:
        return _origin(self.url)

    def follow(self, response: httpx.Response, secrets: frozenset[str]) -> _Hop:
        """The next hop of a redirect: what of this request it may carry, and where."""
        location = response.headers.get("location")
        if not location:
            raise ToolError(
                f"http.request: {response.status_code} redirect without a Location header",
                retryable=False,
            )
        target = egress.check_url(self.url.join(location))
        same_origin = _origin(target) == self.origin()
        method, body, headers = self.method, self.body, self.headers
        if response.status_code in (301, 302, 303) and method != "HEAD":
            method, body = "GET", {}
        elif body and not same_origin:
            raise ToolError(
                f"http.request: {response.status_code} redirect from {self.url} to another "
                f"origin ({target}) would re-send the request body; not followed",
                retryable=False,
            )
        if not same_origin:
            headers = {
                name: value
                for name, value in headers.items()
                if name.lower() not in CREDENTIAL_HEADERS
                and not any(secret in value for secret in secrets)
            }
        if not body:
            headers = {k: v for k, v in headers.items() if k.lower() not in _BODY_HEADERS}
        return replace(self, method=method, url=target, headers=headers, body=body)


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    return (url.scheme, url.host.lower(), url.port or _DEFAULT_PORTS.get(url.scheme, 0))


def max_response_bytes(arguments: dict[str, Any]) -> int:
    """The step's byte cap: its `max_bytes`, never above HTTP_TOOL_MAX_RESPONSE_BYTES."""
    ceiling = int(settings.HTTP_TOOL_MAX_RESPONSE_BYTES)
    return min(int(arguments.get("max_bytes") or ceiling), ceiling)


def request(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
    timeout = min(float(arguments.get("timeout", context.timeout)), context.timeout)
    deadline = time.monotonic() + timeout
    try:
        # The first URL, every redirect hop and every connection raise EgressRefused alike.
        hop = _first_hop(arguments)
        with egress.client(timeout=timeout, deadline=deadline) as client:
            for _ in range(MAX_REDIRECTS + 1):
                with client.stream(hop.method, hop.url, headers=hop.headers, **hop.body) as answer:
                    if not answer.is_redirect:
                        body, truncated = _read_capped(answer, arguments)
                        return _checked(arguments, hop, answer, body, truncated)
                    hop = hop.follow(answer, context.secrets)
    except egress.EgressRefused as exc:
        raise ToolError(f"http.request: {exc.message}", retryable=False) from exc
    except httpx.TimeoutException as exc:
        raise ToolTimeout(
            f"http.request: {hop.method} {hop.url} timed out after {timeout:g}s"
        ) from exc
    except httpx.HTTPError as exc:
        raise ToolError(f"http.request: {hop.method} {hop.url} failed: {exc}") from exc
    raise ToolError(f"http.request: more than {MAX_REDIRECTS} redirects", retryable=False)


def _first_hop(arguments: dict[str, Any]) -> _Hop:
    url = egress.check_url(arguments["url"])
    if arguments.get("params"):
        url = url.copy_merge_params(arguments["params"])
    body: dict[str, Any] = {}
    if "json" in arguments:
        body["json"] = arguments["json"]
    elif isinstance(arguments.get("body"), str):
        body["content"] = arguments["body"].encode()
    method = arguments.get("method", "GET").upper()
    return _Hop(method=method, url=url, headers=dict(arguments.get("headers") or {}), body=body)


def _read_capped(response: httpx.Response, arguments: dict[str, Any]) -> tuple[bytes, bool]:
    """The (decoded) body up to the cap, and whether more was there. Without `truncate`, a
    longer body fails the step, as soon as its Content-Length or its bytes show it."""
    cap = max_response_bytes(arguments)
    truncate = bool(arguments.get("truncate"))
    declared = response.headers.get("content-length", "")
    if not truncate and declared.isdigit() and int(declared) > cap:
        raise _too_large(response, cap)
    kept = bytearray()
    for chunk in response.iter_bytes():
        kept += chunk
        if len(kept) > cap:
            if not truncate:
                raise _too_large(response, cap)
            return bytes(kept[:cap]), True
    return bytes(kept), False


def _too_large(response: httpx.Response, cap: int) -> ToolError:
    return ToolError(
        f"http.request: response_too_large: {response.request.method} {response.url} "
        f"sent more than {cap} bytes (HTTP_TOOL_MAX_RESPONSE_BYTES / max_bytes; "
        "`truncate: true` keeps the first bytes instead)",
        retryable=False,
    )


def _checked(
    arguments: dict[str, Any], hop: _Hop, response: httpx.Response, body: bytes, truncated: bool
) -> dict[str, Any]:
    result = _result(response, body, truncated)
    if arguments.get("raise_for_status", True) and response.status_code >= 400:
        raise ToolError(
            f"http.request: {hop.method} {hop.url} answered {response.status_code}: "
            f"{str(result.get('text', result.get('json')))[:200]}",
            retryable=response.status_code in _RETRYABLE_STATUS,
        )
    return result


def _result(response: httpx.Response, body: bytes, truncated: bool) -> dict[str, Any]:
    result: dict[str, Any] = {
        "status": response.status_code,
        "headers": dict(response.headers),
        "url": str(response.url),
    }
    if truncated:
        result["truncated"] = True
    elif "json" in response.headers.get("content-type", ""):
        try:
            result["json"] = json.loads(body)
            return result
        except ValueError:
            pass
    result["text"] = body.decode(response.encoding or "utf-8", errors="replace")
    return result


TOOLS = [
    ToolSpec(
        name="http.request",
        description=(
            "HTTP request (httpx). Internal addresses are refused unless allow-listed; "
            "the body is capped (max_bytes, truncate) and the timeout bounds the whole call. "
            "Output: status, headers, url, and json (JSON responses) or text "
            "(with truncated: true when cut)."
        ),
        input_schema={
            "type": "object",
            "required": ["url"],
            "additionalProperties": False,
            "properties": {
                "method": {"enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]},
                "url": {"type": "string", "pattern": "^https?://"},
                "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                "params": {"type": "object"},
                "json": {},
                "body": {"type": "string"},
                "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 300},
                "raise_for_status": {"type": "boolean"},
                "max_bytes": {"type": "integer", "minimum": 1},
                "truncate": {"type": "boolean"},
            },
        },
        output_schema={"type": "object", "required": ["status", "headers"]},
        required_scope="http",
        timeout_seconds=30,
        func=request,
    ),
]
