"""Production settings refuse insecure configuration; both DATABASE_URL forms work everywhere."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from ordinaut.database import database_settings
from tests.conftest import command_env, run_manage

GOOD_KEY = "k" * 50
PROBE = (
    "from django.conf import settings; from django.db import connection; "
    "from ordinaut.database import raw_connection; "
    "cur = connection.cursor(); cur.execute('SELECT current_database()'); "
    "dbname = cur.fetchone()[0]; "
    "raw = raw_connection(); raw.execute('LISTEN probe'); "
    "cur.execute(\"NOTIFY probe, 'hello'\"); "
    "note = next(raw.notifies(timeout=5)); "
    "print(dbname, note.payload, settings.SECURE_SSL_REDIRECT, "
    "settings.SECURE_HSTS_SECONDS, settings.DEBUG)"
)


def start_django(**env):
    """Run a management command in a fresh process with exactly these settings."""
    return run_manage("check", env=command_env(**env))


def test_production_without_secret_key_refuses_to_start():
    result = start_django(DEBUG="0", DATABASE_URL="postgresql://u:p@127.0.0.1:1/db")
    assert result.returncode != 0
    assert "SECRET_KEY must be set to at least 50" in result.stderr


def test_production_with_short_secret_key_refuses_to_start():
    result = start_django(
        DEBUG="0", SECRET_KEY="k" * 49, DATABASE_URL="postgresql://u:p@127.0.0.1:1/db"
    )
    assert result.returncode != 0
    assert "SECRET_KEY must be set to at least 50" in result.stderr


def test_production_without_database_url_refuses_to_start():
    result = start_django(DEBUG="0", SECRET_KEY=GOOD_KEY)
    assert result.returncode != 0
    assert "DATABASE_URL is required when DEBUG is off" in result.stderr


def test_sqlite_is_refused():
    result = start_django(DEBUG="0", SECRET_KEY=GOOD_KEY, DATABASE_URL="sqlite:///db.sqlite3")
    assert result.returncode != 0
    assert "must be a postgresql:// URL" in result.stderr


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("form", ["tcp", "socket"])
def test_production_config_runs_on_both_url_forms_including_listen(servers, form):
    from django.db import connection

    name = connection.settings_dict["NAME"]
    url = servers.POSTGRES.tcp_url(name) if form == "tcp" else servers.POSTGRES.socket_url(name)
    result = run_manage(
        "shell",
        "-c",
        PROBE,
        env=command_env(DEBUG="0", SECRET_KEY=GOOD_KEY, DATABASE_URL=url, REDIS_URL=""),
    )
    assert result.returncode == 0, result.stderr
    # Plain HTTP by default: TLS redirect and HSTS are opt-in.
    assert result.stdout.split()[-5:] == [name, "hello", "False", "0", "False"]


def test_socket_url_puts_host_and_port_where_every_client_sees_them():
    config = database_settings("postgresql://postgres:@/ordinaut?host=/run/pg&port=5433")
    assert (config["HOST"], config["PORT"], config["NAME"], config["USER"]) == (
        "/run/pg",
        "5433",
        "ordinaut",
        "postgres",
    )
    assert "host" not in config["OPTIONS"]


def test_tcp_url_keeps_credentials_and_options():
    config = database_settings("postgresql://u:p%40ss@db.example:5432/ordinaut?sslmode=require")
    assert (config["HOST"], config["PORT"], config["PASSWORD"]) == ("db.example", 5432, "p@ss")
    assert config["OPTIONS"]["sslmode"] == "require"


def test_url_without_database_name_is_refused():
    with pytest.raises(ImproperlyConfigured, match="must name a database"):
        database_settings("postgresql://u:p@db.example:5432/")


ADMIN_PROBE = (
    "import sys; from django.contrib import admin; from django.core.checks import run_checks; "
    "import tasks.worker; "
    "print('tasks.admin' in sys.modules, len(admin.site._registry)); "
    "run_checks(tags=['admin']); "
    "print('tasks.admin' in sys.modules, len(admin.site._registry))"
)


def test_admin_modules_load_with_the_urlconf_or_the_checks_not_at_start_up():
    env = command_env(
        DEBUG="0", SECRET_KEY=GOOD_KEY, DATABASE_URL="postgresql://u:p@127.0.0.1:1/db"
    )
    result = run_manage("shell", "-c", ADMIN_PROBE, env=env)
    assert result.returncode == 0, result.stderr
    started, checked = result.stdout.splitlines()[-2:]
    # A worker (which imports no URLconf) never pays for the admin's modules...
    assert started == "False 0"
    # ...and `manage.py check` still checks every registered ModelAdmin.
    loaded, registered = checked.split()
    assert loaded == "True"
    assert int(registered) >= 10


@pytest.mark.django_db
def test_the_urlconf_registers_the_admin(admin_client):
    from django.contrib import admin

    from tasks.models import Task

    assert admin_client.get("/admin/tasks/task/").status_code == 200
    assert Task in admin.site._registry
