from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from ordinaut.embedded import dev_postgres, dev_redis


class Command(BaseCommand):
    help = "Start, stop or show the embedded development PostgreSQL and Redis under var/."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("action", choices=["start", "stop", "status"])

    def handle(self, *args, **options) -> None:  # noqa: ANN002, ANN003
        servers = {"postgres": dev_postgres(settings.VAR_DIR), "redis": dev_redis(settings.VAR_DIR)}
        if options["action"] == "status":
            for name, server in servers.items():
                state = "running" if server.is_running() else "stopped"
                self.stdout.write(f"{name}: {state} ({server.data_dir})")
            return
        if options["action"] == "start":
            if not settings.DEBUG:
                raise CommandError("embedded servers are for development (DEBUG=1) only")
            for server in servers.values():
                server.start()
        else:
            for server in servers.values():
                server.stop()
        self.stdout.write(f"{options['action']}: done")
