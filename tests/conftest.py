"""Session plumbing: the servers from tests/settings.py, and helpers to run our commands."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Variables tests/settings.py sets for this process; a child gets only what a test passes.
_SETTINGS_VARIABLES = {"DJANGO_SETTINGS_MODULE", "DEBUG", "SECRET_KEY", "DATABASE_URL", "REDIS_URL"}


def pytest_unconfigure(config: pytest.Config) -> None:
    settings_module = sys.modules.get("tests.settings")
    if settings_module is not None:
        settings_module.POSTGRES.destroy()
        settings_module.REDIS.destroy()
        import shutil

        shutil.rmtree(settings_module.TEST_ROOT, ignore_errors=True)


@pytest.fixture(scope="session")
def servers():
    """The session's EmbeddedPostgres and EmbeddedRedis (tests may stop and restart them)."""
    from tests import settings as test_settings

    return test_settings


@pytest.fixture
def test_database_url(django_db_setup) -> str:
    """TCP URL of the test database (the one pytest-django created and migrated)."""
    from django.db import connection

    from tests import settings as test_settings

    return test_settings.POSTGRES.tcp_url(connection.settings_dict["NAME"])


def command_env(**overrides: str) -> dict[str, str]:
    """Environment for a child `manage.py` process: production-style, no .env file."""
    env = {key: value for key, value in os.environ.items() if key not in _SETTINGS_VARIABLES}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "ordinaut.settings",
            "ORDINAUT_ENV_FILE": "",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(overrides)
    return env


def wait_for(predicate: Callable[[], object], timeout: float, message: str) -> None:
    """Poll `predicate` until it is true; AssertionError(`message`) after `timeout` seconds.

    For events that take milliseconds in another thread or process: a passing test only
    waits that long, the timeout is only reached when the behaviour is broken.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.05)


def run_manage(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `python manage.py <args>` in a child process and capture its output."""
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


class Processes:
    """Child processes started by `processes`, their output in one file."""

    def __init__(self, commands: list[list[str]], env: dict[str, str]) -> None:
        self._log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed by stop)
        self._final: str | None = None
        self.started = [
            subprocess.Popen(command, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
            for command in commands
        ]

    def output(self) -> str:
        """Everything they wrote so far (after `stop`, all they ever wrote)."""
        if self._final is not None:
            return self._final
        self._log.seek(0)
        return self._log.read()

    def stop(self) -> None:
        for process in self.started:
            process.terminate()
        for process in self.started:
            process.wait(timeout=30)
        self._final = self.output()
        self._log.close()


@contextlib.contextmanager
def processes(commands: list[list[str]], env: dict[str, str]) -> Iterator[Processes]:
    """Run `commands` from the repository root with `env` for the block; terminate and reap
    every one at its end, whatever happened."""
    running = Processes(commands, env)
    try:
        yield running
    finally:
        running.stop()


def pipeline_threads_gone(timeout: float = 15) -> None:
    """Wait for a stopped worker's pool threads ("run_N") to exit, then collect garbage.

    Their database connections close only when the thread's storage is collected; a test
    database cannot be dropped while one is open.
    """
    import gc
    import threading

    wait_for(
        lambda: not any(t.name.startswith("run") for t in threading.enumerate()),
        timeout, "pipeline threads outlived the worker",
    )  # fmt: skip
    gc.collect()
