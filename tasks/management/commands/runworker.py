import signal
import threading

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run a worker (placeholder until the queue issue lands: it idles)."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("--concurrency", type=int, default=1)

    def handle(self, *args, **options) -> None:  # noqa: ANN002, ANN003
        self.stderr.write(
            "runworker: the worker is not implemented yet (see the queue issue); "
            "idling until stopped so `make dev` keeps running."
        )
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
