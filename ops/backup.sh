#!/usr/bin/env bash
# Back up Ordinaut's database: one pg_dump in custom format per call, the last BACKUP_KEEP kept.
#
#   DATABASE_URL=postgresql://... BACKUP_DIR=/var/backups/ordinaut ops/backup.sh
#
# Environment:
#   DATABASE_URL        the database to dump (libpq URL; the app's own is fine: SELECT is enough)
#   BACKUP_DIR          where ordinaut-<UTC timestamp>.dump files go (created if missing)
#   BACKUP_KEEP         how many dumps to keep, newest first (default 14)
#   BACKUP_UPLOAD_HOOK  optional command run with the new dump's path (copy it off the host:
#                       e.g. "aws s3 cp --only-show-errors" or a script of yours); a failing
#                       hook fails the backup, so the dump is never silently left local only
#
# Uses the pg_dump found on PATH; it must be at least as new as the server. Prints the path of
# the dump on stdout (progress on stderr), exits non-zero on any failure, and never leaves a
# partial file under the final name.
set -euo pipefail

: "${DATABASE_URL:?DATABASE_URL is required (the database to back up)}"
: "${BACKUP_DIR:?BACKUP_DIR is required (where to write the dump)}"
keep="${BACKUP_KEEP:-14}"
case "$keep" in '' | *[!0-9]* | 0) echo "backup: BACKUP_KEEP must be a positive integer" >&2; exit 2 ;; esac

mkdir -p "$BACKUP_DIR"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
target="$BACKUP_DIR/ordinaut-$stamp.dump"
partial="$target.partial"
trap 'rm -f "$partial"' EXIT

echo "backup: $(pg_dump --version) -> $target" >&2
started=$SECONDS
# Custom format: compressed, restorable table by table, and checked by pg_restore --list.
# --no-owner/--no-privileges: the restore target's roles may differ (see ops/README.md).
pg_dump --format=custom --compress=6 --no-owner --no-privileges --file="$partial" "$DATABASE_URL"
pg_restore --list "$partial" >/dev/null
mv "$partial" "$target"
echo "backup: $(du -h "$target" | cut -f1) in $((SECONDS - started)) s" >&2

# Rotation: newest first; everything after the first $keep goes.
mapfile -t old < <(ls -1t "$BACKUP_DIR"/ordinaut-*.dump | tail -n +"$((keep + 1))")
for file in "${old[@]}"; do
    echo "backup: removing $file (BACKUP_KEEP=$keep)" >&2
    rm -f -- "$file"
done

if [ -n "${BACKUP_UPLOAD_HOOK:-}" ]; then
    echo "backup: upload hook" >&2
    # Word-split on purpose: the hook is a command line with its own arguments.
    # shellcheck disable=SC2086
    $BACKUP_UPLOAD_HOOK "$target"
fi
echo "$target"
