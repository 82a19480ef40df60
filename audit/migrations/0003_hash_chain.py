"""A tamper-evident audit log: every row carries the hash of the one before it.

On INSERT a trigger takes a transaction-scoped advisory lock (so concurrent writers append
one after another and the chain never forks), gives the row the next id *under that lock*
(so id order is chain order), and sets `prev_hash` to the last row's `hash` and `hash` to
SHA-256 over prev_hash and the row's canonical fields (`audit_event_hash`). A row changed
or removed behind the app's back (as the table owner, with the append-only trigger off)
no longer matches: `manage.py verifyaudit` walks the chain and names it.

Existing rows are chained here in id order. The TRUNCATE escape hatch of 0002 is honoured
only in a test database (Django names those `test_*`), whatever the session sets.
"""

from django.db import migrations, models

FORWARD = """
CREATE FUNCTION audit_event_hash(prev text, e audit_auditevent) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT encode(sha256(convert_to(prev || '|' || jsonb_build_object(
        'id', e.id,
        'at', to_char(e.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'actor_type', e.actor_type, 'actor_id', e.actor_id, 'actor_name', e.actor_name,
        'action', e.action, 'subject_type', e.subject_type, 'subject_id', e.subject_id,
        'details', e.details, 'correlation_id', e.correlation_id)::text, 'UTF8')), 'hex')
$$;

CREATE FUNCTION audit_chain() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('ordinaut.audit_chain'));
    NEW.id := nextval(pg_get_serial_sequence('audit_auditevent', 'id'));
    NEW.prev_hash := coalesce(
        (SELECT hash FROM audit_auditevent ORDER BY id DESC LIMIT 1), '');
    NEW.hash := audit_event_hash(NEW.prev_hash, NEW);
    RETURN NEW;
END;
$$;

ALTER TABLE audit_auditevent DISABLE TRIGGER audit_append_only;
DO $$
DECLARE
    e audit_auditevent;
    last text := '';
BEGIN
    FOR e IN SELECT * FROM audit_auditevent ORDER BY id LOOP
        e.prev_hash := last;
        last := audit_event_hash(last, e);
        UPDATE audit_auditevent SET prev_hash = e.prev_hash, hash = last WHERE id = e.id;
    END LOOP;
END;
$$;
ALTER TABLE audit_auditevent ENABLE TRIGGER audit_append_only;

CREATE TRIGGER audit_chain BEFORE INSERT ON audit_auditevent
    FOR EACH ROW EXECUTE FUNCTION audit_chain();

CREATE OR REPLACE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' AND current_setting('ordinaut.audit_truncate', true) = 'on'
       AND current_database() LIKE 'test\\_%' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'audit log is append-only: % on % is not allowed', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
"""

BACKWARD = """
DROP TRIGGER IF EXISTS audit_chain ON audit_auditevent;
DROP FUNCTION IF EXISTS audit_chain();
DROP FUNCTION IF EXISTS audit_event_hash(text, audit_auditevent);
"""


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0002_append_only_trigger"),
    ]

    operations = [
        migrations.AddField(
            model_name="auditevent",
            name="hash",
            field=models.CharField(blank=True, default="", editable=False, max_length=64),
        ),
        migrations.AddField(
            model_name="auditevent",
            name="prev_hash",
            field=models.CharField(blank=True, default="", editable=False, max_length=64),
        ),
        migrations.RunSQL(FORWARD, BACKWARD),
    ]
