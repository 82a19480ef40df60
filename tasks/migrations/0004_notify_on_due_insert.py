"""Wake idle workers whenever due work is inserted, whoever inserts it.

A statement-level trigger sends one NOTIFY per INSERT statement that adds a due, queued
occurrence (a batch of 1,000 costs one notification). NOTIFY is delivered at commit, so a
worker never wakes for a row it cannot see yet.
"""

from django.db import migrations

FORWARD = """
CREATE FUNCTION occurrence_notify_due() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted WHERE state = 'queued' AND run_at <= now()) THEN
        PERFORM pg_notify('ordinaut_occurrences', '');
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER occurrence_notify_due
    AFTER INSERT ON tasks_occurrence
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION occurrence_notify_due();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS occurrence_notify_due ON tasks_occurrence;
DROP FUNCTION IF EXISTS occurrence_notify_due();
"""


class Migration(migrations.Migration):
    dependencies = [("tasks", "0003_worker_heartbeat")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
