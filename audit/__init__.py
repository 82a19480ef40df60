"""The append-only audit log. `audit.record(...)` is the one way to write it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from audit.models import AuditEvent


def record(**kwargs: Any) -> AuditEvent:
    """Append one audit event; see `audit.services.record_audit` for the arguments."""
    # Imported here so `import audit` works before the app registry is ready.
    from audit.services import record_audit

    return record_audit(**kwargs)
