"""http.request: an HTTP call with httpx, guarded against server-side request forgery.

A pipeline is written by an agent, and the worker sits inside the operator's network: left
unguarded, `http.request` would let any agent read cloud metadata (169.254.169.254), the
database's admin port or anything on localhost. Every target (and every redirect hop) is
resolved first and refused when any of its addresses is loopback, private, link-local,
reserved, multicast or unspecified, unless its host is in `HTTP_TOOL_ALLOWED_HOSTS`.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
from django.conf import settings

from pipelines.tools.base import ToolContext, ToolError, ToolSpec, ToolTimeout

MAX_REDIRECTS = 5
MAX_BODY_BYTES = 5 * 1024 * 1024
_RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


def allowed_hosts() -> set[str]:
    """Hosts exempt from the private-address check (setting HTTP_TOOL_ALLOWED_HOSTS)."""
    return {host.lower().strip() for host in settings.HTTP_TOOL_ALLOWED_HOSTS}


def check_target(url: str) -> None:
    """Raise ToolError (not retryable) when `url` is not http(s) or reaches a private address."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ToolError(f"http.request: {url!r} is not an http(s) URL", retryable=False)
    host = parts.hostname.lower()
    if host in allowed_hosts():
        return
    try:
        infos = socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise ToolError(f"http.request: cannot resolve {host}: {exc}") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if _is_internal(address):
            raise ToolError(
                f"http.request: {host} resolves to {address}, an internal address; "
                "add the host to HTTP_TOOL_ALLOWED_HOSTS to allow it",
                retryable=False,
            )


def _is_internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_reserved
        or address.is_multicast
        or address.is_unspecified
    )


def request(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
    method = arguments.get("method", "GET").upper()
    url = arguments["url"]
    timeout = min(float(arguments.get("timeout", context.timeout)), context.timeout)
    content = arguments.get("body")
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            # Redirects are followed by hand so that every hop passes the same guard.
            for _ in range(MAX_REDIRECTS + 1):
                check_target(url)
                response = client.request(
                    method,
                    url,
                    headers=arguments.get("headers"),
                    params=arguments.get("params"),
                    json=arguments.get("json"),
                    content=content.encode() if isinstance(content, str) else None,
                )
                if not response.is_redirect:
                    break
                url = urljoin(url, response.headers["location"])
                if response.status_code in (301, 302, 303):
                    method, content = ("GET", None) if method != "HEAD" else (method, None)
            else:
                reason = f"http.request: more than {MAX_REDIRECTS} redirects"
                raise ToolError(reason, retryable=False)
    except httpx.TimeoutException as exc:
        raise ToolTimeout(f"http.request: {method} {url} timed out after {timeout:g}s") from exc
    except httpx.HTTPError as exc:
        raise ToolError(f"http.request: {method} {url} failed: {exc}") from exc
    result = _result(response)
    if arguments.get("raise_for_status", True) and response.status_code >= 400:
        raise ToolError(
            f"http.request: {method} {url} answered {response.status_code}: "
            f"{str(result.get('text', result.get('json')))[:200]}",
            retryable=response.status_code in _RETRYABLE_STATUS,
        )
    return result


def _result(response: httpx.Response) -> dict[str, Any]:
    result: dict[str, Any] = {
        "status": response.status_code,
        "headers": dict(response.headers),
        "url": str(response.url),
    }
    body = response.content[:MAX_BODY_BYTES]
    if "json" in response.headers.get("content-type", ""):
        try:
            result["json"] = response.json()
            return result
        except ValueError:
            pass
    result["text"] = body.decode(response.encoding or "utf-8", errors="replace")
    return result


TOOLS = [
    ToolSpec(
        name="http.request",
        description=(
            "HTTP request (httpx). Internal addresses are refused unless allow-listed. "
            "Output: status, headers, url, and json (JSON responses) or text."
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
            },
        },
        output_schema={"type": "object", "required": ["status", "headers"]},
        required_scope="http",
        timeout_seconds=30,
        func=request,
    ),
]
