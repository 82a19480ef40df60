"""Webhooks: run outcomes POSTed, signed, to the webhook_url of the agent that owns the task.

Two steps, both called once per scheduler tick by `deliver_webhooks()`:

1. Fan-out. Run outcomes (`run.succeeded|failed|timed_out|dead` outbox messages) not yet
   handled are locked `FOR UPDATE SKIP LOCKED`, a `WebhookDelivery` is created for each whose
   task's agent has a webhook_url, and the messages are stamped `webhooked_at` — one
   transaction, so several schedulers split the backlog and each message fans out once (the
   unique (message, agent) index backs this up).
2. Sending. Due deliveries are claimed `FOR UPDATE SKIP LOCKED` by moving `next_attempt_at`
   a lease ahead (committed before any HTTP, so no transaction stays open over the network;
   a sender that dies mid-request leaves its delivery to be retried after the lease). The
   POSTs run in a small thread pool with a short timeout and the whole step has a time
   budget, so a slow receiver delays the scheduler loop by seconds at most. Each attempt is
   recorded (`WebhookAttempt`); a non-2xx answer or a network error is retried with
   exponential backoff until WEBHOOK_RETRY_WINDOW_SECONDS after creation, then `failed`.

Signature: `X-Ordinaut-Signature: v1=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>` with
`X-Ordinaut-Timestamp` (unix seconds) and `X-Ordinaut-Key-Id`. The secret is the receiving
agent's own (agents.credentials.webhook_secret, shown once when the agent is created with a
webhook_url or its key rotated); agents without one get the deployment's fallback key,
`X-Ordinaut-Key-Id: deployment`. See docs/events.md for the receiver's recipe.

Targets pass the same server-side request forgery guard as the http.request tool
(pipelines.egress): the host is resolved once, every address must be public, and the POST
goes to the address that was checked, unless the host is in HTTP_TOOL_ALLOWED_HOSTS.
Redirects are not followed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import httpx
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from agents.credentials import webhook_secret
from ordinaut import metrics
from ordinaut.masking import mask_url
from pipelines import egress
from tasks.models import (
    WEBHOOK_EVENT_TYPES,
    WebhookAttempt,
    WebhookDelivery,
    WebhookStatus,
)

logger = logging.getLogger(__name__)

OUTPUT_EXCERPT_CHARS = 4000
ERROR_EXCERPT_CHARS = 2000
RESPONSE_EXCERPT_CHARS = 500
SECRET_LABEL = b"ordinaut.webhooks.signing.v1"
USER_AGENT = "Ordinaut-Webhooks/1"


# The key id of deliveries to agents without their own key (created before agents had one,
# or given a webhook_url later and not rotated since).
FALLBACK_KEY_ID = "deployment"


def signing_secret() -> str:
    """The fallback key, for agents without their own: WEBHOOK_SIGNING_SECRET (opt-in, for
    receivers not yet moved to per-agent keys), or (unset) a key derived from SECRET_KEY."""
    if settings.WEBHOOK_SIGNING_SECRET:
        return settings.WEBHOOK_SIGNING_SECRET
    # Derived rather than SECRET_KEY itself: a receiver learning it learns nothing else.
    return hmac.new(settings.SECRET_KEY.encode(), SECRET_LABEL, hashlib.sha256).hexdigest()


def sign(body: bytes, timestamp: str, secret: str) -> str:
    """The X-Ordinaut-Signature value for `body` sent at `timestamp` (unix seconds, text)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


# -- 1. fan-out: outbox run outcomes → deliveries ------------------------------------------------

# Run outcomes not yet fanned out, with what the payload needs. Only the outbox rows are
# locked (OF m), SKIP LOCKED: two schedulers take disjoint batches, and the webhooked_at stamp
# that commits with the deliveries takes a message out of this scan for good.
LOCK_NEW_OUTCOMES = """
SELECT m.id, m.type, m.task_id, m.run_id, m.created_at,
       t.title, a.id, a.webhook_url, a.is_active,
       r.status, r.attempt, r.trigger, r.started_at, r.finished_at, r.output, r.error
FROM tasks_outboxmessage m
LEFT JOIN tasks_task t ON t.id = m.task_id
LEFT JOIN agents_agent a ON a.id = t.created_by_id
LEFT JOIN tasks_run r ON r.id = m.run_id
WHERE m.webhooked_at IS NULL AND m.type = ANY(%(types)s)
ORDER BY m.id
LIMIT %(limit)s
FOR UPDATE OF m SKIP LOCKED
"""

MARK_WEBHOOKED = "UPDATE tasks_outboxmessage SET webhooked_at = %s WHERE id = ANY(%s)"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _excerpt(value: Any, limit: int) -> tuple[Any, bool]:
    """`value` itself when its JSON is short, else the first `limit` characters of that JSON."""
    if value is None:
        return None, False
    text = json.dumps(value, default=str, separators=(",", ":"))
    if len(text) <= limit:
        return value, False
    return text[:limit], True


def build_payload(
    *,
    outbox_id: int,
    event_type: str,
    task_id: Any,
    task_title: str | None,
    run_id: Any,
    run: dict[str, Any] | None,
    occurred_at: datetime,
) -> dict[str, Any]:
    """The JSON body a receiver gets for one run outcome (pure)."""
    run = run or {}
    output, truncated = _excerpt(run.get("output"), OUTPUT_EXCERPT_CHARS)
    error = run.get("error")
    return {
        # Stable across retries: receivers de-duplicate on it.
        "id": str(outbox_id),
        "type": event_type,
        "occurred_at": _iso(occurred_at),
        "task_id": str(task_id) if task_id else None,
        "task_title": task_title,
        "run_id": str(run_id) if run_id else None,
        "status": run.get("status"),
        "attempt": run.get("attempt"),
        "trigger": run.get("trigger"),
        "started_at": _iso(run.get("started_at")),
        "finished_at": _iso(run.get("finished_at")),
        "output": output,
        "output_truncated": truncated,
        "error": error[:ERROR_EXCERPT_CHARS] if isinstance(error, str) else error,
    }


def create_deliveries(
    *, now: datetime | None = None, limit: int | None = None, max_batches: int = 20
) -> int:
    """Turn new run outcomes into deliveries, batch after batch; return how many were created."""
    limit = limit or settings.WEBHOOK_FANOUT_BATCH
    created = 0
    for _ in range(max_batches):
        handled, batch_created = _fan_out_batch(now=now or timezone.now(), limit=limit)
        created += batch_created
        if handled < limit:
            break
    return created


def _fan_out_batch(*, now: datetime, limit: int) -> tuple[int, int]:
    """One transaction: the deliveries and the messages' webhooked_at commit together.

    Returns (messages handled, deliveries created).
    """
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(LOCK_NEW_OUTCOMES, {"types": WEBHOOK_EVENT_TYPES, "limit": limit})
        rows = cursor.fetchall()
        if not rows:
            return 0, 0
        deliveries = []
        for (
            outbox_id, event_type, task_id, run_id, created_at,
            title, agent_id, url, agent_active,
            status, attempt, trigger, started_at, finished_at, output, error,
        ) in rows:  # fmt: skip
            if not url or not agent_active:
                continue
            run = {
                "status": status, "attempt": attempt, "trigger": trigger,
                "started_at": started_at, "finished_at": finished_at,
                "output": json.loads(output) if isinstance(output, str) else output,
                "error": error,
            }  # fmt: skip
            payload = build_payload(
                outbox_id=outbox_id, event_type=event_type, task_id=task_id, task_title=title,
                run_id=run_id, run=run if status else None, occurred_at=created_at,
            )  # fmt: skip
            deliveries.append(
                WebhookDelivery(
                    outbox_message_id=outbox_id,
                    agent_id=agent_id,
                    url=url,
                    event_type=event_type,
                    payload=payload,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
        # ignore_conflicts: the unique (message, agent) index is the backstop of "once".
        WebhookDelivery.objects.bulk_create(deliveries, ignore_conflicts=True)
        cursor.execute(MARK_WEBHOOKED, [now, [row[0] for row in rows]])
    return len(rows), len(deliveries)


# -- 2. sending -----------------------------------------------------------------------------------

# Claim due deliveries: SKIP LOCKED so concurrent senders take different rows, and the claim
# moves next_attempt_at a lease ahead and counts the attempt, committed before the POST: no
# other sender takes the row while it is in flight, and one that dies mid-request leaves it
# due again once the lease is over.
CLAIM_DUE = """
UPDATE tasks_webhookdelivery SET next_attempt_at = %(lease_until)s, attempts = attempts + 1
WHERE id IN (
    SELECT id FROM tasks_webhookdelivery
    WHERE status = 'pending' AND next_attempt_at <= %(now)s
    ORDER BY next_attempt_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id, url, event_type, payload, attempts, created_at, agent_id,
          (SELECT webhook_key_id FROM agents_agent WHERE agents_agent.id = agent_id)
"""


@dataclass(frozen=True)
class ClaimedDelivery:
    id: int
    url: str
    event_type: str
    payload: dict[str, Any]
    attempt: int
    created_at: datetime
    agent_id: Any = None
    key_id: str = ""  # the agent's webhook key; empty: the deployment's fallback key

    def signing_key(self) -> tuple[str, str]:
        """(X-Ordinaut-Key-Id, secret) this delivery is signed with."""
        if self.key_id:
            return self.key_id, webhook_secret(self.agent_id, self.key_id)
        return FALLBACK_KEY_ID, signing_secret()


@dataclass
class AttemptResult:
    started_at: datetime
    duration_ms: float = 0.0
    status_code: int | None = None
    error: str = ""
    response_excerpt: str = ""
    # False when repeating cannot help (a refused target).
    retryable: bool = True

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass
class WebhookRound:
    created: int = 0
    attempted: int = 0
    delivered: int = 0
    failed: int = 0
    results: list[AttemptResult] = field(default_factory=list, repr=False)


def claim_due(*, now: datetime, limit: int, lease_seconds: float) -> list[ClaimedDelivery]:
    """Claim up to `limit` due deliveries for one round of POSTs (committed on return)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            CLAIM_DUE,
            {"now": now, "limit": limit, "lease_until": now + timedelta(seconds=lease_seconds)},
        )
        rows = cursor.fetchall()
    return [
        ClaimedDelivery(
            id=row[0],
            url=row[1],
            event_type=row[2],
            payload=json.loads(row[3]) if isinstance(row[3], str) else row[3],
            attempt=row[4],
            created_at=row[5],
            agent_id=row[6],
            key_id=row[7] or "",
        )
        for row in rows
    ]


def encode_body(payload: dict[str, Any]) -> bytes:
    """The exact bytes POSTed (and signed)."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def post(client: httpx.Client, claimed: ClaimedDelivery) -> AttemptResult:
    """POST one delivery, signed with its agent's key; never raises. Touches no database
    (runs in a thread)."""
    started, clock = timezone.now(), time.monotonic()
    result = AttemptResult(started_at=started)
    body = encode_body(claimed.payload)
    timestamp = str(int(time.time()))
    key_id, secret = claimed.signing_key()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Ordinaut-Event": claimed.event_type,
        "X-Ordinaut-Delivery": str(claimed.id),
        "X-Ordinaut-Timestamp": timestamp,
        "X-Ordinaut-Signature": sign(body, timestamp, secret),
        "X-Ordinaut-Key-Id": key_id,
    }
    try:
        # Refused here for an internal IP literal, or when connecting for a name (pipelines.egress).
        egress.check_url(claimed.url)
        with client.stream("POST", claimed.url, content=body, headers=headers) as response:
            result.status_code = response.status_code
            # Only the start of the answer is kept: a receiver cannot make us read megabytes.
            excerpt = b""
            for chunk in response.iter_bytes():
                excerpt += chunk
                if len(excerpt) >= RESPONSE_EXCERPT_CHARS:
                    break
        text = excerpt[:RESPONSE_EXCERPT_CHARS].decode("utf-8", errors="replace")
        result.response_excerpt = _storable(text)
        if not result.delivered:
            result.error = f"HTTP {response.status_code}"
    except egress.EgressRefused as exc:
        # Recorded, and not retried: the same guard would refuse again.
        result.error = _storable(f"refused: {exc.message}")
        result.retryable = False
        return result
    except Exception as exc:  # network errors, and whatever a strange receiver provokes
        result.error = _storable(f"{type(exc).__name__}: {exc}")
    result.duration_ms = (time.monotonic() - clock) * 1000
    return result


def _storable(text: str) -> str:
    """Cut to the excerpt length, without the NUL characters PostgreSQL text refuses."""
    return text.replace("\x00", "")[:ERROR_EXCERPT_CHARS]


def delivery_retry_delay(attempt: int) -> float:
    """Seconds before attempt `attempt + 1`: base * 2**(attempt - 1), capped."""
    base = float(settings.WEBHOOK_RETRY_BASE_SECONDS)
    cap = float(settings.WEBHOOK_RETRY_MAX_DELAY_SECONDS)
    return min(cap, base * 2 ** max(0, attempt - 1))


# ordinaut_webhook_deliveries_total{result}: an attempt that will be tried again is "retry".
_RESULT_LABEL = {
    WebhookStatus.DELIVERED: "delivered",
    WebhookStatus.PENDING: "retry",
    WebhookStatus.FAILED: "failed",
}


def record_attempt(claimed: ClaimedDelivery, result: AttemptResult, *, now: datetime) -> str:
    """Store the attempt and move the delivery on; return its new status.

    Conditional on (pending, our attempt number): if our lease ran out and another sender
    took the delivery meanwhile, our verdict does not overwrite its state.
    """
    window = float(settings.WEBHOOK_RETRY_WINDOW_SECONDS)
    next_at = now + timedelta(seconds=delivery_retry_delay(claimed.attempt))
    if result.delivered:
        status = WebhookStatus.DELIVERED
    elif not result.retryable or next_at > claimed.created_at + timedelta(seconds=window):
        status = WebhookStatus.FAILED
    else:
        status = WebhookStatus.PENDING
    with transaction.atomic():
        WebhookAttempt.objects.create(
            delivery_id=claimed.id, number=claimed.attempt, started_at=result.started_at,
            duration_ms=round(result.duration_ms, 2), status_code=result.status_code,
            error=result.error, response_excerpt=result.response_excerpt,
        )  # fmt: skip
        WebhookDelivery.objects.filter(
            id=claimed.id, status=WebhookStatus.PENDING, attempts=claimed.attempt
        ).update(
            status=status,
            next_attempt_at=next_at if status == WebhookStatus.PENDING else now,
            last_status_code=result.status_code,
            last_error=result.error,
            delivered_at=now if status == WebhookStatus.DELIVERED else None,
        )
    metrics.WEBHOOK_DELIVERIES.labels(_RESULT_LABEL[status]).inc()
    if status == WebhookStatus.FAILED:
        logger.warning(
            "webhook delivery %s to %s failed for good after %d attempt(s): %s",
            claimed.id, mask_url(claimed.url), claimed.attempt, result.error,
            extra={"webhook_delivery_id": claimed.id},
        )  # fmt: skip
    return status


def send_due(*, now: datetime | None = None, budget: float | None = None) -> WebhookRound:
    """POST due deliveries, in rounds of WEBHOOK_CONCURRENCY, until none is due or time is up.

    The loop is bounded by WEBHOOK_SEND_BUDGET_SECONDS plus one request timeout.
    """
    fixed_now = now
    concurrency = int(settings.WEBHOOK_CONCURRENCY)
    timeout = float(settings.WEBHOOK_TIMEOUT_SECONDS)
    if budget is None:
        budget = float(settings.WEBHOOK_SEND_BUDGET_SECONDS)
    deadline = time.monotonic() + budget
    outcome = WebhookRound()
    client: httpx.Client | None = None
    pool: ThreadPoolExecutor | None = None
    try:
        while True:
            claimed = claim_due(
                now=fixed_now or timezone.now(), limit=concurrency, lease_seconds=timeout + 60
            )
            if not claimed:
                break
            if client is None:
                limits = httpx.Limits(max_connections=concurrency)
                client = egress.client(timeout=timeout, limits=limits)
                pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="webhook")
            results = list(pool.map(partial(post, client), claimed))
            for item, result in zip(claimed, results, strict=True):
                status = record_attempt(item, result, now=fixed_now or timezone.now())
                outcome.attempted += 1
                outcome.delivered += status == WebhookStatus.DELIVERED
                outcome.failed += status == WebhookStatus.FAILED
                outcome.results.append(result)
            if len(claimed) < concurrency or time.monotonic() >= deadline:
                break
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
        if client is not None:
            client.close()
    return outcome


def deliver_webhooks(*, now: datetime | None = None) -> WebhookRound:
    """Fan out new run outcomes, then send what is due. Database errors propagate."""
    created = create_deliveries(now=now)
    outcome = send_due(now=now)
    outcome.created = created
    return outcome


def deliver_webhooks_safely() -> WebhookRound | None:
    """deliver_webhooks() for the scheduler loop: any error is logged, never raised."""
    try:
        return deliver_webhooks()
    except Exception:
        # Webhooks are a side channel: whatever goes wrong here must not stop scheduling.
        logger.exception("webhooks: delivery round failed; retried next tick")
        return None
