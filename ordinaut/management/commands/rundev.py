"""`make dev`: migrate, ensure the demo agent and admin user, run web + scheduler + worker."""

import json
import os
import secrets
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from agents.models import Agent
from agents.services import agent_create, agent_update, credential_issue_secret
from audit.services import Actor

DEMO_AGENT = "demo"
DEMO_SCOPES = [
    "tasks:read", "tasks:write", "runs:read", "events:publish", "approvals:decide", "tools:read",
]  # fmt: skip


class Command(BaseCommand):
    help = "Development: migrate, create demo credentials, run web, scheduler and worker."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("--addrport", default="127.0.0.1:8000")

    def handle(self, *args, **options) -> None:  # noqa: ANN002, ANN003
        if not settings.DEBUG:
            raise CommandError("rundev is for development; set DEBUG=1 (make dev does)")
        call_command("migrate", interactive=False, verbosity=1)
        credentials = self._ensure_credentials()
        base = f"http://{options['addrport']}"
        self.stdout.write(
            self.style.SUCCESS("\nOrdinaut is starting:")
            + f"\n  admin   {base}/admin/   user {credentials['admin_user']}"
            f"  password {credentials['admin_password']}"
            + f"\n  health  {base}/health"
            + f"\n  agent   {credentials['agent_name']}  id {credentials['agent_id']}"
            f"\n          secret {credentials['agent_secret']}"
            + f"\n  (saved in {self._credentials_path()}; Ctrl-C stops everything)\n"
        )
        self._run_processes(
            {
                "web": ["runserver", options["addrport"]],
                "scheduler": ["runscheduler"],
                "worker": ["runworker", "--concurrency", "2"],
            }
        )

    def _credentials_path(self):  # noqa: ANN202
        return settings.VAR_DIR / "dev-credentials.json"

    def _ensure_credentials(self) -> dict:
        """Create the admin user and demo agent once; reuse what var/ remembers after that."""
        path = self._credentials_path()
        saved = json.loads(path.read_text()) if path.exists() else {}
        user_model = get_user_model()
        if (
            not saved.get("admin_password")
            or not user_model.objects.filter(username="admin").exists()
        ):
            password = secrets.token_urlsafe(12)
            user, _ = user_model.objects.get_or_create(
                username="admin", defaults={"email": "admin@localhost"}
            )
            user.is_staff = user.is_superuser = True
            user.set_password(password)
            user.save()
            saved.update(admin_user="admin", admin_password=password)
        agent = Agent.objects.filter(name=DEMO_AGENT).first()
        if agent is None:
            agent, secret = agent_create(
                name=DEMO_AGENT,
                scopes=DEMO_SCOPES,
                description="Demo agent created by make dev",
                actor=Actor.system("rundev"),
            )
            saved.update(agent_secret=secret)
        else:
            if missing := [scope for scope in DEMO_SCOPES if scope not in agent.scopes]:
                # A var/ database from an older checkout: give the demo its current scopes.
                agent = agent_update(
                    agent_id=agent.id,
                    changes={"scopes": [*agent.scopes, *missing]},
                    actor=Actor.system("rundev"),
                )
            if str(agent.id) != saved.get("agent_id") or not saved.get("agent_secret"):
                # The saved secret belongs to another database; issue a fresh one.
                _, secret = credential_issue_secret(
                    agent=agent, actor=Actor.system("rundev"), label="make dev"
                )
                saved.update(agent_secret=secret)
        saved.update(agent_name=agent.name, agent_id=str(agent.id))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(saved, indent=2))
        path.chmod(0o600)
        return saved

    def _run_processes(self, commands: dict[str, list[str]]) -> None:
        """Run each command as a child; when one exits or we are signalled, stop them all."""
        children = {
            name: subprocess.Popen([sys.executable, "manage.py", *argv], env=os.environ.copy())
            for name, argv in commands.items()
        }
        stopping = False

        def request_stop(signum, frame) -> None:  # noqa: ANN001
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        exit_code = 0
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    self.stderr.write(f"{name} exited with {child.returncode}; stopping the rest")
                    exit_code = child.returncode or 1
                    stopping = True
                    break
            time.sleep(0.2)
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        if exit_code:
            raise CommandError(f"a process exited with {exit_code}")
