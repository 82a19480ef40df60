"""approval.request: park the run until a human decides (the contract; Approvals completes it).

Contract:

1. The first call returns `ToolWaiting`; the executor records the step as `waiting` with
   output `{"status": "waiting", "message", "data", "approvers", "expires_in_seconds"}`,
   stops, and reports the run as `waiting` (the worker finishes the attempt without error
   and does not retry it).
2. The decision is written onto that step record with
   `pipelines.executor.record_decision(run_id=..., step_id=..., decision={...})`, where
   decision is `{"status": "approved" | "rejected" | "expired", "decided_by", "comment",
   "approved_items"?}`; then a new attempt of the same occurrence is queued.
3. That attempt reuses the steps before the approval, calls this tool again with the
   earlier record in `context.resumed`, and the step succeeds with the decision as its
   output: `{"status", "decided_by", "comment", "decided_at", "message", "data",
   "approved_items"}` (approved_items defaults to `data`). A rejection is not a failure:
   later steps branch on it with `if: "steps.approval.status == 'approved'"`.
   Without a decision yet, the step parks again.
"""

from __future__ import annotations

from typing import Any

from pipelines.tools.base import ToolContext, ToolSpec, ToolWaiting

DECISIONS = ("approved", "rejected", "expired")


def request(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any] | ToolWaiting:
    decision = (context.resumed or {}).get("decision")
    if isinstance(decision, dict) and decision.get("status") in DECISIONS:
        return {
            "status": decision["status"],
            "decided_by": decision.get("decided_by"),
            "comment": decision.get("comment", ""),
            "decided_at": decision.get("decided_at"),
            "message": arguments["message"],
            "data": arguments.get("data"),
            "approved_items": decision.get("approved_items", arguments.get("data")),
        }
    return ToolWaiting(
        output={
            "status": "waiting",
            "message": arguments["message"],
            "data": arguments.get("data"),
            "approvers": arguments.get("approvers", []),
            "expires_in_seconds": arguments.get("expires_in_seconds"),
        }
    )


TOOLS = [
    ToolSpec(
        name="approval.request",
        description=(
            "Park the run until a human approves or rejects; the step's output is the "
            "decision {status: approved|rejected|expired, decided_by, comment, ...}."
        ),
        input_schema={
            "type": "object",
            "required": ["message"],
            "additionalProperties": False,
            "properties": {
                "message": {"type": "string", "minLength": 1},
                "data": {},
                "approvers": {"type": "array", "items": {"type": "string"}},
                "expires_in_seconds": {"type": "integer", "minimum": 60},
            },
        },
        output_schema={"type": "object", "required": ["status"]},
        required_scope=None,
        timeout_seconds=30,
        func=request,
    ),
]
