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
3. That attempt reuses the steps before the approval and calls this tool again with the
   earlier record in `context.resumed`. Approved: the step succeeds with output
   `{"approved": true, "status": "approved", "decided_by", "comment", "decided_at",
   "message", "data", "approved_items"}` (approved_items defaults to `data`). Rejected or
   expired: the step fails (not retryable) with the decision in its error, so the run
   fails unless the step says `on_error: continue`. Without a decision yet, it parks again.

Input: `prompt` (or the original's `message`), `context` (or `data`), `approvers`,
`expires_in_seconds`.
"""

from __future__ import annotations

from typing import Any

from pipelines.tools.base import ToolContext, ToolError, ToolSpec, ToolWaiting

DECISIONS = ("approved", "rejected", "expired")
# The longest an approval may wait. Bounded so that the expiry stays a real instant: a huge
# value (10**13 s) overflowed PostgreSQL when the run parked, and the batch was retried forever.
MAX_EXPIRES_SECONDS = 30 * 86400


def request(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any] | ToolWaiting:
    message = arguments.get("prompt") or arguments.get("message") or ""
    data = arguments.get("context", arguments.get("data"))
    decision = (context.resumed or {}).get("decision")
    if isinstance(decision, dict) and decision.get("status") in DECISIONS:
        status = decision["status"]
        if status != "approved":
            who = f" by {decision['decided_by']}" if decision.get("decided_by") else ""
            comment = f": {decision['comment']}" if decision.get("comment") else ""
            # A retry would only meet the same decision again.
            raise ToolError(f"approval {status}{who}{comment}", retryable=False)
        return {
            "approved": True,
            "status": status,
            "decided_by": decision.get("decided_by"),
            "comment": decision.get("comment", ""),
            "decided_at": decision.get("decided_at"),
            "message": message,
            "data": data,
            "approved_items": decision.get("approved_items", data),
        }
    return ToolWaiting(
        output={
            "status": "waiting",
            "message": message,
            "data": data,
            "approvers": arguments.get("approvers", []),
            "expires_in_seconds": arguments.get("expires_in_seconds"),
        }
    )


TOOLS = [
    ToolSpec(
        name="approval.request",
        description=(
            "Park the run until a human decides. Approved: the output is {approved: true, "
            "decided_by, comment, ...}; rejected or expired: the step fails (on_error applies)."
        ),
        input_schema={
            "type": "object",
            # The issue's names (prompt, context) and the original's (message, data).
            "anyOf": [{"required": ["prompt"]}, {"required": ["message"]}],
            "additionalProperties": False,
            "properties": {
                "prompt": {"type": "string", "minLength": 1},
                "message": {"type": "string", "minLength": 1},
                "context": {},
                "data": {},
                "approvers": {"type": "array", "items": {"type": "string"}},
                "expires_in_seconds": {
                    "type": "integer",
                    "minimum": 60,
                    "maximum": MAX_EXPIRES_SECONDS,
                },
            },
        },
        output_schema={"type": "object", "required": ["status"]},
        required_scope=None,
        timeout_seconds=30,
        func=request,
        inline=True,
    ),
]
