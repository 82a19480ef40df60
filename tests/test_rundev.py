"""`make dev`'s credentials: created once, kept across runs, brought up to date."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest
from django.conf import settings as django_settings

from agents.credentials import verify_secret
from agents.models import Agent, Credential
from agents.services import agent_create
from audit.services import Actor
from ordinaut.embedded import free_port
from ordinaut.management.commands.rundev import APPROVER_AGENT, DEMO_AGENT, DEMO_SCOPES, Command
from tests.conftest import ROOT, command_env, run_manage, wait_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def var_dir(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    return tmp_path


def test_first_run_creates_admin_and_demo_agent_with_every_demo_scope(var_dir):
    saved = Command()._ensure_credentials()
    agent = Agent.objects.get(name=DEMO_AGENT)
    assert set(DEMO_SCOPES) <= set(agent.scopes)
    assert saved["agent_id"] == str(agent.id)
    secret = Credential.objects.get(agent=agent, kind="secret")
    assert verify_secret(saved["agent_secret"], secret.secret_hash)
    assert (var_dir / "dev-credentials.json").stat().st_mode & 0o777 == 0o600


def test_a_demo_agent_from_an_older_checkout_gets_the_current_scopes(var_dir):
    old, _ = agent_create(name=DEMO_AGENT, scopes=["tasks:read", "notify"], actor=Actor.system("t"))
    saved = Command()._ensure_credentials()
    agent = Agent.objects.get(pk=old.pk)
    assert set(DEMO_SCOPES) | {"notify"} <= set(agent.scopes)
    assert saved["agent_id"] == str(agent.id)
    again = Command()._ensure_credentials()
    assert again["agent_secret"] == saved["agent_secret"]  # nothing re-issued on a second run


def test_first_run_creates_an_approver_that_can_decide_the_demo_agents_approvals(var_dir):
    saved = Command()._ensure_credentials()
    approver = Agent.objects.get(name=APPROVER_AGENT)
    assert saved["approver_id"] == str(approver.id)
    assert saved["approver_name"] == APPROVER_AGENT
    assert "approvals:decide" in approver.scopes
    secret = Credential.objects.get(agent=approver, kind="secret")
    assert verify_secret(saved["approver_secret"], secret.secret_hash)
    assert Command()._ensure_credentials()["approver_secret"] == saved["approver_secret"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_make_dev_names_each_process_in_its_output_and_says_what_it_stops(
    test_database_url, tmp_path
):
    port = free_port()
    env = command_env(
        DEBUG="1", SECRET_KEY=django_settings.SECRET_KEY, DATABASE_URL=test_database_url,
        REDIS_URL="", ORDINAUT_VAR_DIR=str(tmp_path), LOG_LEVEL="INFO",
    )  # fmt: skip
    child = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "rundev", "--addrport", f"127.0.0.1:{port}"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # so that a failed test can stop the whole tree
    )  # fmt: skip
    lines: list[str] = []

    def read() -> None:
        for line in child.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(
            lambda: {"web", "scheduler", "worker"} <= {line.split(" |")[0].strip()
                                                      for line in list(lines) if " | " in line},
            timeout=60, message=f"each process should have written a line:\n{''.join(lines)}",
        )  # fmt: skip
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=30) == 0, "".join(lines)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        # `make dev` keeps its embedded Redis for the next start; a test must not.
        run_manage("devservers", "stop", env=env)
    reader.join(timeout=5)
    output = "".join(lines)
    assert "stopping web, scheduler, worker ..." in output
    assert output.rstrip().endswith("stopped.")
    assert "approver demo-approver" in output
