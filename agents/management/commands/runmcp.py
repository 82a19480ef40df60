import os

import uvicorn
from django.core.management.base import BaseCommand

from agents.mcp_server import build_server, http_app
from ordinaut.logging import log_to_stderr


class Command(BaseCommand):
    help = "Run Ordinaut's MCP server over stdio (token from ORDINAUT_TOKEN) or streamable HTTP."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("--transport", choices=["stdio", "http"], default="stdio")
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8765)

    def handle(self, *args, **options) -> None:  # noqa: ANN002, ANN003
        # stdout carries the stdio protocol; logs must never go there.
        log_to_stderr()
        server = build_server(stdio_token=os.environ.get("ORDINAUT_TOKEN"))
        if options["transport"] == "stdio":
            server.run("stdio")
        else:
            # Stateless: every request carries its own Bearer token, any replica can serve it.
            app = http_app(server, host=options["host"])
            uvicorn.run(app, host=options["host"], port=options["port"], log_level="warning")
