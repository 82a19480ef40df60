"""GET /tasks and GET /runs: pages, totals, filters, order and visibility.

Each page comes from one hand-written statement (tasks/selectors.py `task_page` /
`run_page`). These tests pin it to counts worked out by hand and, over every filter and
viewer, to the ORM's reading of the same list (`task_list` / `run_list`, which MCP's tools
page with `ordinaut.api.page`): the REST and MCP lists must not drift apart.
"""

from __future__ import annotations

import functools
import itertools
import json
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.utils import timezone

from ordinaut.api import page
from tasks import selectors
from tasks.models import Run, RunStatus, Task
from tasks.serializers import HIDDEN_ERROR, run_data, task_data
from tests.api_support import (  # noqa: F401 (fixtures)
    agent_with_key,
    api_fixture,
    assert_error,
    fresh_throttles,
)
from tests.factories import make_task

pytestmark = pytest.mark.django_db

# Whole seconds and odd microseconds both: ISO 8601 drops a zero fraction.
BASE = timezone.now().replace(microsecond=0) - timedelta(days=1)

# (status, schedule_kind, schedule_expr, seconds after BASE); three share one instant.
OWN_TASKS = [
    ("active", "cron", "*/5 * * * *", 0),
    ("active", "cron", "0 9 * * *", 10),
    ("active", "rrule", "FREQ=DAILY;BYHOUR=9", 10),
    ("active", "cron", "0 1 * * *", 10),
    ("paused", "cron", "0 2 * * *", 20.000123),
    ("canceled", "once", "2030-01-01T00:00:00Z", 30),
    ("active", "event", "orders.created", 40.5),
]
OTHER_TASKS = [
    ("active", "cron", "*/10 * * * *", 5),
    ("paused", "rrule", "FREQ=HOURLY", 10),
    ("active", "event", "orders.created", 50),
]


def add_tasks(agent, specs):
    return [
        make_task(
            agent, status=status, schedule_kind=kind, schedule_expr=expr,
            created_at=BASE + timedelta(seconds=seconds), title=f"{kind} {seconds}",
        )
        for status, kind, expr, seconds in specs
    ]  # fmt: skip


def add_run(task, status, seconds, **fields):
    started = BASE + timedelta(seconds=seconds)
    finished = None if status == RunStatus.RUNNING else started + timedelta(seconds=2)
    return Run.objects.create(
        task=task, scheduled_for=started, attempt=1, status=status, started_at=started,
        finished_at=finished, output={"status": status, "n": [1, 2.5, None]}, **fields,
    )  # fmt: skip


@pytest.fixture
def world(api):
    """Two agents with tasks and runs of every status, and a client for each and an admin."""
    owner, owner_key = agent_with_key()
    other, other_key = agent_with_key()
    _, admin_key = agent_with_key(scopes=["admin"])
    own, others = add_tasks(owner, OWN_TASKS), add_tasks(other, OTHER_TASKS)
    runs = [
        add_run(own[0], RunStatus.SUCCEEDED, 100),
        add_run(own[0], RunStatus.FAILED, 200, error="boom"),
        add_run(own[1], RunStatus.TIMED_OUT, 200, error="too slow"),
        add_run(own[1], RunStatus.SUCCEEDED, 200),
        add_run(own[2], RunStatus.LOST, 300.25),
        add_run(own[2], RunStatus.CANCELED, 400),
        add_run(own[3], RunStatus.WAITING_APPROVAL, 500),
        add_run(own[3], RunStatus.RUNNING, 600, lease_owner="w1", leased_until=BASE),
        add_run(others[0], RunStatus.SUCCEEDED, 250),
        add_run(others[0], RunStatus.FAILED, 650, error="theirs"),
    ]
    return {
        "owner": owner, "other": other, "own": own, "others": others, "runs": runs,
        "clients": {
            "owner": api.as_(owner_key), "other": api.as_(other_key), "admin": api.as_(admin_key),
        },
        "viewers": {
            "owner": selectors.Viewer(agent=owner),
            "other": selectors.Viewer(agent=other),
            "admin": selectors.Viewer(agent=owner, is_admin=True),
        },
    }  # fmt: skip


def get(client, path, **query):
    response = client.get(f"{path}?{urlencode(query)}" if query else path)
    assert response.status_code == 200, response.content
    return response.json()


def ids(body):
    return [item["id"] for item in body["items"]]


def newest_first(objects, instant):
    """`objects` as the API orders them: newest `instant` first, ties by id descending."""
    return [str(o.id) for o in sorted(objects, key=lambda o: (instant(o), o.id), reverse=True)]


def iso_z(seconds):
    return (BASE + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


# -- /tasks -----------------------------------------------------------------------------------


def test_task_page_is_newest_first_with_ties_broken_by_id_descending(world):
    body = get(world["clients"]["owner"], "/tasks", limit=200)
    assert ids(body) == newest_first(world["own"], lambda task: task.created_at)
    tied = [str(task.id) for task in world["own"][1:4]]
    assert sorted(tied, reverse=True) == [i for i in ids(body) if i in tied]


def test_tasks_split_over_pages_keep_the_order_and_the_total(world):
    client = world["clients"]["owner"]
    whole = ids(get(client, "/tasks", limit=200))
    pages = [get(client, "/tasks", limit=2, offset=offset) for offset in (0, 2, 4, 6)]
    assert [i for body in pages for i in ids(body)] == whole
    assert [body["total"] for body in pages] == [7, 7, 7, 7]
    assert [body["has_more"] for body in pages] == [True, True, True, False]
    assert [len(body["items"]) for body in pages] == [2, 2, 2, 1]


def test_task_page_past_the_end_is_empty_and_still_counts(world):
    body = get(world["clients"]["owner"], "/tasks", offset=50, status="active")
    assert body == {"items": [], "total": 5, "limit": 50, "offset": 50, "has_more": False}


def test_task_page_limits_one_and_two_hundred_are_accepted_and_beyond_refused(world):
    client = world["clients"]["owner"]
    assert len(get(client, "/tasks", limit=1)["items"]) == 1
    assert len(get(client, "/tasks", limit=200)["items"]) == 7
    assert "limit" in assert_error(client.get("/tasks?limit=0"), 422)["details"]
    assert "limit" in assert_error(client.get("/tasks?limit=201"), 422)["details"]


@pytest.mark.parametrize(
    ("query", "total"),
    [
        ({"status": "active"}, 5),
        ({"status": "paused"}, 1),
        ({"status": "canceled"}, 1),
        ({"schedule_kind": "cron"}, 4),
        ({"schedule_kind": "event"}, 1),
        ({"schedule_kind": "once", "status": "active"}, 0),
        ({"status": "active", "schedule_kind": "cron"}, 3),
    ],
)
def test_task_filters_count_only_matching_tasks(world, query, total):
    body = get(world["clients"]["owner"], "/tasks", limit=200, **query)
    assert body["total"] == total == len(body["items"])
    for item in body["items"]:
        assert {key: item[key] for key in query} == query


def test_created_by_filter_shows_an_agent_only_its_own_and_an_admin_anyones(world):
    owner, other = world["owner"], world["other"]
    clients = world["clients"]
    assert get(clients["owner"], "/tasks", created_by=owner.id)["total"] == 7
    assert get(clients["owner"], "/tasks", created_by=other.id)["total"] == 0
    theirs = get(clients["admin"], "/tasks", created_by=other.id, limit=200)
    assert ids(theirs) == newest_first(world["others"], lambda task: task.created_at)
    assert "created_by" in assert_error(clients["owner"].get("/tasks?created_by=x"), 422)["details"]


def test_an_agent_lists_only_its_own_tasks_and_an_admin_every_task(world):
    clients = world["clients"]
    assert ids(get(clients["other"], "/tasks")) == newest_first(
        world["others"], lambda task: task.created_at
    )
    everything = get(clients["admin"], "/tasks", limit=200)
    assert everything["total"] == Task.objects.count() == 10
    assert ids(everything) == newest_first(
        world["own"] + world["others"], lambda task: task.created_at
    )


def test_a_listed_task_is_exactly_the_task_as_read_alone(world):
    client = world["clients"]["owner"]
    for item in get(client, "/tasks", limit=200)["items"]:
        assert item == get(client, f"/tasks/{item['id']}")
    paused = get(client, "/tasks", status="paused")["items"][0]
    assert paused["created_at"] == (BASE + timedelta(seconds=20.000123)).isoformat()
    whole = get(client, "/tasks", status="canceled")["items"][0]
    assert whole["created_at"] == (BASE + timedelta(seconds=30)).isoformat()
    assert "." not in whole["created_at"]


TASK_QUERIES = [
    {},
    {"status": "active"},
    {"status": "paused", "schedule_kind": "rrule"},
    {"schedule_kind": "cron"},
    {"created_by": "owner"},
    {"created_by": "other", "status": "active"},
]
PAGES = [(50, 0), (1, 0), (2, 1), (3, 5), (200, 0), (4, 9), (5, 100)]


def test_every_task_page_is_the_orm_lists_page(world):
    for who, query, (limit, offset) in itertools.product(world["viewers"], TASK_QUERIES, PAGES):
        filters = {k: world[v].id if k == "created_by" else v for k, v in query.items()}
        expected = page(
            selectors.task_list(world["viewers"][who], **filters),
            limit=limit, offset=offset, render=task_data,
        )  # fmt: skip
        body = get(world["clients"][who], "/tasks", limit=limit, offset=offset, **filters)
        assert body == json.loads(json.dumps(expected)), (who, query, limit, offset)


# -- /runs ------------------------------------------------------------------------------------


def test_run_page_is_most_recent_first_with_ties_broken_by_id_descending(world):
    body = get(world["clients"]["owner"], "/runs", limit=200)
    own_runs = world["runs"][:8]
    assert ids(body) == newest_first(own_runs, lambda run: run.started_at)
    tied = [str(run.id) for run in own_runs[1:4]]
    assert sorted(tied, reverse=True) == [i for i in ids(body) if i in tied]


def test_runs_split_over_pages_keep_the_order_and_the_total(world):
    client = world["clients"]["owner"]
    whole = ids(get(client, "/runs", limit=200))
    pages = [get(client, "/runs", limit=3, offset=offset) for offset in (0, 3, 6)]
    assert [i for body in pages for i in ids(body)] == whole
    assert [body["total"] for body in pages] == [8, 8, 8]
    assert [body["has_more"] for body in pages] == [True, True, False]


def test_run_page_past_the_end_is_empty_and_still_counts(world):
    body = get(world["clients"]["owner"], "/runs", offset=8, limit=10, success="false")
    assert body == {"items": [], "total": 4, "limit": 10, "offset": 8, "has_more": False}


def test_run_page_limits_one_and_two_hundred_are_accepted_and_beyond_refused(world):
    client = world["clients"]["owner"]
    one = get(client, "/runs", limit=1)
    assert (len(one["items"]), one["total"], one["has_more"]) == (1, 8, True)
    assert len(get(client, "/runs", limit=200)["items"]) == 8
    assert "limit" in assert_error(client.get("/runs?limit=201"), 422)["details"]


def test_success_true_is_succeeded_and_false_is_finished_without_success(world):
    client = world["clients"]["owner"]
    succeeded = get(client, "/runs", success="true")
    assert {item["status"] for item in succeeded["items"]} == {"succeeded"}
    assert succeeded["total"] == 2
    failed = get(client, "/runs", success="false")
    assert {item["status"] for item in failed["items"]} == {
        "failed", "timed_out", "lost", "canceled",
    }  # fmt: skip
    assert failed["total"] == 4
    assert all(item["success"] is False for item in failed["items"])


def test_task_id_filter_lists_that_tasks_runs_only_when_visible(world):
    task, theirs = world["own"][0], world["others"][0]
    clients = world["clients"]
    mine = get(clients["owner"], "/runs", task_id=task.id)
    assert mine["total"] == 2
    assert {item["task_id"] for item in mine["items"]} == {str(task.id)}
    assert get(clients["owner"], "/runs", task_id=theirs.id)["total"] == 0
    assert get(clients["admin"], "/runs", task_id=theirs.id)["total"] == 2


def test_start_and_end_time_bound_started_at_inclusively(world):
    client = world["clients"]["owner"]
    assert get(client, "/runs", start_time=iso_z(200))["total"] == 7
    assert get(client, "/runs", end_time=iso_z(200))["total"] == 4
    window = get(client, "/runs", start_time=iso_z(200), end_time=iso_z(300.25))
    assert window["total"] == 4
    assert get(client, "/runs", start_time=iso_z(601))["total"] == 0


def test_include_errors_shows_the_text_otherwise_a_placeholder(world):
    client = world["clients"]["owner"]
    hidden = get(client, "/runs", success="false", limit=200)["items"]
    assert {item["error"] for item in hidden} == {HIDDEN_ERROR, None}
    shown = get(client, "/runs", success="false", limit=200, include_errors="true")["items"]
    assert {item["error"] for item in shown} == {"boom", "too slow", None}


def test_an_agent_lists_only_runs_of_its_own_tasks_and_an_admin_every_run(world):
    clients = world["clients"]
    theirs = get(clients["other"], "/runs")
    assert ids(theirs) == newest_first(world["runs"][8:], lambda run: run.started_at)
    everything = get(clients["admin"], "/runs", limit=200)
    assert everything["total"] == Run.objects.count() == 10
    assert ids(everything) == newest_first(world["runs"], lambda run: run.started_at)


def test_a_listed_run_is_exactly_the_run_as_read_alone_without_its_steps(world):
    client = world["clients"]["owner"]
    for item in get(client, "/runs", limit=200, include_errors="true")["items"]:
        alone = get(client, f"/runs/{item['id']}")
        del alone["steps"]
        assert item == alone
    lost = get(client, "/runs", start_time=iso_z(300), end_time=iso_z(301))["items"][0]
    assert lost["started_at"] == (BASE + timedelta(seconds=300.25)).isoformat()
    assert lost["output"] == {"status": "lost", "n": [1, 2.5, None]}


def test_run_pages_leave_the_steps_unread_and_unshown(world):
    steps = [{"id": "hello", "status": "succeeded", "output": {"text": "x" * 5000}}]
    Run.objects.filter(pk=world["runs"][0].pk).update(steps=steps)
    listed = selectors.run_page(world["viewers"]["owner"], limit=200, offset=0).rows
    assert [run.get_deferred_fields() for run in listed] == [{"steps"}] * 8
    body = get(world["clients"]["owner"], "/runs", limit=200)
    assert not any("steps" in item for item in body["items"])
    assert get(world["clients"]["owner"], f"/runs/{world['runs'][0].id}")["steps"] == steps


RUN_QUERIES = [
    {},
    {"success": True},
    {"success": False, "include_errors": True},
    {"task_id": "own"},
    {"task_id": "others", "success": True},
    {"start_time": 200, "end_time": 400},
    {"end_time": 300.25, "success": False},
]


def test_every_run_page_is_the_orm_lists_page(world):
    for who, query, (limit, offset) in itertools.product(world["viewers"], RUN_QUERIES, PAGES):
        filters = {
            key: world[value][0].id if key == "task_id"
            else BASE + timedelta(seconds=value) if key.endswith("_time") else value
            for key, value in query.items()
        }  # fmt: skip
        include_errors = filters.pop("include_errors", False)
        expected = page(
            selectors.run_list(world["viewers"][who], **filters),
            limit=limit, offset=offset,
            render=functools.partial(run_data, include_error=include_errors),
        )  # fmt: skip
        params = {
            key: str(value).lower() if isinstance(value, bool)
            else value.isoformat() if key.endswith("_time") else value
            for key, value in {**filters, "include_errors": include_errors}.items()
        }  # fmt: skip
        body = get(world["clients"][who], "/runs", limit=limit, offset=offset, **params)
        assert body == json.loads(json.dumps(expected)), (who, query, limit, offset)
