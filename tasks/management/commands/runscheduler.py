import logging
import signal
import threading

from django.core.management.base import BaseCommand

from ordinaut import metrics
from tasks.scheduler import Scheduler

logger = logging.getLogger("tasks.scheduler")


class Command(BaseCommand):
    help = "Run the scheduler: enqueue due occurrences of active tasks (safe to run N copies)."
    # The web process and `migrate` run the system checks; a worker (or scheduler) that
    # runs them at every start pays a quarter of a second importing every URL and view.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("--once", action="store_true", help="run a single tick and exit")
        parser.add_argument("--batch-size", type=int, help="tasks per transaction")
        parser.add_argument("--lookahead", type=float, help="seconds to enqueue ahead of time")
        parser.add_argument("--poll-interval", type=float, help="longest sleep between ticks")
        metrics.add_arguments(parser)

    def handle(self, *args, **options) -> None:  # noqa: ANN002, ANN003
        metrics.serve_from_options(options)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        scheduler = Scheduler(
            batch_size=options["batch_size"],
            lookahead=options["lookahead"],
            poll_interval=options["poll_interval"],
        )
        logger.info("%s started", scheduler.name)
        scheduler.run(stop, once=options["once"])
        logger.info("%s stopped", scheduler.name)
