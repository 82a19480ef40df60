import gc
import logging
import os
import signal
import threading

from django.core.management.base import BaseCommand

from ordinaut import metrics
from tasks.worker import Worker

logger = logging.getLogger("ordinaut.worker")  # the worker module's own logger


class Command(BaseCommand):
    help = "Run a worker: lease due occurrences and execute their pipelines (safe to run N)."
    # The web process and `migrate` run the system checks; a worker (or scheduler) that
    # runs them at every start pays a quarter of a second importing every URL and view.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("--concurrency", type=int, default=4, help="pipeline threads")
        parser.add_argument("--burst", action="store_true", help="drain the queue, then exit")
        parser.add_argument(
            "--concurrency-key",
            action="append",
            dest="keys",
            help="only run occurrences with this concurrency key (repeatable)",
        )
        parser.add_argument("--lease-seconds", type=float, help="default WORKER_LEASE_SECONDS")
        parser.add_argument("--poll-interval", type=float, help="default WORKER_POLL_INTERVAL")
        parser.add_argument(
            "--shutdown-grace", type=float, default=30.0, help="seconds to finish on SIGTERM"
        )

        metrics.add_arguments(parser)

    def handle(self, *args, **options) -> None:  # noqa: ANN002, ANN003
        metrics.serve_from_options(options)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        worker = Worker(
            concurrency=options["concurrency"],
            burst=options["burst"],
            concurrency_keys=options["keys"],
            lease_seconds=options["lease_seconds"],
            poll_interval=options["poll_interval"],
            shutdown_grace=options["shutdown_grace"],
        )
        logger.info("%s started: %d pipeline threads", worker.name, options["concurrency"])
        # Django, the apps and the tools imported so far live as long as the process: move
        # them out of the collector's generations, so no collection rescans them (a pause
        # of milliseconds, taken on whatever pickup it lands on).
        gc.freeze()
        worker.run(stop)
        logger.info("%s stopped", worker.name)
        if worker.threads_still_running():
            # A tool ignored its timeout; its attempt is already requeued. Do not hang.
            logging.shutdown()
            os._exit(0)
