"""The operator console: the dashboard's figures equal the database's, its buttons act
through the services, the task page controls its task, the run page shows every step."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from tasks.models import Approval, Occurrence, OccurrenceState, Run, Task, WorkerHeartbeat
from tests.api_support import (
    agent_with_key,
    api_fixture,  # noqa: F401 (the `api` fixture)
)
from tests.factories import make_agent, make_occurrence, make_task
from tests.test_pipeline_executor import start_run

pytestmark = pytest.mark.django_db


def tile_values(html: str) -> dict[str, str]:
    found = {}
    for metric, body in re.findall(r'data-metric="([\w]+)".*?(<span data-value="[^"]*")', html,
                                   re.S):  # fmt: skip
        found[metric] = re.search(r'data-value="([^"]*)"', body)[1]
    return found


@pytest.fixture
def scene():
    agent, _ = make_agent()
    task = make_task(agent, title="nightly report")
    make_occurrence(task, at=timezone.now() - timedelta(seconds=15))
    make_occurrence(task, at=timezone.now() + timedelta(minutes=20))
    dead = [make_occurrence(task, at=timezone.now(), state=OccurrenceState.DEAD,
                            attempt=3, last_error="boom") for _ in range(3)]  # fmt: skip
    failed = start_run(task)
    Run.objects.filter(pk=failed.pk).update(status="failed", finished_at=timezone.now(),
                                            error="step 'x' failed: boom\nmore")  # fmt: skip
    parked = start_run(task, attempt=2)
    approval = Approval.objects.create(task=task, run=parked, occurrence_id=dead[0].pk,
                                       step_id="ask", prompt="Send it?",
                                       expires_at=timezone.now() + timedelta(hours=1))  # fmt: skip
    WorkerHeartbeat.objects.create(id="w-console", host="h", pid=1, concurrency=4, running=1)
    return {"task": task, "dead": dead, "approval": approval, "failed": failed}


def test_the_dashboard_tiles_equal_the_database(admin_client, scene):
    html = admin_client.get("/admin/").content.decode()
    values = tile_values(html)
    assert values["queued"] == str(Occurrence.objects.filter(state="queued").count())
    assert values["dead"] == "3"
    assert values["running"] == str(Run.objects.filter(status="running").count())
    assert values["failed_1h"] == "1"
    assert values["approvals_waiting"] == "1"
    assert values["webhooks_failing"] == "0"
    assert float(values["oldest_due_lag_seconds"]) >= 14
    assert set(values) == {"queued", "running", "oldest_due_lag_seconds", "failed_1h", "dead",
                           "approvals_waiting", "webhooks_failing"}  # fmt: skip
    assert "All models" in html  # the app list is still there
    assert "w-console" in html
    assert "step &#x27;x&#x27; failed: boom" in html  # the first line of the error
    assert "<svg" in html


def test_each_tile_links_to_a_list_that_loads(admin_client, scene):
    html = admin_client.get("/admin/").content.decode()
    links = re.findall(r'<a class="console-tile[^"]*" href="([^"]+)" data-metric', html)
    assert len(links) == 7
    for link in links:
        assert admin_client.get(link.replace("&amp;", "&")).status_code == 200, link


def test_re_run_from_the_dashboard(admin_client, scene):
    dead = scene["dead"][1]
    response = admin_client.post(f"/admin/tasks/occurrence/{dead.pk}/rerun/")
    assert response.status_code == 302
    assert not Occurrence.objects.filter(pk=dead.pk, state="dead").exists()
    assert Occurrence.objects.filter(state="dead").count() == 2


def test_approve_from_the_dashboard(admin_client, scene):
    approval = scene["approval"]
    response = admin_client.post(f"/admin/tasks/approval/{approval.pk}/decide/",
                                 {"decision": "approve"})  # fmt: skip
    assert response.status_code == 302
    approval.refresh_from_db()
    assert approval.status == "approved"


def test_a_dashboard_button_needs_post(admin_client, scene):
    assert (
        admin_client.get(f"/admin/tasks/approval/{scene['approval'].pk}/decide/").status_code == 405
    )


def test_the_task_page_pauses_resumes_and_cancels_on_confirmation(admin_client, scene):
    task = scene["task"]
    page = admin_client.get(f"/admin/tasks/task/{task.pk}/change/").content.decode()
    assert 'data-control="pause"' in page
    # Identity and scheduler-maintained fields are shown, never as inputs.
    for field in ("status", "next_run_at", "created_by", "paused_at"):
        assert f'name="{field}"' not in page
    assert 'data-list="upcoming"' in page
    admin_client.post(f"/admin/tasks/task/{task.pk}/control/pause/")
    assert Task.objects.get(pk=task.pk).status == "paused"
    admin_client.post(f"/admin/tasks/task/{task.pk}/control/resume/")
    assert Task.objects.get(pk=task.pk).status == "active"
    admin_client.post(f"/admin/tasks/task/{task.pk}/control/cancel/")  # not confirmed
    assert Task.objects.get(pk=task.pk).status == "active"
    admin_client.post(f"/admin/tasks/task/{task.pk}/control/cancel/", {"confirm": "yes"})
    assert Task.objects.get(pk=task.pk).status == "canceled"


def test_the_run_page_shows_one_row_per_step_and_the_output(admin_client, scene):
    run = scene["failed"]
    steps = [{"id": "fetch", "uses": "debug.echo", "status": "succeeded", "input": {"a": 1},
              "output": {"a": 1}, "duration_ms": 12.5, "attempts": 1,
              "started_at": timezone.now().isoformat()},
             {"id": "send", "uses": "http.request", "status": "failed", "input": {},
              "output": None, "error": "answered 500", "duration_ms": 40, "attempts": 2,
              "started_at": timezone.now().isoformat()}]  # fmt: skip
    Run.objects.filter(pk=run.pk).update(steps=steps, output={"steps": {"fetch": {"a": 1}}})
    page = admin_client.get(f"/admin/tasks/run/{run.pk}/change/").content.decode()
    assert page.count("data-step-id=") == 2
    assert 'data-step-id="fetch"' in page
    assert 'data-step-id="send"' in page
    assert "answered 500" in page
    assert "&quot;fetch&quot;: {\n      &quot;a&quot;: 1" in page  # pretty-printed
    assert "Run of nightly report" in page


def test_a_run_parked_for_an_approval_is_not_a_failure(api):
    agent, key = agent_with_key()
    task = make_task(agent)
    failed = start_run(task)
    earlier = timezone.now() - timedelta(minutes=5)
    Run.objects.filter(pk=failed.pk).update(
        status="failed", finished_at=timezone.now(), started_at=earlier
    )
    parked = start_run(task, attempt=2)
    Run.objects.filter(pk=parked.pk).update(status="waiting_approval", finished_at=timezone.now())
    caller = api.as_(key)
    listed = caller.get(f"/runs?task_id={task.pk}&success=false").json()
    assert [run["id"] for run in listed["items"]] == [str(failed.pk)]
    stats = caller.get(f"/runs/task/{task.pk}/stats").json()
    assert stats["failed_runs"] == 1
    assert stats["last_failure"].startswith(
        Run.objects.get(pk=failed.pk).started_at.isoformat()[:16]
    )
    summary = caller.get("/runs/stats/summary").json()
    assert summary["failed_runs"] == 1


def test_the_lists_say_lateness_status_streaks_and_zones_in_words(admin_client, scene, settings):
    settings.CONSOLE_TIME_ZONE = "Europe/Chisinau"
    occurrences = admin_client.get("/admin/tasks/occurrence/?state__exact=queued").content.decode()
    assert re.search(r"\d+(\.\d)? s late", occurrences)
    assert re.search(r"in \d+ min", occurrences)
    runs = admin_client.get("/admin/tasks/run/").content.decode()
    assert "✖ failed" in runs
    assert "EET" in runs  # every time names its zone (Chisinau in winter)
    agent = scene["task"].created_by
    by_agent = admin_client.get(f"/admin/tasks/run/?task__created_by__id__exact={agent.pk}")
    assert by_agent.status_code == 200
    tasks = admin_client.get("/admin/tasks/task/").content.decode()
    assert "1 failed in a row" in tasks
    assert "✖ failed" in tasks or "⏸" in tasks or "▶ running" in tasks
    agents = admin_client.get("/admin/agents/agent/").content.decode().lower()
    assert "active tasks" in agents
    assert "runs, 24 h" in agents


def test_a_decided_parked_attempt_reads_as_waited_for_approval(admin_client, scene):
    approval = scene["approval"]
    Run.objects.filter(pk=approval.run_id).update(status="waiting_approval",
                                                  finished_at=timezone.now())  # fmt: skip
    listed = admin_client.get("/admin/tasks/run/").content.decode()
    assert "⏸ waiting approval" in listed
    admin_client.post(f"/admin/tasks/approval/{approval.pk}/decide/", {"decision": "approve"})
    listed = admin_client.get("/admin/tasks/run/").content.decode()
    assert "⏸ waited for approval" in listed
    page = admin_client.get(f"/admin/tasks/run/{approval.run_id}/change/").content.decode()
    assert "Waited for approval" in page


def edit_form(task: Task, **changes) -> dict:
    import json as _json

    data = {
        "title": task.title, "description": task.description, "schedule_kind": task.schedule_kind,
        "schedule_expr": task.schedule_expr or "", "timezone": task.timezone,
        "payload": _json.dumps(task.payload), "priority": task.priority,
        "max_retries": task.max_retries, "timeout_seconds": task.timeout_seconds or "",
        "misfire_policy": task.misfire_policy, "backoff_strategy": task.backoff_strategy,
        "concurrency_key": task.concurrency_key or "",
    }  # fmt: skip
    data.update(changes)
    return data


def test_editing_a_task_validates_as_the_api_and_shows_the_reason_by_the_field(admin_client, scene):
    import json as _json

    from audit.models import AuditEvent

    task = scene["task"]
    url = f"/admin/tasks/task/{task.pk}/change/"
    bad = {"pipeline": [{"id": "x", "uses": "no.such.tool", "with": {}}]}
    response = admin_client.post(url, edit_form(task, payload=_json.dumps(bad)))
    assert response.status_code == 200
    errors = re.findall(
        r'<ul class="errorlist[^"]*"[^>]*>(.*?)</ul>', response.content.decode(), re.S
    )
    assert any("no.such.tool" in e for e in errors), errors
    assert Task.objects.get(pk=task.pk).payload == task.payload  # nothing written
    response = admin_client.post(url, edit_form(task, schedule_expr="61 * * * *"))
    assert "schedule_expr" in response.content.decode()
    assert Task.objects.get(pk=task.pk).schedule_expr == task.schedule_expr

    response = admin_client.post(url, edit_form(task, title="nightly report v2"))
    assert response.status_code == 302
    assert Task.objects.get(pk=task.pk).title == "nightly report v2"
    [row] = AuditEvent.objects.filter(action="task.updated", subject_id=str(task.pk))
    assert row.actor_type == "user"
