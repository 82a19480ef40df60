"""The MCP client: calls tools of configured MCP servers through the official `mcp` SDK.

The SDK is asynchronous; the worker runs pipelines in threads. Each process therefore runs
one background thread with one event loop, and keeps one connection per server on it
(a stdio server is started once per process, not once per call). Callers in any thread
submit coroutines to that loop and wait for the result with a timeout.

A connection whose server died is noticed (a stdio server's pipe closes, an HTTP transport
fails) and replaced on the next use: the call that was in flight when a server crashed
fails, the next one restarts it.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import os
import threading
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipelines.tools.base import ToolError, ToolTimeout

if TYPE_CHECKING:
    from pipelines.models import McpServer

logger = logging.getLogger("pipelines.mcp")

CONNECT_TIMEOUT_SECONDS = 30.0
# Extra wait beyond the SDK's own request timeout before the caller gives up on the loop.
_GRACE_SECONDS = 5.0
_LIST_PAGES_MAX = 50


@dataclass(frozen=True)
class ServerConfig:
    """How to reach one server, with secrets resolved (never stored or logged)."""

    name: str
    transport: str
    command: str = ""
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    url: str = ""
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_server(cls, server: McpServer) -> ServerConfig:
        """The connection settings of an `McpServer`; `${secrets.NAME}` values are resolved.

        Raises ToolError (not retryable) when a referenced secret is unknown.
        """
        return cls(
            name=server.name,
            transport=server.transport,
            command=server.command,
            args=tuple(str(arg) for arg in server.args or []),
            env=tuple((k, _resolve_secrets(server.name, v)) for k, v in (server.env or {}).items()),
            url=server.url,
            headers=tuple(
                (k, _resolve_secrets(server.name, v)) for k, v in (server.headers or {}).items()
            ),
        )


def _resolve_secrets(server_name: str, value: Any) -> str:
    from pipelines.secrets import get_secret
    from pipelines.templating import TemplateContext, TemplateError, render

    text = str(value)
    if "${" not in text:
        return text
    from django.utils import timezone

    context = TemplateContext(data={}, now=timezone.now(), secret=get_secret)
    try:
        return str(render(text, context))
    except TemplateError as exc:
        raise ToolError(f"MCP server {server_name}: {exc}", retryable=False) from exc


# -- the background loop ------------------------------------------------------------------


class _LoopThread:
    """One asyncio loop in a daemon thread, for this process."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="mcp-client", daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float) -> Any:
        """Run `coroutine` on the loop and wait at most `timeout` seconds for its result."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise


_state_lock = threading.Lock()
_loop_thread: _LoopThread | None = None
_connections: dict[str, _Connection] = {}
_connect_locks: dict[str, threading.Lock] = {}


def _loop() -> _LoopThread:
    global _loop_thread
    with _state_lock:
        # After a fork the child has the object but not the thread: start afresh.
        if _loop_thread is None or _loop_thread.pid != os.getpid():
            _loop_thread = _LoopThread()
            _connections.clear()
            _connect_locks.clear()
        return _loop_thread


# -- one connection -------------------------------------------------------------------------


class _Connection:
    """A live session with one server, owned by one task on the background loop.

    The SDK's client must be entered and exited in the same task, so `_serve` holds it open
    until `close()`; calls run in their own tasks. If the transport dies, `_serve` ends and
    fails the calls still waiting on it, so none hangs until its timeout.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._client: Any = None
        self._ready: asyncio.Future[None] | None = None
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[Any]] = set()
        self._lost = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._stop = asyncio.Event()
        self._task = loop.create_task(self._serve(), name=f"mcp:{self.config.name}")
        await self._ready

    async def _serve(self) -> None:
        from mcp import Client

        assert self._ready is not None
        assert self._stop is not None
        try:
            async with AsyncExitStack() as stack:
                client = Client(await self._transport(stack), raise_exceptions=False)
                await stack.enter_async_context(client)
                self._client = client
                self._ready.set_result(None)
                await self._stop.wait()
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(
                    ToolError(f"MCP server {self.config.name}: cannot connect: {_reason(exc)}")
                )
            elif not self._stop.is_set():
                logger.warning("MCP server %s: connection lost: %s", self.config.name, _reason(exc))
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._lost = True
            for call in list(self._calls):
                call.cancel()

    async def _transport(self, stack: AsyncExitStack) -> Any:
        if self.config.transport == "stdio":
            from mcp.client.stdio import StdioServerParameters

            return StdioServerParameters(
                command=self.config.command,
                args=list(self.config.args),
                env=dict(self.config.env) or None,
            )
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        http = httpx2.AsyncClient(
            headers=dict(self.config.headers), timeout=httpx2.Timeout(30, read=300)
        )
        await stack.enter_async_context(http)
        return streamable_http_client(self.config.url, http_client=http)

    def is_alive(self) -> bool:
        """False once the session ended; for stdio, also once the server's pipe closed."""
        if self._lost or self._task is None or self._task.done():
            return False
        # A stdio server that exits while idle closes its pipe; the SDK's dispatcher notes
        # that, but the session stays open until the next request fails. Peek at it so the
        # next call restarts the server instead of failing first.
        dispatcher = getattr(getattr(self._client, "_session", None), "_dispatcher", None)
        return not getattr(dispatcher, "_closed", False)

    async def request(self, coroutine_factory: Any) -> Any:
        """Run one request in this task; a lost connection raises ToolError."""
        task = asyncio.current_task()
        assert task is not None
        self._calls.add(task)
        try:
            return await coroutine_factory(self._client)
        except asyncio.CancelledError:
            if self._lost:
                raise ToolError(f"MCP server {self.config.name}: connection lost") from None
            raise
        finally:
            self._calls.discard(task)

    async def close(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self._task), 10)


def _reason(exc: BaseException) -> str:
    """The innermost useful message of an exception (the SDK raises exception groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]


def _connection(config: ServerConfig) -> _Connection:
    """The pooled connection for `config`, (re)connecting when missing, dead or changed."""
    loop = _loop()
    with _state_lock:
        lock = _connect_locks.setdefault(config.name, threading.Lock())
    with lock:
        current = _connections.get(config.name)
        if current is not None and current.config == config and current.is_alive():
            return current
        if current is not None:
            _connections.pop(config.name, None)
            with contextlib.suppress(Exception):
                loop.run(current.close(), timeout=15)
        connection = _Connection(config)
        try:
            loop.run(connection.start(), timeout=CONNECT_TIMEOUT_SECONDS)
        except concurrent.futures.TimeoutError as exc:
            raise ToolError(f"MCP server {config.name}: connecting timed out") from exc
        _connections[config.name] = connection
        return connection


def _discard(config: ServerConfig, connection: _Connection) -> None:
    with _state_lock:
        if _connections.get(config.name) is connection:
            del _connections[config.name]
    with contextlib.suppress(Exception):
        _loop().run(connection.close(), timeout=15)


# -- public API -------------------------------------------------------------------------------


def list_server_tools(config: ServerConfig, *, timeout: float = 30) -> list[dict[str, Any]]:
    """The server's tools as [{name, description, input_schema, output_schema}].

    Raises ToolError when the server cannot be reached or answers with an error.
    """

    async def fetch(client: Any) -> list[dict[str, Any]]:
        tools: list[dict[str, Any]] = []
        cursor = None
        for _ in range(_LIST_PAGES_MAX):
            page = await client.list_tools(cursor=cursor, cache_mode="refresh")
            tools.extend(
                {
                    "name": tool.name,
                    "description": tool.description or "",
                    "input_schema": tool.input_schema,
                    "output_schema": tool.output_schema,
                }
                for tool in page.tools
            )
            cursor = page.next_cursor
            if cursor is None:
                break
        return tools

    return _request(config, fetch, timeout=timeout, what="list_tools")


def call_tool(config: ServerConfig, tool: str, arguments: dict[str, Any], *, timeout: float) -> Any:
    """Call `tool`; return its structured content, else its text content.

    Raises ToolTimeout after `timeout` seconds, ToolError for an error result (with the
    tool's message) or a connection failure (the connection is then replaced next time).
    """

    async def send(client: Any) -> Any:
        return await client.call_tool(tool, arguments, read_timeout_seconds=timeout)

    result = _request(config, send, timeout=timeout, what=tool)
    text = "\n".join(
        block.text for block in result.content if getattr(block, "type", "") == "text"
    ).strip()
    if result.is_error:
        raise ToolError(f"mcp.{config.name}.{tool}: {text or 'the tool reported an error'}")
    if result.structured_content is not None:
        return result.structured_content
    return text


def _request(config: ServerConfig, factory: Any, *, timeout: float, what: str) -> Any:
    from mcp.shared.exceptions import MCPError
    from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT

    connection = _connection(config)
    try:
        return _loop().run(connection.request(factory), timeout=timeout + _GRACE_SECONDS)
    except concurrent.futures.TimeoutError as exc:
        raise ToolTimeout(f"mcp.{config.name}.{what}: timed out after {timeout:g}s") from exc
    except MCPError as exc:
        if exc.code == REQUEST_TIMEOUT:
            raise ToolTimeout(f"mcp.{config.name}.{what}: timed out after {timeout:g}s") from exc
        if exc.code == CONNECTION_CLOSED:
            _discard(config, connection)
        raise ToolError(f"mcp.{config.name}.{what}: {exc.error.message}") from exc
    except ToolError:
        _discard(config, connection)
        raise
    except Exception as exc:
        # Transport failures and answers the SDK refuses (e.g. structured content that
        # breaks the tool's own output schema) surface as ordinary exceptions.
        if not connection.is_alive():
            _discard(config, connection)
        raise ToolError(f"mcp.{config.name}.{what}: {_reason(exc)}") from exc


def close_all() -> None:
    """Close every pooled connection (stdio servers are stopped); for shutdown and tests."""
    with _state_lock:
        loop_thread = _loop_thread
        connections = list(_connections.values())
        _connections.clear()
    if loop_thread is None or loop_thread.pid != os.getpid():
        return
    for connection in connections:
        with contextlib.suppress(Exception):
            loop_thread.run(connection.close(), timeout=15)


def connection_count() -> int:
    """How many live pooled connections this process holds (for tests and metrics)."""
    with _state_lock:
        return sum(1 for connection in _connections.values() if connection.is_alive())


atexit.register(close_all)
