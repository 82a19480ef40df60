"""Wake idle workers whenever work is queued, whoever inserts it; and index queued run_at
values so an idle worker can sleep exactly until the next one is due.

A statement-level trigger sends one NOTIFY per INSERT statement that adds a queued
occurrence (a batch of 1,000 costs one notification). NOTIFY is delivered at commit, so a
worker never wakes for a row it cannot see yet.
"""

from django.db import migrations, models

FORWARD = """
CREATE FUNCTION occurrence_notify_due() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Future rows too: a sleeping worker then re-reads the earliest run_at and sets its
    -- timer, so work queued ahead of time starts at its instant, not at the next poll.
    IF EXISTS (SELECT 1 FROM inserted WHERE state = 'queued') THEN
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

    operations = [
        migrations.RunSQL(FORWARD, BACKWARD),
        migrations.AddIndex(
            model_name="occurrence",
            index=models.Index(
                condition=models.Q(("state", "queued")),
                fields=["run_at"],
                name="occurrence_due_idx",
            ),
        ),
    ]
