"""Every fenced example in README.md and docs/ is executed, so one that stops working fails CI.

Each block is announced by an HTML comment on the line before it, `<!-- example: KIND -->`, and
KIND says how it runs: `quickstart` is a shell session run by bash against a live web server
and worker; `redis` commands are sent to the session's Redis; `event-request` is a POST /events
body; `payload` a pipeline validated against registered tools; `make` lines are make targets;
`webhook-request` and `webhook-verify` are checked against a real signed delivery;
`error-envelope` against a real 422; `addmcpserver` lines are parsed by the command;
`templates` cases are rendered by our templating; `coordination` is a shell session of
three agents against a live web server and worker; `sql` (ops/README.md's database roles)
is run on a fresh database, migrated as the owner role it creates; `ops` blocks (deploying,
systemd, backups) are checked against what they name: files, manage.py commands and their
options, Compose services and profiles, unit files, the scripts' variables (`make
test-containers` runs the deployment itself); `output` blocks are
shapes of an answer and must at least be valid JSON. A block without a known KIND fails
`test_every_example_says_how_it_runs`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis
from django.conf import settings

from audit.services import Actor
from ordinaut.embedded import free_port
from pipelines.models import McpServer
from pipelines.templating import TemplateContext, TemplateError, render
from pipelines.validation import validate_payload
from tasks import services
from tasks.delivery import outbox, streams
from tasks.delivery.webhooks import deliver_webhooks
from tasks.models import Event, Occurrence, Run
from tests.api_support import (  # noqa: F401 (fixtures)
    agent_with_key,
    api_fixture,
    api_key_for,
    fresh_throttles,
)
from tests.conftest import ROOT, command_env, processes, run_manage, wait_for
from tests.factories import make_agent
from tests.test_webhooks import agent_with_webhook, finish_one_run, receiver  # noqa: F401

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "ops" / "README.md"]
MARKER = re.compile(r"^<!-- example: (?P<kind>[\w-]+) -->$")
ACTOR = Actor.system("doc examples")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    kind: str | None
    language: str
    text: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        if not lines[index].startswith("```"):
            index += 1
            continue
        start, language = index, lines[index][3:].strip()
        end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
        marker = MARKER.match(lines[start - 1]) if start else None
        text = "\n".join(lines[start + 1 : end]) + "\n"
        blocks.append(Block(path, start + 1, marker and marker["kind"], language, text))
        index = end + 1
    return blocks


BLOCKS = [block for path in DOCS for block in fenced_blocks(path)]
KINDS = {
    "quickstart", "redis", "event-request", "payload", "make", "webhook-request",
    "webhook-verify", "error-envelope", "addmcpserver", "output", "auth", "templates",
    "coordination", "sql", "ops",
}  # fmt: skip


def blocks_of(kind: str) -> list[Block]:
    return [block for block in BLOCKS if block.kind == kind]


def by_kind(kind: str):
    found = blocks_of(kind)
    assert found, f"no `{kind}` example in the docs any more: drop its runner"
    return pytest.mark.parametrize("block", found, ids=str)


def test_every_example_says_how_it_runs():
    unannounced = [f"{block} ({block.kind or 'no marker'})" for block in BLOCKS
                   if block.kind not in KINDS]  # fmt: skip
    assert not unannounced, "blocks without a known <!-- example: KIND -->:\n" + "\n".join(
        unannounced
    )
    assert len(BLOCKS) >= 10


# -- the quick start: bash against a live web server and worker ------------------------------


@pytest.fixture
def live_stack(test_database_url):
    """gunicorn and one runworker on the test database, as `make dev` runs them."""
    port = free_port()
    env = command_env(
        DEBUG="0", SECRET_KEY=settings.SECRET_KEY, DATABASE_URL=test_database_url,
        REDIS_URL="", LOG_LEVEL="WARNING",
    )  # fmt: skip
    commands = [
        [sys.executable, "-m", "gunicorn", "ordinaut.wsgi", "-b", f"127.0.0.1:{port}",
         "--workers", "1", "--threads", "4"],
        [sys.executable, str(ROOT / "manage.py"), "runworker"],
    ]  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def manage(*args: str) -> subprocess.CompletedProcess:
        # Agents are made by the command operators use (production settings), not by the
        # test session: it hashes secrets with a fast hasher that the servers refuse.
        done = run_manage(*args, env=env)
        assert done.returncode == 0, done.stderr
        return done

    with processes(commands, env) as running:
        wait_for(lambda: _answers(f"{base}/health/live"), 30, "gunicorn answers")
        yield base, running.output, manage
    output = running.output()
    assert "Traceback" not in output, output


def _answers(url: str) -> bool:
    result = subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=False)
    return result.returncode == 0


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@by_kind("quickstart")
def test_the_quick_start_runs_as_written(block, live_stack, tmp_path):
    base, server_log, manage = live_stack
    scopes = "tasks:read,tasks:write,runs:read"
    agent = json.loads(
        manage("createagent", f"demo-{block.line}", "--scopes", scopes, "--json").stdout
    )
    approver = json.loads(
        manage(
            "createagent", f"approver-{block.line}", "--scopes", "approvals:decide", "--json"
        ).stdout
    )
    creds = tmp_path / "dev-credentials.json"  # as `make dev` writes it
    creds.write_text(
        json.dumps({
            "agent_id": agent["id"], "agent_secret": agent["secret"],
            "approver_id": approver["id"], "approver_secret": approver["secret"],
        })
    )  # fmt: skip
    env = {**os.environ, "BASE": base, "CREDS": str(creds)}

    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.text],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert done.returncode == 0, (done.stdout, done.stderr, server_log())
    preview, triggered, run_line, approved, gated_line = done.stdout.strip().splitlines()[-5:]
    assert len(json.loads(preview)["occurrences"]) == 3
    assert json.loads(triggered)["success"] is True
    run = json.loads(run_line)
    assert run["status"] == "succeeded", run
    assert run["output"]["steps"]["greeting"] == "Hello, Ordinaut!"
    assert json.loads(approved)["success"] is True, approved
    gated = json.loads(gated_line)
    assert gated["status"] == "succeeded", gated
    assert gated["output"]["steps"]["send"] == {"approved_by": f"approver-{block.line}"}


def _token(base: str, agent: dict) -> str:
    status, body = curl(
        f"curl -X POST {base}/agents/auth/token -H 'Content-Type: application/json' "
        f"-d '{json.dumps({'agent_id': agent['id'], 'agent_secret': agent['secret']})}'"
    )
    assert status == 200, body
    return body["access_token"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@by_kind("coordination")
def test_two_agents_coordinate_as_the_events_page_shows(block, live_stack, tmp_path):
    base, server_log, manage = live_stack
    made = {
        name: json.loads(
            manage("createagent", f"{name}-{block.line}", "--scopes", scopes, "--json").stdout
        )
        for name, scopes in {
            "billing": "tasks:read,tasks:write,runs:read,events:publish",
            "shipping": "tasks:read,tasks:write,runs:read",
            "admin": "admin",
        }.items()
    }
    env = {
        **os.environ, "BASE": base, "SHIPPING_ID": made["shipping"]["id"],
        **{name.upper(): _token(base, agent) for name, agent in made.items()},
    }  # fmt: skip

    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.text],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert done.returncode == 0, (done.stdout, done.stderr, server_log())
    before, after, run_line = done.stdout.strip().splitlines()[-3:]
    assert json.loads(before)["details"]["triggered_tasks"] == 0
    assert json.loads(after)["details"]["triggered_tasks"] == 0
    run = json.loads(run_line)
    assert run["status"] == "succeeded", run
    assert run["output"]["steps"]["ship"] == {"order": 42}
    # One run: the event published before the subscription reached nothing.
    assert Run.objects.filter(task__title="Ship paid orders").count() == 1
    assert Event.objects.count() == 2


def shell_lines(text: str) -> list[str]:
    """The commands of a shell block: continued lines joined, comments dropped."""
    joined = text.replace("\\\n", " ")
    return [
        line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")
    ]


def curl(command: str) -> tuple[int, dict]:
    """Run a documented curl line; return (HTTP status, JSON body)."""
    done = subprocess.run(
        [*shlex.split(command), "-sS", "-w", "\n%{http_code}"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, (command, done.stderr)
    body, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(body)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@by_kind("auth")
def test_the_authentication_commands_work_with_their_placeholders_filled(block, live_stack):
    base, server_log, manage = live_stack
    admin = json.loads(manage("createagent", "doc-admin", "--scopes", "admin", "--json").stdout)
    values = {"localhost:8000": base.removeprefix("http://")}
    values["<admin token>"] = curl(
        f"curl -X POST {base}/agents/auth/token -H 'Content-Type: application/json' "
        f"-d '{json.dumps({'agent_id': admin['id'], 'agent_secret': admin['secret']})}'"
    )[1]["access_token"]
    answers = []
    for line in shell_lines(block.text):
        for placeholder, value in values.items():
            line = line.replace(placeholder, value)
        if line.startswith("python manage.py "):
            agent = json.loads(manage(*shlex.split(line)[2:], "--json").stdout)
            values.update({"<id>": agent["id"], "ord_s_...": agent["secret"]})
            continue
        assert line.startswith("curl "), line
        status, body = curl(line)
        assert 200 <= status < 300, (line, status, body, server_log())
        answers.append(body)
        if "access_token" in body:
            values["<access_token>"] = body["access_token"]
    exchanged, listed, issued = answers
    assert exchanged["token_type"].lower() == "bearer"
    assert listed["items"] == []
    assert issued["api_key"].startswith("ord_k_")


# -- events: the POST body and the redis-cli lines -------------------------------------------


@pytest.mark.django_db
@by_kind("event-request")
def test_the_event_request_is_accepted_and_triggers_a_matching_task(block, api):
    agent, _ = make_agent(scopes=["events:publish", "tasks:write"])
    body = json.loads(block.text)
    services.task_create(
        created_by=agent, actor=ACTOR, title="on paid", schedule_kind="event",
        schedule_expr=body["topic"].split(".")[0] + ".*",
        payload={"pipeline": [{"id": "a", "uses": "debug.echo", "with": {}}]},
    )  # fmt: skip

    response = api.as_(api_key_for(agent)).post("/events", body)

    assert response.status_code == 202, response.content
    assert response.json()["details"]["triggered_tasks"] == 1


@pytest.fixture
def doc_redis(settings):
    """The session's Redis under the documented stream names, emptied afterwards."""
    client = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    names = (settings.INBOUND_EVENT_STREAM, settings.OUTBOX_STREAM)
    assert names == ("ordinaut:events:in", "ordinaut:events:out")  # the names the docs use
    client.delete(*names)
    yield client
    client.delete(*names)
    client.close()


def redis_commands(block: Block, **placeholders: str) -> list[list[str]]:
    text = block.text
    for name, value in placeholders.items():
        text = text.replace(f"<{name}>", value)
    words = shlex.split(text.replace("\\\n", " "))  # a shell joins continued lines
    commands, current = [], None
    for word in words:
        if word == "redis-cli":
            current = []
            commands.append(current)
        else:
            current.append(word)
    return commands


@pytest.mark.django_db
def test_the_redis_examples_feed_and_read_the_streams(doc_redis):
    agent, _ = make_agent(scopes=["events:publish"])
    xadd, xread = blocks_of("redis")

    for command in redis_commands(xadd, **{"agent-id": str(agent.id)}):
        doc_redis.execute_command(*command)
    consumed = streams.consume(doc_redis, consumer="doc-examples")
    assert consumed.stored == 1, consumed

    event = Event.objects.get(idempotency_key="pay-42")
    assert event.topic == "orders.paid"
    assert event.payload == {"order_id": 42}
    assert event.source_agent_id == agent.id

    assert outbox.relay(doc_redis) >= 1
    [command] = redis_commands(xread)
    reply = doc_redis.execute_command(*command)
    # redis-py answers XREAD as {stream: [entries]} (RESP3) or [[stream, entries]] (RESP2).
    [(stream, entries)] = reply.items() if isinstance(reply, dict) else reply
    assert stream == "ordinaut:events:out"
    assert "event.published" in {fields["type"] for _, fields in entries}


# -- pipelines --------------------------------------------------------------------------------


@pytest.mark.django_db
@by_kind("payload")
def test_the_pipeline_example_validates_once_its_servers_are_registered(block):
    text_input = {"type": "object", "properties": {"text": {"type": "string"}}}
    city_input = {"type": "object", "properties": {"city": {"type": "string"}}}
    for name, tool, schema in (("weather", "forecast", city_input),
                               ("telegram", "send_message", text_input)):  # fmt: skip
        McpServer.objects.create(
            name=name, transport="stdio", command="unused", required_scope=f"mcp:{name}",
            tools=[{"name": tool, "description": "", "input_schema": schema}],
        )  # fmt: skip

    payload = json.loads(block.text)

    assert validate_payload(payload, scopes=["mcp:weather", "mcp:telegram"]) == payload
    with pytest.raises(Exception, match="mcp:telegram"):
        validate_payload(payload, scopes=["mcp:weather"])


@by_kind("output")
def test_answer_shapes_are_valid_json(block):
    assert isinstance(json.loads(block.text), dict)


@by_kind("make")
def test_the_documented_make_targets_exist(block):
    targets = [line.split()[1] for line in block.text.splitlines() if line.startswith("make ")]
    assert targets
    for target in targets:
        dry = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
        assert dry.returncode == 0, (target, dry.stderr)


# -- webhooks: the wire format and the receiver's recipe -------------------------------------


@pytest.mark.django_db
def test_the_webhook_example_matches_a_real_signed_delivery(receiver):  # noqa: F811
    hook = receiver()
    finish_one_run(agent_with_webhook(hook.url), status="failed", error="step fetch: 503")
    deliver_webhooks()
    # A failed last attempt posts run.failed and then run.dead; the docs show run.failed.
    [(headers, raw_body)] = [
        (headers, body) for headers, body in hook.requests
        if headers["X-Ordinaut-Event"] == "run.failed"
    ]  # fmt: skip
    [wire] = blocks_of("webhook-request")
    [recipe] = blocks_of("webhook-verify")

    head, _, example_body = wire.text.partition("\n\n")
    documented_headers = {line.split(":", 1)[0] for line in head.splitlines()[1:]}
    assert documented_headers <= set(headers), documented_headers - set(headers)
    documented_keys = set(re.findall(r'"(\w+)":', example_body))
    assert documented_keys == set(json.loads(raw_body)), documented_keys ^ set(json.loads(raw_body))

    namespace: dict = {}
    exec(compile(recipe.text, str(recipe), "exec"), namespace)  # noqa: S102 (our own docs)
    verify = namespace["verify"]
    secret = settings.WEBHOOK_SIGNING_SECRET
    assert verify(secret, headers, raw_body) is True
    assert verify(secret, headers, raw_body.replace(b"failed", b"succeeded")) is False
    assert verify("another secret", headers, raw_body) is False
    assert Occurrence.objects.exists()


# -- the command line and the error envelope -------------------------------------------------


@by_kind("addmcpserver")
def test_the_addmcpserver_lines_are_accepted_by_the_command(block):
    from pipelines.management.commands.addmcpserver import Command, split_command

    parsed = []
    for line in shell_lines(block.text):
        words = shlex.split(line)
        assert words[:3] == ["python", "manage.py", "addmcpserver"], line
        parser = Command().create_parser("manage.py", "addmcpserver")
        parsed.append(vars(parser.parse_args(words[3:])))
    calendar, weather = parsed
    assert split_command(calendar["command"]) == ["npx"]
    assert calendar["arg"] == ["-y", "@acme/calendar-mcp"]
    assert calendar["env"] == ["CALENDAR_TOKEN=${secrets.CALENDAR_TOKEN}"]
    assert weather["url"] == "https://mcp.example.com/mcp"
    assert (weather["scope"], weather["timeout"]) == ("mcp:weather", 30)


@pytest.mark.django_db
@by_kind("error-envelope")
def test_the_error_envelope_is_what_a_422_answers(block, api):
    documented = json.loads(block.text)
    _, key = agent_with_key()
    response = api.as_(key).post(
        "/schedules/preview", {"schedule_kind": "cron", "schedule_expr": "not a cron"}
    )

    assert response.status_code == 422
    answered = response.json()
    assert set(answered) == set(documented)
    assert set(answered["error"]) == set(documented["error"])
    assert answered["error"]["code"] == documented["error"]["code"]
    assert "schedule_expr" in answered["error"]["details"]
    assert answered["error"]["correlation_id"] == response["X-Correlation-ID"]


# The context docs/compat.md states above its `templates` block.
TEMPLATE_DATA = {"params": {"name": "Ana"},
                 "steps": {"weather": {"temp": 25.5, "sunny": True, "tags": ["sun"]}}}  # fmt: skip
TEMPLATE_NOW = datetime(2026, 3, 28, 7, 30, 0, 123456, tzinfo=UTC)


@by_kind("templates")
def test_the_template_cases_render_as_the_page_says(block):
    cases = json.loads(block.text)
    assert cases, "an empty table of cases"
    for case in cases:
        context = TemplateContext(
            data={**TEMPLATE_DATA, "now": "unused: ${now} is the run's instant"},
            now=TEMPLATE_NOW.astimezone(ZoneInfo("Europe/Chisinau")),
        )
        schema = {"type": "object", "properties": {"x": case.get("field", {})}}
        if "ordinaut_error" in case:
            with pytest.raises(TemplateError) as caught:
                render({"x": case["template"]}, context, schema)
            assert str(caught.value) == case["ordinaut_error"], case
        else:
            assert render({"x": case["template"]}, context, schema) == {"x": case["ordinaut"]}, case


# -- ops: the database roles --------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@by_kind("sql")
def test_the_role_recipe_leaves_the_app_unable_to_rewrite_the_audit_log(block, test_database_url):
    import uuid

    import psycopg

    suffix = uuid.uuid4().hex[:8]
    text = (
        block.text.replace("ordinaut_owner", f"owner_{suffix}")
        .replace("ordinaut_app", f"app_{suffix}")
        .replace("DATABASE ordinaut OWNER", f"DATABASE roles_{suffix} OWNER")
    )
    as_superuser, as_owner = text.split("-- then connected", 1)
    server = test_database_url.rsplit("/", 1)[0]
    host = server.split("@", 1)[-1]

    def url(role: str, secret: str) -> str:
        return f"postgresql://{role}_{suffix}:{secret}@{host}/roles_{suffix}"

    try:
        with psycopg.connect(test_database_url, autocommit=True) as conn:
            for statement in as_superuser.split(";"):
                if statement.strip().strip("-").strip() and "CREATE" in statement:
                    conn.execute(statement)
        owner_env = command_env(DEBUG="0", SECRET_KEY="x" * 60,
                                DATABASE_URL=url("owner", "owner-secret"))  # fmt: skip
        done = run_manage("migrate", "--no-input", env=owner_env, timeout=180)
        assert done.returncode == 0, done.stderr
        with psycopg.connect(url("owner", "owner-secret"), autocommit=True) as conn:
            conn.execute("--" + as_owner)
        app_env = command_env(DEBUG="0", SECRET_KEY="x" * 60,
                              DATABASE_URL=url("app", "app-secret"))  # fmt: skip
        made = run_manage("createagent", "roles-check", "--scopes", "tasks:read", env=app_env)
        assert made.returncode == 0, made.stderr  # the app writes (and chains) audit events
        checked = run_manage("verifyaudit", env=app_env)
        assert checked.returncode == 0, checked.stderr
        with psycopg.connect(url("app", "app-secret"), autocommit=True) as conn:
            for forbidden in (
                "ALTER TABLE audit_auditevent DISABLE TRIGGER audit_append_only",
                "UPDATE audit_auditevent SET action = 'forged'",
                "DROP TRIGGER audit_chain ON audit_auditevent",
            ):
                with pytest.raises(psycopg.Error):
                    conn.execute(forbidden)
    finally:
        with psycopg.connect(test_database_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS roles_{suffix} WITH (FORCE)")
            conn.execute(f"DROP ROLE IF EXISTS app_{suffix}")
            conn.execute(f"DROP ROLE IF EXISTS owner_{suffix}")


# -- ops: deployment, systemd and backup recipes, checked against what they name -------------


def _compose_file() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def _ops_problems(text: str) -> list[str]:
    from django.core.management import get_commands, load_command_class

    compose = _compose_file()
    services = set(compose["services"])
    profiles = {p for s in compose["services"].values() for p in s.get("profiles", [])}
    commands = get_commands()
    problems = []
    for raw in text.replace("\\\n", " ").splitlines():
        line = raw.split(" #", 1)[0]
        for path in re.findall(r"(?<![\w/])ops/[\w./@*-]+", line):
            if not list(ROOT.glob(path.rstrip("."))) and not (ROOT / path).parent.is_dir():
                problems.append(f"{path}: no such file")
        for name, args in re.findall(r"manage\.py (\w+)((?: [^|;&]*)?)", line):
            if name not in commands:
                problems.append(f"manage.py {name}: no such command")
                continue
            parser = load_command_class(commands[name], name).create_parser("manage.py", name)
            known = {opt for action in parser._actions for opt in action.option_strings}
            flags = re.findall(r"(?<!\S)(--[\w-]+)", args)
            problems += [f"manage.py {name} {f}: unknown option" for f in flags if f not in known]
        for service in re.findall(r"docker compose (?:exec|logs|restart) (\w+)", line):
            problems += [] if service in services else [f"compose service {service}?"]
        for service in re.findall(r"--scale (\w+)=", line):
            problems += [] if service in services else [f"compose service {service}?"]
        for profile in re.findall(r"--profile (\w+)", line):
            problems += [] if profile in profiles else [f"compose profile {profile}?"]
        for unit in re.findall(r"\b(ordinaut-[\w@-]+)", line):
            template = re.sub(r"@[^.]*$", "@", unit.removesuffix(".service"))
            if not (ROOT / "ops" / "systemd" / f"{template}.service").exists():
                problems.append(f"{unit}: no unit file")
        script = re.search(r"ops/(backup|restore)\.sh", line)
        if script:
            body = (ROOT / "ops" / f"{script[1]}.sh").read_text()
            names = re.findall(r"\b([A-Z_]{4,})=", line)
            problems += [f"{script[0]} does not read {v}" for v in names if v not in body]
    return problems


@by_kind("ops")
def test_ops_recipes_name_only_what_exists(block):
    assert _ops_problems(block.text) == []


def test_the_ops_check_finds_a_wrong_name():
    wrong = (
        "docker compose exec webb python manage.py createagentx\n"
        "docker compose up -d --scale workers=2 --profile observabilty\n"
        "systemctl enable ordinaut-wrker@1 && ops/nothing.sh\n"
        "BACKUP_DIRS=/x ops/backup.sh\n"
        "python manage.py createagent x --scopez a\n"
    )
    assert len(_ops_problems(wrong)) == 7
