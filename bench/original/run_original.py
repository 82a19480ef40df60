"""Run the original FastAPI Ordinaut (yoda-digital/ordinaut) for bench/api.py's side-by-side mode.

    .venv/bin/python bench/original/run_original.py seed --dsn DSN [--tasks 10000] [--runs 3000]
    .venv/bin/python bench/original/run_original.py serve --dsn DSN --port P [--workers 5]

Run with any interpreter, the script first makes sure of two gitignored things, then
re-executes itself in bench/.venv-original:

- bench/.original/src: the original's tree, `git archive HEAD` of a mirror of
  github.com/yoda-digital/ordinaut (ORIGINAL_MIRROR, a bare git directory; default the
  session's fetch location), plus `observability/` from the commit before c3d5e51 — that
  commit deleted the package while api/main.py and api/auth.py still import it, so HEAD
  cannot start without it — and, in api/schemas.py, `orm_mode = True` renamed to its
  pydantic 2 name `from_attributes = True`: under its own pin (pydantic 2.8.2) the old name
  is ignored with a warning and every read endpoint answers 500. Nothing else is changed.
- bench/.venv-original: `python -m venv` + `pip install -r bench/original/requirements.txt`
  (the original's own requirements.txt pins, which install on Python 3.12, plus what they
  resolved to here).

seed: the original's schema (migrations/version_0001.sql, as its compose file loads it,
    minus its two CREATE EXTENSION lines: see seed()) into an empty database, one agent,
    `--tasks` active tasks plus a tenth as many paused ones, `--runs` finished runs spread
    over them; VACUUM ANALYZE. Prints one JSON line: the agent id, an access token minted by
    the original's own JWTManager, and a task id.
serve: exec uvicorn as its Dockerfile does (`uvicorn api.main:app`), on 127.0.0.1 only, with
    `--workers` processes, rate limiting off (RATE_LIMIT_ENABLED=false, as bench/api.py
    raises Ordinaut's limits) and `--log-level warning`. Its own per-request JSON log line at
    INFO is hard-wired; the caller sends it to /dev/null.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SRC = ROOT / "bench" / ".original" / "src"
VENV = ROOT / "bench" / ".venv-original"
VENV_PYTHON = VENV / "bin" / "python"
REQUIREMENTS = HERE / "requirements.txt"
MIRROR = os.environ.get("ORIGINAL_MIRROR", "/work/.mirror/yoda-digital+ordinaut/repo")
# The commit that removed observability/ (still imported by api/); its parent has it.
OBSERVABILITY_FROM = "c3d5e51^"
JWT_SECRET = "bench-original-" + "x" * 40
PIPELINE = {"pipeline": [{"id": "hello", "uses": "debug.echo", "with": {"x": 1}}]}


def ensure_tree() -> None:
    """Export the original's tree into bench/.original/src unless it is there."""
    if (SRC / "api" / "main.py").exists():
        return
    if not Path(MIRROR).exists():
        sys.exit(f"no mirror of yoda-digital/ordinaut at {MIRROR} (set ORIGINAL_MIRROR)")
    SRC.mkdir(parents=True, exist_ok=True)
    for treeish, paths in (("HEAD", []), (OBSERVABILITY_FROM, ["observability"])):
        archive = subprocess.run(
            ["git", f"--git-dir={MIRROR}", "archive", treeish, *paths],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(SRC)], input=archive, check=True)
    # Its response models say `orm_mode = True` (pydantic 1) under its pinned pydantic 2.8.2,
    # which only warns about the old name: every `from_orm` — all its reads — answers 500.
    # `from_attributes` is the same setting under its pydantic 2 name.
    schemas = SRC / "api" / "schemas.py"
    schemas.write_text(schemas.read_text().replace("orm_mode = True", "from_attributes = True"))


def ensure_venv() -> None:
    """Re-execute in bench/.venv-original (created on first use) unless already running there."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    ensure_tree()
    if not VENV_PYTHON.exists():
        print("creating bench/.venv-original ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [str(VENV_PYTHON), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
            check=True,
            stdout=sys.stderr,
        )
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]])  # noqa: S606


def original_env(dsn: str, redis_url: str = "") -> dict[str, str]:
    """The environment the original reads (its names), pointing at `dsn`."""
    return {
        **os.environ,
        "DATABASE_URL": dsn,
        # Its import-time Redis clients need a URL; without one it would try localhost.
        "REDIS_URL": redis_url or "disabled://",
        "JWT_SECRET_KEY": JWT_SECRET,
        "ENVIRONMENT": "production",
        "DEBUG": "false",
        "RATE_LIMIT_ENABLED": "false",
        "PYTHONPATH": str(SRC),
    }


def seed(dsn: str, tasks: int, runs: int) -> dict[str, str]:
    """Schema, agent, tasks and runs through the original's own tables; its token."""
    import psycopg

    # The embedded PostgreSQL has no contrib modules. The schema asks for pgcrypto and
    # uuid-ossp but calls neither: its only generator, gen_random_uuid(), is core since 13.
    schema = "\n".join(
        line
        for line in (SRC / "migrations" / "version_0001.sql").read_text().splitlines()
        if not line.startswith("CREATE EXTENSION")
    )
    payload = json.dumps(PIPELINE)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(schema)
        agent_id = conn.execute(
            "INSERT INTO agent (name, scopes) VALUES ('bench', %s) RETURNING id",
            (["tasks:read", "tasks:write", "runs:read"],),
        ).fetchone()[0]
        # Active and paused tasks one second apart, so "newest first" is a total order.
        conn.execute(
            "INSERT INTO task (title, description, created_by, schedule_kind, schedule_expr,"
            " payload, status, created_at)"
            " SELECT 'bench ' || i, 'bench', %(agent)s, 'cron', '*/5 * * * *', %(payload)s,"
            " CASE WHEN i %% 11 = 0 THEN 'paused' ELSE 'active' END,"
            " now() - make_interval(secs => i)"
            " FROM generate_series(1, %(n)s) i",
            {"agent": agent_id, "payload": payload, "n": tasks + tasks // 10},
        )
        conn.execute(
            "INSERT INTO task_run (task_id, started_at, finished_at, success, attempt, output)"
            " SELECT t.id, now(), now(), true, 1, jsonb_build_object('i', r.i)"
            " FROM generate_series(1, %(n)s) r(i)"
            " JOIN (SELECT id, row_number() OVER (ORDER BY id) AS k FROM task) t"
            " ON t.k = 1 + r.i %% %(tasks)s",
            {"n": runs, "tasks": tasks},
        )
        conn.execute("VACUUM ANALYZE")
        task_id = conn.execute("SELECT id FROM task ORDER BY created_at DESC LIMIT 1").fetchone()[0]
    os.environ.update(original_env(dsn))
    sys.path.insert(0, str(SRC))
    from api.auth import jwt_manager  # the original's token, as its /agents/auth would mint
    from api.dependencies import SessionLocal
    from api.models import Agent

    with SessionLocal() as session:
        agent = session.get(Agent, agent_id)
        token = jwt_manager.generate_tokens(agent).access_token
    return {"agent_id": str(agent_id), "token": token, "task_id": str(task_id)}


def serve(dsn: str, port: int, workers: int, redis_url: str) -> None:
    """Replace this process with uvicorn serving the original on 127.0.0.1:`port`."""
    os.chdir(SRC)
    args = [
        str(VENV_PYTHON), "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1",
        "--port", str(port), "--workers", str(workers), "--log-level", "warning",
    ]  # fmt: skip
    os.execve(args[0], args, original_env(dsn, redis_url))  # noqa: S606


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    seeding = commands.add_parser("seed")
    seeding.add_argument("--dsn", required=True)
    seeding.add_argument("--tasks", type=int, default=10_000)
    seeding.add_argument("--runs", type=int, default=3_000)
    serving = commands.add_parser("serve")
    serving.add_argument("--dsn", required=True)
    serving.add_argument("--port", type=int, required=True)
    serving.add_argument("--workers", type=int, default=5)
    serving.add_argument("--redis-url", default="")
    args = parser.parse_args()
    ensure_venv()
    if args.command == "seed":
        print(json.dumps(seed(args.dsn, args.tasks, args.runs)), flush=True)
    else:
        serve(args.dsn, args.port, args.workers, args.redis_url)


if __name__ == "__main__":
    main()
