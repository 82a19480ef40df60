"""An MCP server for the tests, written with the official SDK (mcp 2.x `MCPServer`).

Run: `python tests/mcp_test_server.py` (stdio) or `... --http PORT` (streamable HTTP on
127.0.0.1). Tools: the morning-briefing sources (calendar, weather, email), `notify` (which
appends to the file named by MCP_TEST_NOTIFY_LOG, so tests can count deliveries), and
misbehaving tools for error, timeout and crash tests.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TypedDict

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

app = MCPServer("ordinaut-test", warn_on_duplicate_tools=False)


class Event(TypedDict):
    title: str
    start: str


class Events(TypedDict):
    events: list[Event]
    window: list[str]


class Forecast(TypedDict):
    city: str
    temperature_c: float
    summary: str


class Delivery(TypedDict):
    delivered: bool
    channel: str
    text: str


@app.tool(description="Calendar events between two instants.")
def list_events(start: str, end: str) -> Events:
    return {
        "events": [
            {"title": "Stand-up", "start": "09:30"},
            {"title": "Design review", "start": "14:00"},
        ],
        "window": [start, end],
    }


@app.tool(description="Weather forecast for a city.")
def forecast(city: str) -> Forecast:
    return {"city": city, "temperature_c": 21.5, "summary": "sunny"}


@app.tool(description="Unread e-mail subjects.")
def unread_email(limit: int = 5) -> dict[str, list[str]]:
    return {"subjects": ["Invoice 42", "Re: launch plan", "Lunch?"][:limit]}


@app.tool(description="Deliver a notification (appends to MCP_TEST_NOTIFY_LOG).")
def notify(text: str, channel: str = "ops") -> Delivery:
    log = os.environ.get("MCP_TEST_NOTIFY_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"channel": channel, "text": text}) + "\n")
    return {"delivered": True, "channel": channel, "text": text}


@app.tool(description="Always fails with the given message.")
def fail(message: str) -> str:
    raise ToolError(message)


@app.tool(description="Sleeps, then answers.")
def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


@app.tool(description="The server's process id.")
def whoami() -> dict[str, int]:
    return {"pid": os.getpid()}


@app.tool(description="Kills the server process.")
def crash() -> str:
    os._exit(3)


@app.tool(description="Plain text, no structured output.", structured_output=False)
def shout(text: str) -> str:
    return text.upper()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        app.settings.log_level = "WARNING"
        app.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        app.run()
