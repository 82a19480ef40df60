"""The operator console in a real browser: Debian's chromium driven by Playwright against a
live server on the test PostgreSQL. Screenshots of the dashboard, a task page and a run page
are written to var/screenshots/ on every run."""

from __future__ import annotations

import os
import re
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.utils import timezone
from playwright.sync_api import Page, sync_playwright

from tasks.models import Approval, Occurrence, Run, Task
from tasks.worker import Worker
from tests.conftest import ROOT, pipeline_threads_gone
from tests.factories import make_agent, make_occurrence, make_task
from tests.test_approvals import PIPELINE as APPROVAL_PIPELINE

pytestmark = pytest.mark.django_db(transaction=True)

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = ROOT / "var" / "screenshots"
PASSWORD = "console-password-123"


@pytest.fixture(scope="module")
def browser():
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are
    # still synchronous, so Django's async-safety check is told so.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    assert Path(CHROMIUM).exists(), ".ci/run installs Debian's chromium"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


@pytest.fixture
def page(browser, live_server):
    get_user_model().objects.create_superuser("operator", "ops@example.com", PASSWORD)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.errors = []  # console errors and uncaught exceptions, checked by the tests
    opened.on("console", lambda m: m.type == "error" and opened.errors.append(m.text))
    opened.on("response", lambda r: r.status >= 400 and opened.errors.append(f"{r.status} {r.url}"))
    opened.on("pageerror", lambda e: opened.errors.append(str(e)))
    opened.goto(f"{live_server.url}/admin/login/?next=/admin/")
    opened.fill("#id_username", "operator")
    opened.fill("#id_password", PASSWORD)
    opened.click("input[type=submit]")
    opened.wait_for_url(f"{live_server.url}/admin/")
    opened.base = live_server.url
    yield opened
    context.close()


def tile(page: Page, metric: str) -> str:
    return page.locator(f'[data-metric="{metric}"] [data-value]').get_attribute("data-value")


def shoot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def work() -> None:
    Worker(concurrency=1, burst=True, poll_interval=0.1).run(threading.Event())
    pipeline_threads_gone()


@pytest.fixture
def scene():
    """A task that dead-letters, one parked on an approval, and successful runs."""
    agent, _ = make_agent(scopes=["tasks:write", "http"])
    good = make_task(agent, title="hourly digest", max_retries=0)
    for _ in range(2):
        make_occurrence(good, at=timezone.now() - timedelta(seconds=2))
    # Refused by the SSRF guard (loopback is not allow-listed): fails at once, no retry.
    failing = make_task(
        agent,
        title="flaky export",
        max_retries=0,
        payload={
            "pipeline": [
                {"id": "boom", "uses": "http.request", "with": {"url": "http://127.0.0.1:9/export"}}
            ]
        },
    )
    make_occurrence(failing, at=timezone.now() - timedelta(seconds=2))
    gated = make_task(agent, title="send the report", payload=APPROVAL_PIPELINE, max_retries=0)
    make_occurrence(gated, at=timezone.now() - timedelta(seconds=2))
    work()
    return {"good": good, "failing": failing, "gated": gated}


def test_the_dashboard_shows_the_databases_numbers(page, scene):
    page.reload()
    assert tile(page, "dead") == str(Occurrence.objects.filter(state="dead").count())
    assert tile(page, "approvals_waiting") == "1"
    assert tile(page, "queued") == str(Occurrence.objects.filter(state="queued").count())
    assert tile(page, "running") == str(Run.objects.filter(status="running").count())
    failed = Run.objects.filter(status__in=["failed", "timed_out", "lost"]).count()
    assert tile(page, "failed_1h") == str(failed)
    assert page.locator('[data-metric="dead"]').inner_text().strip().endswith("needs attention")
    shoot(page, "dashboard")
    assert page.errors == []


def test_re_run_a_dead_occurrence_from_the_dashboard(page, scene):
    page.reload()
    before = Occurrence.objects.filter(state="dead").count()
    assert before >= 1
    with page.expect_navigation():
        page.locator('[data-list="dead"] button', has_text="Re-run").first.click()
    assert Occurrence.objects.filter(state="dead").count() == before - 1
    assert tile(page, "dead") == str(before - 1)


def test_approve_from_the_dashboard_and_the_run_resumes(page, scene):
    page.reload()
    row = page.locator('[data-list="approvals"] tr', has_text="send the report")
    with page.expect_navigation():
        row.get_by_role("button", name="Approve").click()
    assert Approval.objects.get(task=scene["gated"]).status == "approved"
    work()
    finished = Run.objects.filter(task=scene["gated"], status="succeeded").get()
    assert [step["id"] for step in finished.steps][-1] == "send"


def test_pause_a_task_from_its_page(page, scene):
    task = scene["good"]
    page.goto(f"{page.base}/admin/tasks/task/{task.pk}/change/")
    shoot(page, "task")
    with page.expect_navigation():
        page.click('[data-control="pause"]')
    assert Task.objects.get(pk=task.pk).status == "paused"
    assert page.locator("[data-task-status]").inner_text() == "paused"
    assert page.locator('[data-control="resume"]').count() == 1


def test_cancel_asks_first(page, scene):
    task = scene["good"]
    page.goto(f"{page.base}/admin/tasks/task/{task.pk}/change/")
    seen = []

    def dismiss(dialog):
        seen.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    page.click('[data-control="cancel"]')
    assert Task.objects.get(pk=task.pk).status == "active"
    assert seen == ["Cancel “hourly digest” for good? This cannot be undone."]
    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_navigation():
        page.click('[data-control="cancel"]')
    assert Task.objects.get(pk=task.pk).status == "canceled"


def test_a_run_page_shows_each_step_and_the_pretty_output(page, scene):
    run = Run.objects.filter(task=scene["gated"]).order_by("attempt").first()
    page.goto(f"{page.base}/admin/tasks/run/{run.pk}/change/")
    ids = [step["id"] for step in run.steps]
    assert page.locator("[data-step-id]").count() == len(ids)
    for step_id in ids:
        assert page.locator(f'[data-step-id="{step_id}"]').count() == 1
    shoot(page, "run")
    failed = Run.objects.get(task=scene["failing"])
    page.goto(f"{page.base}/admin/tasks/run/{failed.pk}/change/")
    assert "not a public address" in page.locator('[data-step-id="boom"] .error').inner_text()
    output = page.locator("[data-run-output]").inner_text()
    assert output.startswith("{\n")  # indented JSON, not one line
    assert page.errors == []


def test_every_admin_page_loads_without_console_errors(page, scene):
    admin.autodiscover()  # as the URLconf does, in case no URL was resolved in this process
    pages = []
    for model in admin.site._registry:
        meta = model._meta
        changelist = f"/admin/{meta.app_label}/{meta.model_name}/"
        pages.append(changelist)
        first = model.objects.order_by("pk").first()
        if first is not None:  # the operator is a superuser: every page is viewable
            pages.append(f"{changelist}{first.pk}/change/")
    for path in pages:
        response = page.goto(f"{page.base}{path}")
        assert response.status == 200, path
    assert page.errors == []


def _luminance(css_color: str) -> float:
    red, green, blue = (int(part) / 255 for part in re.findall(r"\d+", css_color)[:3])
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_both_themes_keep_the_json_and_tiles_readable(page, scene, theme):
    run = Run.objects.filter(task=scene["gated"]).order_by("attempt").first()
    page.evaluate(f"localStorage.setItem('theme', '{theme}')")
    page.goto(f"{page.base}/admin/tasks/run/{run.pk}/change/")
    block = page.locator("[data-run-output]")
    colors = block.evaluate("e => [getComputedStyle(e).color, getComputedStyle(e).backgroundColor]")
    text, background = (_luminance(color) for color in colors)
    assert abs(text - background) > 0.4, colors  # the text stands out from its background
    assert (background < 0.5) == (theme == "dark")
    page.goto(f"{page.base}/admin/")
    shoot(page, f"dashboard-{theme}")
    value = page.locator('[data-metric="dead"] [data-value]')
    colors = value.evaluate("e => [getComputedStyle(e).color, "
                            "getComputedStyle(e.closest('a')).backgroundColor]")  # fmt: skip
    text, background = (_luminance(color) for color in colors)
    assert abs(text - background) > 0.3, colors
    assert page.errors == []


def test_the_dashboard_works_from_the_keyboard(page, scene):
    page.reload()
    # Tab to the first tile: a real link, focusable, that opens its list with Enter.
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.dataset.metric") == "queued":
            break
    else:
        raise AssertionError("the first tile is not reachable with Tab")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "/admin/tasks/occurrence/" in page.url
    # Every form control on the task page has a label or text.
    page.goto(f"{page.base}/admin/tasks/task/{scene['good'].pk}/change/")
    controls = ".console input:not([type=hidden]), .console button"
    unlabeled = page.evaluate(
        f"() => [...document.querySelectorAll('{controls}')]"
        ".filter(e => !(e.labels && e.labels.length) && !e.textContent.trim()).length"
    )
    assert unlabeled == 0
