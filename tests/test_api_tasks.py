"""/tasks and /schedules/preview: the original's contract, ownership, validation, actions."""

from __future__ import annotations

import uuid

import pytest
from django.test import Client

from audit.models import AuditEvent
from tasks.models import Occurrence, OccurrenceState, Task, Trigger
from tests.api_support import (  # noqa: F401 (fixtures)
    agent_with_key,
    api_fixture,
    assert_error,
    fresh_throttles,
    task_body,
)
from tests.factories import make_agent

pytestmark = pytest.mark.django_db

TASK_FIELDS = {
    "id", "title", "description", "created_by", "schedule_kind", "schedule_expr", "timezone",
    "payload", "status", "priority", "dedupe_key", "dedupe_window_seconds", "max_retries",
    "backoff_strategy", "concurrency_key", "created_at",
}  # fmt: skip


@pytest.fixture
def owner(api):
    agent, key = agent_with_key()
    return agent, api.as_(key)


def create(client, **overrides):
    response = client.post("/tasks", task_body(**overrides))
    assert response.status_code == 201, response.content
    return response.json()


def test_create_returns_task_response_with_creator_from_token(owner):
    agent, client = owner
    body = create(client)
    assert set(body) >= TASK_FIELDS
    assert body["created_by"] == str(agent.id)
    assert body["status"] == "active"
    assert body["priority"] == 5
    assert body["max_retries"] == 3
    assert body["backoff_strategy"] == "exponential_jitter"
    assert body["next_run_at"] is not None
    assert AuditEvent.objects.filter(action="task.created", subject_id=body["id"]).exists()


def test_create_accepts_created_by_matching_caller(owner):
    agent, client = owner
    assert create(client, created_by=str(agent.id))["created_by"] == str(agent.id)


def test_create_with_another_agents_created_by_is_403_and_writes_nothing(owner):
    _, client = owner
    other, _ = make_agent()
    response = client.post("/tasks", task_body(created_by=str(other.id)))
    error = assert_error(response, 403, "forbidden")
    assert "created_by" in error["details"]
    assert not Task.objects.exists()


def test_admin_may_create_on_behalf_of_another_agent(api):
    _, key = agent_with_key(scopes=["admin"])
    other, _ = make_agent()
    body = create(api.as_(key), created_by=str(other.id))
    assert body["created_by"] == str(other.id)


def test_dedupe_key_within_window_returns_existing_task_with_200(owner):
    _, client = owner
    first = client.post("/tasks", task_body(dedupe_key="brief", dedupe_window_seconds=600))
    second = client.post("/tasks", task_body(dedupe_key="brief", dedupe_window_seconds=600))
    assert first.status_code == 201
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert Task.objects.count() == 1


def test_duplicate_with_an_invalid_pipeline_is_refused_not_deduplicated(owner):
    _, client = owner
    dedupe = {"dedupe_key": "brief", "dedupe_window_seconds": 600}
    assert client.post("/tasks", task_body(**dedupe)).status_code == 201
    broken = {"pipeline": [{"id": "x", "uses": "no.such.tool", "with": {}}]}
    response = client.post("/tasks", task_body(payload=broken, **dedupe))
    assert response.status_code == 422
    assert "no.such.tool" in response.content.decode()
    assert Task.objects.count() == 1


def test_list_envelope_filters_and_pagination(owner):
    _, client = owner
    for kind, expr in [
        ("cron", "0 9 * * *"),
        ("rrule", "FREQ=DAILY;BYHOUR=9"),
        ("cron", "0 1 * * *"),
    ]:
        create(client, schedule_kind=kind, schedule_expr=expr)
    page = client.get("/tasks?limit=2").json()
    assert page["total"] == 3
    assert page["limit"] == 2
    assert page["offset"] == 0
    assert page["has_more"] is True
    assert len(page["items"]) == 2
    assert client.get("/tasks?schedule_kind=rrule").json()["total"] == 1
    assert client.get("/tasks?status=paused").json()["total"] == 0
    assert client.get("/tasks?offset=2&limit=2").json()["has_more"] is False


def test_agent_sees_only_its_own_tasks(owner, api):
    _, client = owner
    mine = create(client)
    _, other_key = agent_with_key()
    other = api.as_(other_key)
    assert other.get("/tasks").json()["total"] == 0
    assert_error(other.get(f"/tasks/{mine['id']}"), 404, "not_found")
    assert_error(other.post(f"/tasks/{mine['id']}/pause"), 404)
    assert_error(other.put(f"/tasks/{mine['id']}", {"title": "mine now"}), 404)
    assert Task.objects.get(pk=mine["id"]).title == "Every five minutes"


def test_admin_sees_every_task(owner, api):
    _, client = owner
    created = create(client)
    _, admin_key = agent_with_key(scopes=["admin"])
    assert api.as_(admin_key).get(f"/tasks/{created['id']}").status_code == 200


def test_get_task_with_and_without_trailing_slash(owner):
    _, client = owner
    created = create(client)
    assert client.get(f"/tasks/{created['id']}").json() == created
    assert client.get(f"/tasks/{created['id']}/").json()["id"] == created["id"]


def test_put_and_patch_are_partial_and_reschedule(owner):
    _, client = owner
    created = create(client)
    put = client.put(f"/tasks/{created['id']}", {"title": "renamed"})
    assert put.status_code == 200
    assert put.json()["title"] == "renamed"
    assert put.json()["schedule_expr"] == created["schedule_expr"]
    patch = client.patch(f"/tasks/{created['id']}", {"schedule_expr": "0 12 * * *"})
    assert patch.json()["schedule_expr"] == "0 12 * * *"
    assert patch.json()["title"] == "renamed"
    assert patch.json()["next_run_at"] != created["next_run_at"]


def test_update_revalidates_schedule(owner):
    _, client = owner
    created = create(client)
    error = assert_error(
        client.put(f"/tasks/{created['id']}", {"schedule_expr": "61 * * * *"}), 422
    )
    assert "schedule_expr" in error["details"]
    assert Task.objects.get(pk=created["id"]).schedule_expr == "*/5 * * * *"


def test_invalid_schedule_is_422_naming_the_field(owner):
    _, client = owner
    error = assert_error(client.post("/tasks", task_body(schedule_expr="not cron")), 422)
    assert "schedule_expr" in error["details"]
    assert not Task.objects.exists()


def test_bad_timezone_is_422(owner):
    _, client = owner
    error = assert_error(client.post("/tasks", task_body(timezone="Mars/Olympus")), 422)
    assert "timezone" in error["details"]


def test_payload_without_pipeline_is_422(owner):
    _, client = owner
    error = assert_error(client.post("/tasks", task_body(payload={"steps": []})), 422)
    assert any("pipeline" in key or "payload" in key for key in error["details"])


def test_unknown_fields_are_rejected_by_name(owner):
    _, client = owner
    error = assert_error(client.post("/tasks", task_body(schedule_exp="* * * * *")), 422)
    assert error["details"] == {"schedule_exp": ["unknown field"]}


def test_wrong_types_are_422(owner):
    _, client = owner
    for field, value in [("priority", "high"), ("priority", 10), ("title", ["x"]),
                         ("payload", "pipeline"), ("max_retries", -1), ("priority", True),
                         ("dedupe_window_seconds", 10**12)]:  # fmt: skip
        error = assert_error(client.post("/tasks", task_body(**{field: value})), 422)
        assert field in error["details"], (field, value, error)
    assert not Task.objects.exists()


def test_nul_characters_are_422_not_500(owner):
    _, client = owner
    payload = {"pipeline": [{"id": "a", "uses": "debug.echo", "with": {"x": "a\u0000b"}}]}
    assert_error(client.post("/tasks", task_body(payload=payload)), 422)
    assert_error(client.post("/tasks", task_body(title="a\u0000b")), 422)


def test_injection_attempts_are_stored_as_data(owner):
    _, client = owner
    title = "x'); DROP TABLE tasks_task; --"
    created = create(client, title=title, description='{"$where": "1==1"}')
    assert client.get(f"/tasks/{created['id']}").json()["title"] == title
    assert client.get("/tasks?status=active' OR '1'='1").status_code == 422


def test_malformed_json_is_400(owner):
    _, client = owner
    assert_error(client.post("/tasks", '{"title": '), 400, "parse_error")


def test_deeply_nested_json_is_400_not_500(owner):
    _, client = owner
    assert_error(client.post("/tasks", "[" * 100_000 + "]" * 100_000), 400)


def test_body_that_is_not_an_object_is_422(owner):
    _, client = owner
    assert_error(client.post("/tasks", [1, 2]), 422)


def test_huge_body_is_413_before_parsing(owner):
    _, client = owner
    big = task_body(description="x" * (2 * 1024 * 1024))
    assert_error(client.post("/tasks", big), 413, "payload_too_large")
    assert not Task.objects.exists()


def test_non_json_content_type_is_415(owner):
    _, client = owner
    response = client.client.post(
        "/tasks", "title=x", content_type="application/x-www-form-urlencoded",
        HTTP_AUTHORIZATION=f"Bearer {client.token}",
    )  # fmt: skip
    assert_error(response, 415)


@pytest.mark.parametrize("debug", [False, True])
def test_invalid_uuid_in_path_is_json_404(owner, settings, debug):
    settings.DEBUG = debug  # Django's HTML debug 404 must not replace the envelope
    _, client = owner
    response = client.get("/tasks/not-a-uuid")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "not_found"
    assert client.get("/no/such/route").json()["error"]["code"] == "not_found"
    assert_error(client.get(f"/tasks/{uuid.uuid4()}"), 404)


def test_a_post_to_an_unknown_path_is_json_404_not_a_csrf_page(owner):
    _, client = owner
    strict = Client(enforce_csrf_checks=True)
    response = strict.post(
        "/tasks/null,null/snooze", "{}", content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {client.token}",
    )  # fmt: skip
    assert_error(response, 404)


def test_negative_and_huge_limits_are_422(owner):
    _, client = owner
    assert "limit" in assert_error(client.get("/tasks?limit=-1"), 422)["details"]
    assert "limit" in assert_error(client.get("/tasks?limit=201"), 422)["details"]
    assert "offset" in assert_error(client.get("/tasks?offset=-5"), 422)["details"]


def test_read_only_scope_cannot_create(api):
    _, key = agent_with_key(scopes=["tasks:read"])
    assert_error(api.as_(key).post("/tasks", task_body()), 403)
    assert not Task.objects.exists()


def test_run_now_queues_manual_occurrence(owner):
    _, client = owner
    created = create(client)
    response = client.post(f"/tasks/{created['id']}/run_now")
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    assert body["message"] == "Task execution triggered successfully"
    occurrence = Occurrence.objects.get(pk=body["details"]["due_work_id"])
    assert occurrence.trigger == Trigger.MANUAL
    assert AuditEvent.objects.filter(action="task.run_now", subject_id=created["id"]).exists()


def test_snooze_moves_queued_work_and_validates_delay(owner):
    _, client = owner
    created = create(client, schedule_expr="* * * * *")
    response = client.post(f"/tasks/{created['id']}/snooze", {"delay_seconds": 600, "reason": "x"})
    assert response.status_code == 200
    body = response.json()
    assert body["message"] == "Task snoozed for 600 seconds"
    assert body["details"]["affected_work_items"] == 1
    for delay in (0, 604801, "soon"):
        error = assert_error(
            client.post(f"/tasks/{created['id']}/snooze", {"delay_seconds": delay}), 422
        )
        assert "delay_seconds" in error["details"]
    assert_error(client.post(f"/tasks/{created['id']}/snooze", {}), 422)


def test_pause_resume_cancel_with_original_messages(owner):
    _, client = owner
    created = create(client)
    task_url = f"/tasks/{created['id']}"
    pause = client.post(f"{task_url}/pause").json()
    assert pause == {
        "success": True,
        "message": "Task paused successfully",
        "details": {"task_id": created["id"], "old_status": "active", "new_status": "paused"},
    }
    again = client.post(f"{task_url}/pause").json()
    assert again["message"] == "Task already has status 'paused'"
    assert client.post(f"{task_url}/resume").json()["message"] == "Task resumed successfully"
    cancel = client.post(f"{task_url}/cancel/").json()
    assert cancel["message"] == "Task canceled successfully"
    assert client.get(task_url).json()["status"] == "canceled"
    assert not Occurrence.objects.filter(task_id=created["id"], state=OccurrenceState.QUEUED)
    assert_error(client.post(f"{task_url}/resume"), 409, "conflict")
    actions = set(
        AuditEvent.objects.filter(subject_id=created["id"]).values_list("action", flat=True)
    )
    assert {"task.paused", "task.resumed", "task.canceled"} <= actions


def test_task_preview_lists_next_occurrences_in_utc_and_local(owner):
    _, client = owner
    created = create(client, schedule_expr="30 8 * * *", timezone="America/New_York")
    body = client.get(f"/tasks/{created['id']}/preview?n=3").json()
    assert len(body["occurrences"]) == 3
    first = body["occurrences"][0]
    assert first["local"][11:16] == "08:30"
    assert first["utc"].endswith("+00:00")
    assert_error(client.get(f"/tasks/{created['id']}/preview?n=0"), 422)


def test_schedule_preview_flags_spring_forward_gap(owner):
    _, client = owner
    response = client.post(
        "/schedules/preview",
        {
            "schedule_kind": "cron",
            "schedule_expr": "30 2 * * *",
            "timezone": "America/New_York",
            "after": "2025-03-07T12:00:00Z",
            "n": 3,
        },
    )
    assert response.status_code == 200, response.content
    occurrences = response.json()["occurrences"]
    assert [o["dst_shifted"] for o in occurrences] == [False, True, False]
    assert occurrences[1]["local"] == "2025-03-09T03:00:00-04:00"


def test_schedule_preview_flags_fall_back_ambiguity(owner):
    _, client = owner
    response = client.post(
        "/schedules/preview",
        {"schedule_kind": "cron", "schedule_expr": "30 1 * * *", "timezone": "America/New_York",
         "after": "2025-11-01T12:00:00Z", "n": 2},
    )  # fmt: skip
    occurrences = response.json()["occurrences"]
    assert occurrences[0]["dst_ambiguous"] is True
    assert occurrences[0]["utc"] == "2025-11-02T05:30:00+00:00"


def test_schedule_preview_rejects_invalid_rrule(owner):
    _, client = owner
    error = assert_error(
        client.post(
            "/schedules/preview", {"schedule_kind": "rrule", "schedule_expr": "FREQ=NEVER"}
        ),
        422,
    )
    assert "schedule_expr" in error["details"]


def test_nul_character_anywhere_in_a_body_is_a_422_and_nothing_is_stored(owner):
    # PostgreSQL cannot store U+0000: refused by name, never a 500 at INSERT time.
    _, api = owner
    before = Task.objects.count()
    titled = api.post("/tasks", task_body(title="nul \u0000 here"))
    assert "title" in assert_error(titled, 422)["details"]
    nested = task_body(payload={"params": {"x": "a\u0000b"}, "pipeline": []})
    assert "payload" in assert_error(api.post("/tasks", nested), 422)["details"]
    assert Task.objects.count() == before
