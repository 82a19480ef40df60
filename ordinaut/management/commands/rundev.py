"""`make dev`: migrate, ensure the demo agents and admin user, run web + scheduler + worker."""

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from typing import IO

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
# A second agent, because an agent may not decide its own task's approvals: this one decides
# the demo agent's requests that name it among their `approvers` (as the quick start's do).
APPROVER_AGENT = "demo-approver"
APPROVER_SCOPES = ["approvals:decide", "runs:read"]
_OUTPUT_LOCK = threading.Lock()


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
            + f"\n  admin    {base}/admin/   user {credentials['admin_user']}"
            f"  password {credentials['admin_password']}"
            + f"\n  health   {base}/health"
            + f"\n  agent    {credentials['agent_name']}  id {credentials['agent_id']}"
            f"\n           secret {credentials['agent_secret']}"
            + f"\n  approver {credentials['approver_name']}  id {credentials['approver_id']}"
            f"\n           secret {credentials['approver_secret']}"
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
        """Create the admin user and demo agents once; reuse what var/ remembers after that."""
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
        self._ensure_agent(saved, "agent", DEMO_AGENT, DEMO_SCOPES)
        self._ensure_agent(saved, "approver", APPROVER_AGENT, APPROVER_SCOPES)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(saved, indent=2))
        path.chmod(0o600)
        return saved

    def _ensure_agent(self, saved: dict, key: str, name: str, scopes: list[str]) -> None:
        """Create agent `name` once, keep its scopes current, and record `{key}_id`/`_secret`."""
        actor = Actor.system("rundev")
        agent = Agent.objects.filter(name=name).first()
        if agent is None:
            agent, secret = agent_create(
                name=name, scopes=scopes, description="Demo agent created by make dev", actor=actor
            )
            saved[f"{key}_secret"] = secret
        else:
            if missing := [scope for scope in scopes if scope not in agent.scopes]:
                # A var/ database from an older checkout: give the demo its current scopes.
                agent = agent_update(
                    agent_id=agent.id, changes={"scopes": [*agent.scopes, *missing]}, actor=actor
                )
            if str(agent.id) != saved.get(f"{key}_id") or not saved.get(f"{key}_secret"):
                # The saved secret belongs to another database; issue a fresh one.
                _, secret = credential_issue_secret(agent=agent, actor=actor, label="make dev")
                saved[f"{key}_secret"] = secret
        saved.update({f"{key}_name": agent.name, f"{key}_id": str(agent.id)})

    def _run_processes(self, commands: dict[str, list[str]]) -> None:
        """Run each command as a child; when one exits or we are signalled, stop them all.

        Every line a child writes is shown prefixed with its name, so interleaved logs say
        which process wrote them.
        """
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # lines arrive as written, not in blocks
        width = max(map(len, commands))
        children, pumps = {}, []
        for name, argv in commands.items():
            child = subprocess.Popen(
                [sys.executable, "manage.py", *argv],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
            )
            children[name] = child
            pump = threading.Thread(
                target=self._relay, args=(f"{name:<{width}} | ", child.stdout), daemon=True
            )
            pump.start()
            pumps.append(pump)
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
        running = [name for name, child in children.items() if child.poll() is None]
        if running:
            with _OUTPUT_LOCK:
                self.stdout.write(f"stopping {', '.join(running)} ...")
                self.stdout.flush()
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for pump in pumps:
            pump.join(timeout=2)
        self.stdout.write("stopped.")
        if exit_code:
            raise CommandError(f"a process exited with {exit_code}")

    def _relay(self, prefix: str, stream: IO[str]) -> None:
        """Copy a child's output to ours line by line, each line behind `prefix`."""
        for line in stream:
            with _OUTPUT_LOCK:  # one whole line at a time, whichever child wrote it
                self.stdout.write(prefix + line.rstrip("\n"))
                self.stdout.flush()  # our stdout may be a pipe (`make dev | tee`): no batching
