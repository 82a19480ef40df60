"""ops/prometheus, ops/alertmanager and ops/grafana are valid, their alerts behave as their
unit tests say, and every series they name is one Ordinaut serves."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import yaml
from django.utils import timezone
from prometheus_client import REGISTRY, generate_latest

from tests.conftest import ROOT

OPS = ROOT / "ops"
SERIES = re.compile(r"\b(ordinaut_[a-z_]+|django_http_[a-z_]+)\b")


def run(*command: str | Path, cwd: Path | None = None) -> str:
    assert shutil.which(str(command[0])), f"{command[0]} is installed by .ci/run"
    done = subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, check=False,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def dashboard_queries() -> list[str]:
    dashboard = json.loads((OPS / "grafana/dashboards/ordinaut.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_prometheus_config_is_valid(tmp_path):
    copy = tmp_path / "prometheus"
    shutil.copytree(OPS / "prometheus", copy)
    (copy / "metrics_token").write_text("t" * 40)  # mounted by Compose next to the config
    assert "SUCCESS" in run("promtool", "check", "config", copy / "prometheus.yml")


def test_alert_rules_are_valid_and_their_unit_tests_pass():
    assert "10 rules found" in run("promtool", "check", "rules", OPS / "prometheus/alerts.yml")
    assert "SUCCESS" in run("promtool", "test", "rules", "alerts_test.yml", cwd=OPS / "prometheus")


def test_every_alert_has_a_unit_test():
    rules = yaml.safe_load((OPS / "prometheus/alerts.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    tests = yaml.safe_load((OPS / "prometheus/alerts_test.yml").read_text())["tests"]
    firing = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert alerts == firing


def test_alertmanager_config_is_valid():
    assert "SUCCESS" in run("amtool", "check-config", OPS / "alertmanager/alertmanager.yml")


def test_every_dashboard_query_parses(tmp_path):
    # promtool parses each expression of a rule file: the queries become recording rules,
    # with Grafana's $__rate_interval as the interval Grafana would put in its place.
    rules = [
        {"record": f"dashboard:query_{n}", "expr": query.replace("$__rate_interval", "5m")}
        for n, query in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"{len(rules)} rules found" in run("promtool", "check", "rules", path)


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus():
    provider = yaml.safe_load((OPS / "grafana/provisioning/dashboards/ordinaut.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load((OPS / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = source["datasources"][0]["uid"]
    dashboard = json.loads((OPS / "grafana/dashboards/ordinaut.json").read_text())
    assert {panel["datasource"]["uid"] for panel in dashboard["panels"]} == {uid}
    titles = " ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for topic in ("queue", "runs", "enqueue lag", "api latency"):
        assert topic in titles


@pytest.mark.django_db(transaction=True)
def test_every_series_named_in_ops_is_served(client):
    """A typo in an alert or a panel would silently never fire or draw: each name must be
    in the web's /metrics or in a worker's and scheduler's own series."""
    from tasks.scheduler import Scheduler
    from tasks.worker import Worker
    from tests.conftest import pipeline_threads_gone
    from tests.factories import make_agent, make_occurrence, make_task

    agent, _ = make_agent()
    task = make_task(agent)
    make_occurrence(task, at=timezone.now())
    Worker(concurrency=1, burst=True, poll_interval=0.1).run(threading.Event())
    pipeline_threads_gone()
    Scheduler(lookahead=0).run(threading.Event(), once=True)
    served = client.get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()
    served += generate_latest(REGISTRY).decode()
    named = set()
    for text in [*dashboard_queries(), (OPS / "prometheus/alerts.yml").read_text()]:
        named |= set(SERIES.findall(text))
    missing = sorted(name for name in named if not re.search(rf"^{name}[{{ ]", served, re.M))
    assert not missing
