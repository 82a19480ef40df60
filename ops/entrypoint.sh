#!/bin/sh
# The image's entry point: one role per container.
#
#   web         gunicorn on $BIND (default 0.0.0.0:$PORT), $WEB_CONCURRENCY workers (default 2);
#               sync workers behind a proxy, WEB_THREADS=4 (gthread) when exposed directly
#   scheduler   manage.py runscheduler (extra arguments passed on, e.g. --metrics-port 9101)
#   worker      manage.py runworker    (e.g. --concurrency 8 --metrics-port 9102)
#   migrate     manage.py migrate (run once before the others start; idempotent)
#   mcp         manage.py runmcp (the MCP server; arguments passed on)
#   manage ...  any manage.py command (createagent, verifyaudit, ...)
#   anything else runs as a command (sh, python ...)
set -eu
role="${1:-web}"
[ "$#" -gt 0 ] && shift

case "$role" in
    web)
        exec gunicorn ordinaut.wsgi \
            --bind "${BIND:-0.0.0.0:${PORT:-8000}}" \
            --workers "${WEB_CONCURRENCY:-2}" \
            --threads "${WEB_THREADS:-1}" \
            --access-logfile - \
            --forwarded-allow-ips "${FORWARDED_ALLOW_IPS:-127.0.0.1}" \
            "$@"
        ;;
    scheduler) exec python manage.py runscheduler "$@" ;;
    worker) exec python manage.py runworker "$@" ;;
    migrate) exec python manage.py migrate --noinput "$@" ;;
    mcp) exec python manage.py runmcp "$@" ;;
    manage) exec python manage.py "$@" ;;
    *) exec "$role" "$@" ;;
esac
