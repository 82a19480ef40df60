"""Approvals: a parked run frees the worker, a decision resumes it, expiry rejects it."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.utils import timezone

from agents.services import agent_create
from audit.models import AuditEvent
from audit.services import Actor
from tasks import approvals
from tasks.models import Approval, Occurrence, OutboxMessage, Run, RunStatus
from tasks.scheduler import Scheduler
from tasks.worker import Worker
from tests.api_support import (  # noqa: F401 (fixtures)
    api_fixture,
    api_key_for,
    assert_error,
    fresh_throttles,
)
from tests.factories import make_agent, make_occurrence, make_task

pytestmark = pytest.mark.django_db(transaction=True)

DECIDER = "approvals-decider"
PIPELINE = {
    "pipeline": [
        {"id": "draft", "uses": "debug.echo", "with": {"items": [1, 2]}},
        {
            "id": "approval",
            "uses": "approval.request",
            "with": {
                "prompt": "Send the report?",
                "context": "${steps.draft.items}",
                "approvers": [DECIDER],
            },
        },
        {
            "id": "send",
            "uses": "debug.echo",
            "if": "steps.approval.status == 'approved'",
            "with": {"sent": "${steps.approval.approved_items}"},
        },
    ]
}


def work():
    Worker(concurrency=1, burst=True, poll_interval=0.2).run(threading.Event())


@pytest.fixture
def parked():
    """A task whose run is parked on its approval step."""
    owner, _ = make_agent(scopes=["tasks:write"])
    task = make_task(owner, payload=PIPELINE, max_retries=0)
    occurrence = make_occurrence(task, at=timezone.now() - timedelta(seconds=1))
    work()
    return task, occurrence, Approval.objects.get()


def named_agent(name: str, scopes: list[str]):
    agent, _ = agent_create(name=name, scopes=scopes, actor=Actor.system("tests"))
    return agent


@pytest.fixture
def decider(api):
    """The agent the pipeline names as its approver."""
    agent = named_agent(DECIDER, ["approvals:decide"])
    return agent, api.as_(api_key_for(agent))


def test_approval_step_parks_the_run_without_using_a_retry(parked):
    task, occurrence, approval = parked
    run = Run.objects.get(task=task)
    assert run.status == RunStatus.WAITING_APPROVAL
    assert run.success is None
    occurrence.refresh_from_db()
    assert (occurrence.state, occurrence.lease_owner, occurrence.waits) == ("waiting", None, 1)
    assert (approval.status, approval.step_id, approval.prompt) == (
        "pending", "approval", "Send the report?",
    )  # fmt: skip
    assert approval.context == [1, 2]
    assert approval.run_id == run.id
    assert approval.expires_at > timezone.now() + timedelta(hours=23)
    assert OutboxMessage.objects.filter(type="approval.requested", run_id=run.id).exists()


def test_approve_resumes_the_run_at_the_next_step(parked, decider):
    task, occurrence, approval = parked
    agent, api = decider
    listed = api.get("/approvals?status=pending").json()
    assert [item["id"] for item in listed["items"]] == [str(approval.id)]
    assert {"id", "task_id", "run_id", "prompt", "status", "expires_at"} <= set(listed["items"][0])

    response = api.post(f"/approvals/{approval.id}/approve", {"comment": "ship it"})
    assert response.status_code == 200, response.content
    assert response.json()["details"]["status"] == "approved"
    work()

    second = Run.objects.get(task=task, attempt=2)
    assert second.status == RunStatus.SUCCEEDED, second.error
    assert [s["status"] for s in second.steps] == ["reused", "succeeded", "succeeded"]
    decision = second.steps[1]["output"]
    assert (decision["approved"], decision["decided_by"], decision["comment"]) == (
        True, agent.name, "ship it",
    )  # fmt: skip
    assert second.output["steps"]["send"] == {"sent": [1, 2]}
    assert not Occurrence.objects.filter(pk=occurrence.pk).exists()
    audit = AuditEvent.objects.get(action="approval.approved")
    assert (audit.actor_name, audit.details["comment"]) == (agent.name, "ship it")


def test_reject_fails_the_approval_step_and_the_run(parked, decider):
    task, occurrence, approval = parked
    agent, api = decider
    assert api.post(f"/approvals/{approval.id}/reject", {"comment": "no"}).status_code == 200
    work()
    second = Run.objects.get(task=task, attempt=2)
    assert second.status == RunStatus.FAILED
    assert [s["status"] for s in second.steps] == ["reused", "failed"]
    assert f"approval rejected by {agent.name}: no" in second.steps[1]["error"]
    # Not retryable: the same decision would come back.
    assert Occurrence.objects.get(pk=occurrence.pk).state == "dead"


def test_deciding_twice_is_409(parked, decider):
    _, _, approval = parked
    _, api = decider
    assert api.post(f"/approvals/{approval.id}/approve").status_code == 200
    error = assert_error(api.post(f"/approvals/{approval.id}/reject"), 409, "conflict")
    assert "already approved" in error["message"]


def test_unknown_or_foreign_approval_is_404(parked, decider):
    _, _, approval = parked
    _, api = decider
    assert_error(api.post("/approvals/00000000-0000-0000-0000-000000000000/approve"), 404)
    Approval.objects.filter(pk=approval.pk).update(approvers=["someone-else"])
    assert_error(api.post(f"/approvals/{approval.id}/approve"), 404, "not_found")


def test_an_agent_may_not_decide_its_own_tasks_request(parked, api, settings):
    task, _, approval = parked
    owner = task.created_by
    owner.scopes = [*owner.scopes, "approvals:decide"]
    owner.save()
    Approval.objects.filter(pk=approval.pk).update(approvers=[owner.name])
    key = api_key_for(owner)
    assert_error(api.as_(key).post(f"/approvals/{approval.id}/approve"), 403)
    settings.APPROVALS_ALLOW_SELF_DECISION = True
    assert api.as_(key).post(f"/approvals/{approval.id}/approve").status_code == 200


def test_expiry_by_the_scheduler_resumes_the_run_as_expired(parked, decider):
    task, _, approval = parked
    Approval.objects.filter(pk=approval.pk).update(expires_at=timezone.now())
    Scheduler(poll_interval=0.1).run(threading.Event(), once=True)
    approval.refresh_from_db()
    assert approval.status == "expired"
    _, api = decider
    assert_error(api.post(f"/approvals/{approval.id}/approve"), 409)
    work()
    second = Run.objects.get(task=task, attempt=2)
    assert second.status == RunStatus.FAILED
    assert "approval expired" in second.steps[1]["error"]


def test_pending_but_past_its_expiry_cannot_be_decided(parked):
    _, _, approval = parked
    Approval.objects.filter(pk=approval.pk).update(expires_at=timezone.now())
    from ordinaut.errors import Conflict

    with pytest.raises(Conflict, match="expired"):
        approvals.approval_decide(
            approval_id=approval.pk, decision="approve", actor=Actor.system("t")
        )


def test_operator_decides_in_the_admin(parked, admin_client):
    _, _, approval = parked
    response = admin_client.post(
        "/admin/tasks/approval/",
        {"action": "approve", "_selected_action": [str(approval.pk)]},
    )
    assert response.status_code == 302
    approval.refresh_from_db()
    assert approval.status == "approved"
    assert AuditEvent.objects.get(action="approval.approved").actor_type == "user"


def test_mcp_lists_and_decides_approvals(parked):
    from asgiref.sync import async_to_sync
    from mcp import Client

    from agents.mcp_server import build_server

    _, _, approval = parked
    key = api_key_for(named_agent(DECIDER, ["approvals:decide"]))

    async def scenario():
        async with Client(build_server(stdio_token=key)) as client:
            listed = await client.call_tool("list_approvals", {})
            decided = await client.call_tool(
                "decide_approval", {"approval_id": str(approval.id), "decision": "approve"}
            )
            again = await client.call_tool(
                "decide_approval", {"approval_id": str(approval.id), "decision": "reject"}
            )
            return listed, decided, again

    listed, decided, again = async_to_sync(scenario)()
    assert not listed.is_error
    assert str(approval.id) in listed.content[0].text
    assert not decided.is_error, decided.content
    assert again.is_error
    assert "409 conflict" in again.content[0].text
    approval.refresh_from_db()
    assert approval.status == "approved"


# -- who decides: those named, else only operators --------------------------------------------


def test_another_deciding_agent_neither_sees_nor_decides_a_request_not_naming_it(parked, api):
    _, _, approval = parked
    outsider, _ = make_agent(scopes=["approvals:decide"])
    client = api.as_(api_key_for(outsider))
    assert client.get("/approvals?status=pending").json()["items"] == []
    assert_error(client.post(f"/approvals/{approval.id}/approve"), 404, "not_found")
    approval.refresh_from_db()
    assert approval.status == "pending"


def test_a_request_naming_nobody_is_for_operators_only(parked, decider, api, admin_client):
    _, _, approval = parked
    Approval.objects.filter(pk=approval.pk).update(approvers=[])
    _, named = decider  # holds approvals:decide, but nobody is named now
    assert named.get("/approvals").json()["items"] == []
    assert_error(named.post(f"/approvals/{approval.id}/approve"), 404)
    admin_agent, _ = make_agent(scopes=["admin"])
    admin_api = api.as_(api_key_for(admin_agent))
    assert [a["id"] for a in admin_api.get("/approvals").json()["items"]] == [str(approval.id)]
    assert admin_api.post(f"/approvals/{approval.id}/approve").status_code == 200


def test_the_owner_sees_its_own_tasks_requests(parked, api):
    task, _, approval = parked
    owner = task.created_by
    owner.scopes = [*owner.scopes, "approvals:decide"]
    owner.save()
    listed = api.as_(api_key_for(owner)).get("/approvals").json()["items"]
    assert [a["id"] for a in listed] == [str(approval.id)]


def test_the_admin_action_needs_the_decide_permission_not_just_staff(parked, client):
    from django.contrib.auth.models import Permission, User

    _, _, approval = parked
    staff = User.objects.create_user("operator", password="pw-for-tests", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_approval"))
    client.force_login(staff)
    page = client.get("/admin/tasks/approval/")
    assert page.status_code == 200
    assert b'value="approve"' not in page.content  # the action is not offered
    client.post(
        "/admin/tasks/approval/", {"action": "approve", "_selected_action": [str(approval.pk)]}
    )
    approval.refresh_from_db()
    assert approval.status == "pending"

    staff.user_permissions.add(Permission.objects.get(codename="decide_approval"))
    staff = User.objects.get(pk=staff.pk)  # permissions are cached per user object
    client.force_login(staff)
    client.post(
        "/admin/tasks/approval/", {"action": "approve", "_selected_action": [str(approval.pk)]}
    )
    approval.refresh_from_db()
    assert approval.status == "approved"


def test_over_mcp_an_outsider_neither_lists_nor_decides(parked):
    from asgiref.sync import async_to_sync
    from mcp import Client

    from agents.mcp_server import build_server

    _, _, approval = parked
    outsider, _ = make_agent(scopes=["approvals:decide"])
    key = api_key_for(outsider)

    async def scenario():
        async with Client(build_server(stdio_token=key)) as client:
            listed = await client.call_tool("list_approvals", {})
            decided = await client.call_tool(
                "decide_approval", {"approval_id": str(approval.id), "decision": "approve"}
            )
            return listed, decided

    listed, decided = async_to_sync(scenario)()
    assert listed.structured_content["items"] == []
    assert decided.is_error
    assert "404 not_found" in decided.content[0].text
    approval.refresh_from_db()
    assert approval.status == "pending"
