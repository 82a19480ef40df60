import signal
import threading

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run the scheduler (placeholder until the scheduler issue lands: it idles)."

    def handle(self, *args, **options) -> None:  # noqa: ANN002, ANN003
        self.stderr.write(
            "runscheduler: the scheduler is not implemented yet (see the Schedules and "
            "scheduler issue); idling until stopped so `make dev` keeps running."
        )
        _wait_for_signal()


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
