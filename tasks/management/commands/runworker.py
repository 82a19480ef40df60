from django.core.management.base import BaseCommand

from tasks.management.commands.runscheduler import _wait_for_signal


class Command(BaseCommand):
    help = "Run a worker (placeholder until the queue issue lands: it idles)."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("--concurrency", type=int, default=1)

    def handle(self, *args, **options) -> None:  # noqa: ANN002, ANN003
        self.stderr.write(
            "runworker: the worker is not implemented yet (see the queue issue); "
            "idling until stopped so `make dev` keeps running."
        )
        _wait_for_signal()
