from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.services import Actor
from ordinaut.errors import OrdinautError
from ordinaut.logging import log_to_stderr
from pipelines.services import mcp_server_discover, mcp_server_upsert
from pipelines.tools.base import ToolError


def _pairs(values: list[str], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key:
            raise CommandError(f"{option} expects KEY=VALUE, got {value!r}")
        pairs[key] = item
    return pairs


class Command(BaseCommand):
    help = (
        "Create or update an enabled MCP server and discover its tools at once. Values may "
        "reference secrets as ${secrets.NAME}."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--command", help="stdio: the command that starts the server")
        target.add_argument("--url", help="streamable HTTP: the server's endpoint")
        parser.add_argument("--arg", action="append", default=[], help="stdio argument")
        parser.add_argument("--env", action="append", default=[], help="stdio KEY=VALUE")
        parser.add_argument("--header", action="append", default=[], help="HTTP KEY=VALUE")
        parser.add_argument(
            "--scope", default=None, help='scope agents need (default mcp:<name>; "" for none)'
        )
        parser.add_argument("--timeout", type=float, default=30, help="per-call seconds")

    def handle(self, *args, **options) -> None:  # noqa: ANN002, ANN003
        log_to_stderr()
        actor = Actor.system("addmcpserver")
        try:
            server, created = mcp_server_upsert(
                name=options["name"],
                actor=actor,
                command=options["command"] or "",
                args=options["arg"],
                env=_pairs(options["env"], "--env"),
                url=options["url"] or "",
                headers=_pairs(options["header"], "--header"),
                required_scope=options["scope"],
                timeout_seconds=options["timeout"],
            )
        except OrdinautError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"{'Created' if created else 'Updated'} MCP server {server.name}.")
        try:
            mcp_server_discover(server=server, actor=actor)
        except ToolError as exc:
            raise CommandError(f"saved, but discovery failed: {exc.message}") from exc
        for name in server.tool_names():
            self.stdout.write(f"  mcp.{server.name}.{name}")
        self.stdout.write(f"{len(server.tools)} tool(s) discovered.")
