"""`manage.py verifyaudit`: walk the audit log's hash chain and say whether it holds."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import connection

# The database recomputes each row's hash with the trigger's own function, so the check
# and the writer can never disagree on how a row is serialised.
WALK = """
SELECT e.id, e.prev_hash, e.hash, audit_event_hash(e.prev_hash, e)
FROM audit_auditevent AS e
ORDER BY e.id
"""
PROGRESS_EVERY = 100_000


class Command(BaseCommand):
    help = (
        "Verify the audit log's hash chain: exit 0 with the number of events, or non-zero "
        "naming the first event whose hash or link to the one before does not match."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        previous_id, previous_hash, count = None, "", 0
        with connection.chunked_cursor() as cursor:
            cursor.execute(WALK)
            for event_id, prev_hash, stored, expected in cursor:
                if prev_hash != previous_hash:
                    after = f"event {previous_id}" if previous_id else "the start of the log"
                    raise CommandError(
                        f"audit chain broken at event {event_id}: its prev_hash does not "
                        f"match {after} (an event before it was changed or removed)"
                    )
                if stored != expected:
                    raise CommandError(
                        f"audit chain broken at event {event_id}: its hash does not match "
                        "its fields (the event was changed)"
                    )
                previous_id, previous_hash, count = event_id, stored, count + 1
                if count % PROGRESS_EVERY == 0:
                    self.stderr.write(f"... {count} events verified")
        self.stdout.write(f"audit chain intact: {count} events")
