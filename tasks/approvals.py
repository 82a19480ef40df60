"""Human approvals: parking a run on a request, who may decide it, deciding, expiring.

A pipeline step `approval.request` ends its attempt with an `ApprovalRequest`; the worker
hands it to `park_request`, which turns it into the queue's `Park` (defaults and limits
applied here, so the queue only stores it). `tasks.queue.finish` parks the occurrence and
inserts the Approval in one statement. A decision — `approval_decide` (REST, MCP, admin)
or `approval_expire_due` (the scheduler) — writes it onto the parked step and requeues the
occurrence, whose next attempt resumes at that step.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from agents.models import Agent
from audit import record
from audit.services import Actor
from ordinaut.errors import Conflict, Forbidden, InvalidInput, NotFound
from pipelines.executor import record_decision
from pipelines.tools.base import ApprovalRequest
from tasks import queue as occurrence_queue
from tasks.channels import WORKER_CHANNEL, notify
from tasks.delivery.outbox import outbox_add
from tasks.models import Approval, ApprovalStatus
from tasks.validation import text_field

# The approval's context is an excerpt: a decider reads it, it is not the data itself.
CONTEXT_EXCERPT_CHARS = 4000

_DECISIONS = {
    "approve": ApprovalStatus.APPROVED,
    "approved": ApprovalStatus.APPROVED,
    "reject": ApprovalStatus.REJECTED,
    "rejected": ApprovalStatus.REJECTED,
}


def park_request(request: ApprovalRequest) -> occurrence_queue.Park:
    """What the queue stores for a run parked on `request`: excerpted context, an expiry."""
    context = request.context
    text = json.dumps(context, default=str)
    if len(text) > CONTEXT_EXCERPT_CHARS:
        context = {"excerpt": text[:CONTEXT_EXCERPT_CHARS], "truncated": True}
    expires_in = request.expires_in_seconds or settings.APPROVAL_DEFAULT_EXPIRES_SECONDS
    return occurrence_queue.Park(
        step_id=request.step_id or "approval",
        prompt=request.prompt or "",
        context=context,
        approvers=list(request.approvers or []),
        expires_in_seconds=float(expires_in),
    )


def may_decide(approval: Approval, agent: Agent, *, is_admin: bool) -> bool:
    """Whether `agent` is among the approval's deciders.

    An approval naming `approvers` (agent names or ids) is for them; one naming nobody is
    for operators only — agents holding `admin` (here) and admin users with the
    `tasks.decide_approval` permission (the console). Otherwise any agent holding
    approvals:decide could read and decide every other agent's gated steps.
    """
    if is_admin:
        return True
    return agent.name in approval.approvers or str(agent.pk) in approval.approvers


def _locked_approval(approval_id: Any) -> Approval:
    try:
        return Approval.objects.select_for_update().select_related("task").get(pk=approval_id)
    except (Approval.DoesNotExist, ValueError, TypeError, ValidationError) as exc:
        raise NotFound(f"approval {approval_id} not found") from exc


def _settle(
    approval: Approval, *, status: str, decided_by: str, comment: str, now: datetime
) -> bool:
    """Record the decision on the approval and on the parked step, and requeue the run."""
    approval.status = status
    approval.decided_by = decided_by
    approval.comment = comment
    approval.decided_at = now
    # Conditional on pending: the row is locked, this is the backstop of that check.
    updated = Approval.objects.filter(pk=approval.pk, status=ApprovalStatus.PENDING).update(
        status=status, decided_by=decided_by, comment=comment, decided_at=now
    )
    if updated != 1:
        raise Conflict(f"approval {approval.pk} was decided meanwhile")
    record_decision(
        run_id=approval.run_id,
        step_id=approval.step_id,
        decision={
            "status": status,
            "decided_by": decided_by,
            "comment": comment,
            "decided_at": now.isoformat(),
        },
    )
    resumed = occurrence_queue.resume(approval.occurrence_id)
    outbox_add(
        type=f"approval.{status}",
        task_id=approval.task_id,
        run_id=approval.run_id,
        data={"approval_id": str(approval.pk), "decided_by": decided_by},
    )
    notify(WORKER_CHANNEL)
    return resumed


def _check_decider(approval: Approval, agent: Agent, *, is_admin: bool) -> None:
    """Raise NotFound for a non-decider, Forbidden for self-decision (unless allowed)."""
    if not may_decide(approval, agent, is_admin=is_admin):
        raise NotFound(f"approval {approval.pk} not found")
    own = approval.task.created_by_id == agent.pk
    if own and not is_admin and not settings.APPROVALS_ALLOW_SELF_DECISION:
        raise Forbidden("an agent may not decide its own task's approval request")


def _check_pending(approval: Approval, now: datetime) -> None:
    """Raise Conflict (409) for an approval already decided or past its expiry."""
    if approval.status != ApprovalStatus.PENDING:
        raise Conflict(
            f"approval is already {approval.status}; it cannot be decided again",
            details={"status": approval.status},
        )
    if approval.expires_at <= now:
        raise Conflict(
            f"approval expired at {approval.expires_at.isoformat()}; it cannot be decided",
            details={"status": "expired"},
        )


def approval_decide(
    *,
    approval_id: Any,
    decision: str,
    actor: Actor,
    comment: str = "",
    agent: Agent | None = None,
    is_admin: bool = False,
    now: datetime | None = None,
) -> Approval:
    """Approve or reject a pending approval; the parked run resumes as its next attempt.

    `agent` is the deciding agent (None for an operator in the admin). Raises NotFound for an
    unknown approval or one the agent is not a decider of, Forbidden for an agent deciding
    its own task's request (unless APPROVALS_ALLOW_SELF_DECISION), Conflict (409) for one
    already decided or expired, InvalidInput for a decision other than approve/reject.
    """
    status = _DECISIONS.get(str(decision).lower())
    if status is None:
        raise InvalidInput(
            "decision: must be approve or reject", details={"decision": ["approve or reject"]}
        )
    text_field("comment", comment, max_length=2000, required=False)
    now = now or timezone.now()
    with transaction.atomic():
        approval = _locked_approval(approval_id)
        if agent is not None:
            _check_decider(approval, agent, is_admin=is_admin)
        _check_pending(approval, now)
        decided_by = actor.name or actor.id
        _settle(approval, status=status, decided_by=decided_by, comment=comment or "", now=now)
        record(
            actor=actor,
            action=f"approval.{status}",
            subject=approval,
            details={
                "task_id": approval.task_id,
                "run_id": approval.run_id,
                "step_id": approval.step_id,
                "comment": comment or "",
            },
        )
    return approval


def approval_expire_due(*, now: datetime | None = None, limit: int = 100) -> int:
    """Expire pending approvals past their expires_at (the scheduler calls this each tick).

    Expiry is a decision like a rejection: the run resumes and sees status `expired`.
    SKIP LOCKED lets several schedulers share the work and never waits on a decider.
    """
    now = now or timezone.now()
    expired = 0
    with transaction.atomic():
        due = list(
            Approval.objects.select_for_update(skip_locked=True)
            .filter(status=ApprovalStatus.PENDING, expires_at__lte=now)
            .order_by("expires_at")[:limit]
        )
        for approval in due:
            _settle(
                approval, status=ApprovalStatus.EXPIRED, decided_by="system:scheduler",
                comment="expired without a decision", now=now,
            )  # fmt: skip
            record(
                actor=Actor.system("scheduler"),
                action="approval.expired",
                subject=approval,
                details={"task_id": approval.task_id, "run_id": approval.run_id},
            )
            expired += 1
    return expired
