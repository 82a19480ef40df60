"""Shared set-up for benchmarks: a throwaway PostgreSQL, Django configured against it."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_BENCH = str(ROOT / "bench")
# bench/queue.py shares its name with the standard library's `queue` (psycopg and
# concurrent.futures import it): put this directory behind the standard library, and the
# project first. Every bench script imports this module before anything else.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if p not in (_BENCH, "")] + [_BENCH]

from ordinaut.embedded import EmbeddedPostgres, free_port  # noqa: E402


def start_database() -> tuple[EmbeddedPostgres, str]:
    """Start a fresh PostgreSQL (default durability settings) and return (server, url)."""
    server = EmbeddedPostgres(
        Path(tempfile.mkdtemp(prefix="ordinaut-bench-")) / "pg", port=free_port()
    )
    server.start()
    server.create_database("ordinaut")
    return server, server.tcp_url("ordinaut")


def setup_django(url: str) -> dict[str, str]:
    """Configure Django for this process against `url`, migrate; return env for children."""
    env = {
        "DEBUG": "0",
        "SECRET_KEY": "bench-" + "x" * 60,
        "DATABASE_URL": url,
        "REDIS_URL": "",
        "ORDINAUT_ENV_FILE": "",
        "DJANGO_SETTINGS_MODULE": "ordinaut.settings",
        "LOG_LEVEL": "WARNING",
    }
    os.environ.update(env)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    return {**os.environ, **env}


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


class Report:
    """A benchmark's figures: a JSON line for each as it is measured, a table at the end.

    `columns` are (key, heading, width, number format): the first is the row's label, the
    others numbers. A row may carry more keys than the table shows; its JSON line has them.
    """

    def __init__(self, bench: str, columns: list[tuple[str, str, int, str]]) -> None:
        self.bench = bench
        self.columns = columns
        self.rows: list[dict] = []

    def add(self, **figures: object) -> None:
        record = {"bench": self.bench, **figures}
        print(json.dumps(record), flush=True)
        self.rows.append(record)

    def table(self) -> None:
        (label, heading, width, _), *numbers = self.columns
        print(f"\n{heading:<{width}} " + " ".join(f"{h:>{w}}" for _, h, w, _ in numbers))
        for row in self.rows:
            cells = " ".join(f"{row[key]:>{w}{fmt}}" for key, _, w, fmt in numbers)
            print(f"{row[label]:<{width}} {cells}", flush=True)
