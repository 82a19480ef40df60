#!/usr/bin/env bash
# Restore a dump made by ops/backup.sh into the EMPTY database named by DATABASE_URL, then
# check it: every migration applied, the audit chain intact, and the row counts printed.
#
#   DATABASE_URL=postgresql://.../ordinaut_restored ops/restore.sh /var/backups/ordinaut/ordinaut-20261203T020000Z.dump
#
# Create the database first (createdb, or CREATE DATABASE ... OWNER ordinaut_owner) and run
# this as its owner role. Refuses a database that already has tables: a restore never merges.
# The checks run `python manage.py` from this checkout (PYTHON; default the checkout's .venv,
# else python3; the app's settings must be in the environment, as for any manage.py command).
set -euo pipefail

file="${1:?usage: ops/restore.sh FILE (a dump made by ops/backup.sh)}"
: "${DATABASE_URL:?DATABASE_URL is required (an empty database to restore into)}"
[ -r "$file" ] || { echo "restore: cannot read $file" >&2; exit 2; }
here="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
    python=python3
    [ -x "$here/.venv/bin/python" ] && python="$here/.venv/bin/python"
fi

tables="$(psql "$DATABASE_URL" -XAtqc "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")"
if [ "$tables" != 0 ]; then
    echo "restore: the target database already has $tables tables; restore into a new, empty database" >&2
    exit 2
fi

echo "restore: $file -> $(psql "$DATABASE_URL" -XAtqc 'SELECT current_database()')" >&2
pg_restore --list "$file" >/dev/null
started=$SECONDS
# One transaction: a failed restore leaves the database empty, not half-filled.
pg_restore --no-owner --no-privileges --exit-on-error --single-transaction \
    --dbname="$DATABASE_URL" "$file"
echo "restore: loaded in $((SECONDS - started)) s; checking" >&2

(cd "$here" && DATABASE_URL="$DATABASE_URL" "$python" manage.py migrate --check) \
    || { echo "restore: manage.py migrate --check failed: migrations not all applied (an older dump? run manage.py migrate) or the app cannot start (see above)" >&2; exit 1; }
(cd "$here" && DATABASE_URL="$DATABASE_URL" "$python" manage.py verifyaudit) >&2

psql "$DATABASE_URL" -XAtq -F ' ' <<'SQL'
SELECT 'agents', count(*) FROM agents_agent
UNION ALL SELECT 'tasks', count(*) FROM tasks_task
UNION ALL SELECT 'occurrences', count(*) FROM tasks_occurrence
UNION ALL SELECT 'runs', count(*) FROM tasks_run
UNION ALL SELECT 'audit_events', count(*) FROM audit_auditevent;
SQL
echo "restore: done" >&2
