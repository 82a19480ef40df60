"""Helpers to run tests/mcp_test_server.py over stdio and streamable HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from audit.services import Actor
from pipelines.models import McpServer
from pipelines.services import mcp_server_discover, mcp_server_upsert

SERVER_SCRIPT = Path(__file__).resolve().parent / "mcp_test_server.py"


def register_stdio_server(name: str, *, notify_log: Path | None = None) -> McpServer:
    """Register the test server as a stdio MCP server and discover its tools."""
    env = {"MCP_TEST_NOTIFY_LOG": str(notify_log)} if notify_log else {}
    server, _ = mcp_server_upsert(
        name=name,
        actor=Actor.system("tests"),
        command=sys.executable,
        args=[str(SERVER_SCRIPT)],
        env=env,
    )
    return mcp_server_discover(server=server, actor=Actor.system("tests"))


class HttpMcpServer:
    """The test server as a child process speaking streamable HTTP on a loopback port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> HttpMcpServer:
        self.process = subprocess.Popen(
            [sys.executable, str(SERVER_SCRIPT), "--http", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError("the MCP test server exited at start") from None
                time.sleep(0.1)
        raise RuntimeError("the MCP test server did not start listening")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
