"""Outbound HTTP that cannot be steered into the operator's network (the SSRF guard).

A pipeline is written by an agent and a webhook URL is chosen by one, while the worker and
the scheduler sit inside the operator's network: left unguarded, `http.request` or a
webhook would let an agent read cloud metadata (169.254.169.254, 100.100.100.200), the
database's admin port or anything on localhost.

The guard sits at the socket boundary, in the network backend under httpx, so it holds
for every connection a client makes, whatever the URL or redirect hop that asked for it:

- the host is resolved once, and every address it resolves to must be public
  (`ipaddress.ip_address(...).is_global`), including the IPv4 address embedded in
  IPv4-mapped, IPv4-compatible, 6to4, Teredo and NAT64 forms, which Python's `is_global`
  judges by the IPv6 prefix alone (`2002:7f00:1::` is 127.0.0.1 over 6to4);
- the socket connects to the address that was checked, never to a second lookup, so a
  name that answers a public address for the check and 169.254.169.254 for the connection
  (DNS rebinding) gets nowhere. The URL is untouched, so the Host header and the TLS
  server name stay the host's;
- hosts in `HTTP_TOOL_ALLOWED_HOSTS` are the one exception (internal services an operator
  opens on purpose);
- environment proxies are ignored (`trust_env=False`): through a proxy the connection
  would go to the proxy and the target would never be checked;
- an optional deadline bounds the whole exchange, not each read: every connect, read and
  write waits at most for the time left, so a server dripping a byte a second is cut.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
import time
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx
from django.conf import settings

from pipelines.tools.base import ToolError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


class EgressRefused(ToolError):
    """The target is not an http(s) URL or reaches an address that is not public."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


def allowed_hosts() -> set[str]:
    """Hosts exempt from the public-address rule (setting HTTP_TOOL_ALLOWED_HOSTS)."""
    return {host.lower().strip().strip("[]") for host in settings.HTTP_TOOL_ALLOWED_HOSTS}


def embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (mapped, compatible, 6to4, Teredo, NAT64)."""
    if isinstance(address, ipaddress.IPv4Address):
        return []
    found = [address.ipv4_mapped, address.sixtofour]
    if address.teredo:
        found.extend(address.teredo)
    if any(address in network for network in (*_NAT64, _IPV4_COMPATIBLE)):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return [ip for ip in found if ip is not None]


def refusal(address: IPAddress) -> str | None:
    """Why `address` may not be connected to ("is not a public address", "carries ..."), or
    None when it and every IPv4 address it embeds are public."""
    for candidate in (address, *embedded_ipv4(address)):
        if not candidate.is_global:
            if candidate != address:
                return f"carries {candidate}, which is not a public address"
            return "is not a public address"
    return None


def check_url(url: str | httpx.URL) -> httpx.URL:
    """The parsed URL; EgressRefused unless it is http(s) with a host. Resolves nothing (the
    addresses are checked when connecting), but refuses an internal IP literal at once."""
    try:
        parsed = httpx.URL(str(url))
    except httpx.InvalidURL as exc:
        raise EgressRefused(f"{str(url)!r} is not a valid URL: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise EgressRefused(f"{str(url)!r} is not an http(s) URL")
    host = parsed.host.lower()
    if host not in allowed_hosts():
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            return parsed
        if reason := refusal(literal):
            raise EgressRefused(_refused(f"{literal} {reason}"))
    return parsed


def resolve(host: str, port: int) -> list[tuple[Any, ...]]:
    """Every (family, type, proto, _, sockaddr) `host` resolves to, each checked public
    unless the host is allow-listed; EgressRefused when one is not (one lookup, no retry)."""
    name = host.lower().strip("[]")
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise httpcore.ConnectError(f"cannot resolve {name}: {exc}") from exc
    if name in allowed_hosts():
        return infos
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if reason := refusal(address):
            raise EgressRefused(_refused(f"{name} resolves to {address}, which {reason}"))
    return infos


def _refused(reason: str) -> str:
    return f"{reason}; internal hosts are reached only when listed in HTTP_TOOL_ALLOWED_HOSTS"


class _Deadline:
    """The monotonic instant an exchange must end by; None: no overall bound."""

    def __init__(self, at: float | None) -> None:
        self.at = at

    def bound(self, timeout: float | None, expired: type[Exception]) -> float | None:
        if self.at is None:
            return timeout
        left = self.at - time.monotonic()
        if left <= 0:
            raise expired("the overall deadline passed")
        return left if timeout is None else min(timeout, left)


class _BoundedStream(httpcore.NetworkStream):
    """A connected socket whose every wait is cut at the deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self.inner = inner
        self.deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, self.deadline.bound(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, self.deadline.bound(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        bounded = self.deadline.bound(timeout, httpcore.ConnectTimeout)
        return _BoundedStream(
            self.inner.start_tls(ssl_context, server_hostname, bounded), self.deadline
        )

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class GuardedBackend(httpcore.NetworkBackend):
    """httpcore's socket layer, resolving once and connecting only to checked addresses."""

    def __init__(self, deadline: float | None = None) -> None:
        self.deadline = _Deadline(deadline)
        self.plain = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        infos = resolve(host, port)
        errors: list[str] = []
        for family, kind, proto, _name, sockaddr in infos:
            wait = self.deadline.bound(timeout, httpcore.ConnectTimeout)
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(wait)
                if local_address is not None:
                    sock.bind((local_address, 0))
                for option in socket_options or ():
                    sock.setsockopt(*option)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.connect(sockaddr)  # the checked address: no second lookup
            except TimeoutError as exc:
                sock.close()
                raise httpcore.ConnectTimeout(f"connecting to {host} timed out") from exc
            except OSError as exc:
                sock.close()
                errors.append(f"{sockaddr[0]}: {exc.strerror or exc}")
                continue
            return _BoundedStream(_socket_stream(sock), self.deadline)
        raise httpcore.ConnectError(f"cannot connect to {host}: {'; '.join(errors)}")

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise EgressRefused("unix sockets are not reachable")

    def sleep(self, seconds: float) -> None:
        self.plain.sleep(seconds)


def _socket_stream(sock: socket.socket) -> httpcore.NetworkStream:
    from httpcore._backends.sync import SyncStream  # the plain socket wrapper httpcore uses

    return SyncStream(sock)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """httpx's default verifying context, built once: loading the CA bundle costs more than
    the rest of a client, and every http.request step makes a client. A client-side
    context is safe to share between threads."""
    return httpx.create_ssl_context(trust_env=False)


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport over GuardedBackend (no proxy, no unix socket)."""

    def __init__(
        self, *, deadline: float | None = None, limits: httpx.Limits | None = None
    ) -> None:
        limits = limits or httpx.Limits()
        context = _ssl_context()
        super().__init__(verify=context, trust_env=False, limits=limits)
        # httpx builds its pool without a way to pass a network backend; the pool is
        # rebuilt with the same settings and ours (tests/security/test_ssrf.py holds it).
        self._pool = httpcore.ConnectionPool(
            ssl_context=context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(deadline),
        )


def client(
    *, timeout: float, deadline: float | None = None, limits: httpx.Limits | None = None
) -> httpx.Client:
    """An httpx client whose connections pass the guard; redirects are not followed (callers
    follow them by hand, deciding what each hop may carry)."""
    return httpx.Client(
        transport=GuardedTransport(deadline=deadline, limits=limits),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
    )
