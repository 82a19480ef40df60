"""NOTIFY ordinaut_auth when anything that decides authentication changes (agents.auth_cache).

Statement-level, payload-free: a web process drops its whole credential cache, and changes
are rare. Credential updates notify only for the columns that matter, so the periodic
`last_used_at` touch does not flush every process's cache.
"""

from django.db import migrations

FORWARD = """
CREATE FUNCTION ordinaut_auth_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ordinaut_auth', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER agent_auth_changed
    AFTER UPDATE OR DELETE ON agents_agent
    FOR EACH STATEMENT EXECUTE FUNCTION ordinaut_auth_changed();
CREATE TRIGGER agent_auth_truncated
    AFTER TRUNCATE ON agents_agent
    FOR EACH STATEMENT EXECUTE FUNCTION ordinaut_auth_changed();

CREATE TRIGGER credential_auth_changed
    AFTER UPDATE OF agent_id, kind, key_id, secret_hash, expires_at, revoked_at OR DELETE
    ON agents_credential
    FOR EACH STATEMENT EXECUTE FUNCTION ordinaut_auth_changed();
CREATE TRIGGER credential_auth_truncated
    AFTER TRUNCATE ON agents_credential
    FOR EACH STATEMENT EXECUTE FUNCTION ordinaut_auth_changed();

CREATE TRIGGER revoked_token_auth_changed
    AFTER INSERT OR UPDATE OR DELETE ON agents_revokedtoken
    FOR EACH STATEMENT EXECUTE FUNCTION ordinaut_auth_changed();
CREATE TRIGGER revoked_token_auth_truncated
    AFTER TRUNCATE ON agents_revokedtoken
    FOR EACH STATEMENT EXECUTE FUNCTION ordinaut_auth_changed();
"""

BACKWARD = """
DROP TRIGGER revoked_token_auth_truncated ON agents_revokedtoken;
DROP TRIGGER revoked_token_auth_changed ON agents_revokedtoken;
DROP TRIGGER credential_auth_truncated ON agents_credential;
DROP TRIGGER credential_auth_changed ON agents_credential;
DROP TRIGGER agent_auth_truncated ON agents_agent;
DROP TRIGGER agent_auth_changed ON agents_agent;
DROP FUNCTION ordinaut_auth_changed();
"""


class Migration(migrations.Migration):
    dependencies = [("agents", "0002_revoked_token")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
