"""The deployment files: Compose, Kubernetes and the image's entry point.

`make test-containers` runs the image and the Compose stack for real; these check what can
be checked without a daemon: the files are valid, and what they promise is in them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, command_env

K8S = ROOT / "ops" / "k8s"
VENV_BIN = Path(sys.executable).parent
COMPOSE_ENV = {"SECRET_KEY": "s" * 60, "POSTGRES_PASSWORD": "p" * 20}


def run(*command: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=120,
        check=False, cwd=ROOT, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def compose_config(*extra: str, **variables: str) -> dict:
    env = {**command_env(), **COMPOSE_ENV, **variables}
    done = run(VENV_BIN / "docker-compose", "-f", "compose.yaml", *extra, "config",
               "--format", "json", env=env)  # fmt: skip
    return yaml.safe_load(done.stdout)


def manifests() -> list[dict]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


# -- Compose --------------------------------------------------------------------------------


def test_compose_has_every_service_with_healthchecks_and_order():
    services = compose_config()["services"]
    assert set(services) == {"postgres", "redis", "migrate", "web", "scheduler", "worker"}
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "ping" in " ".join(services["redis"]["healthcheck"]["test"])
    for name in ("web", "scheduler", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
        assert services[name]["read_only"] is True
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # Scalable: nothing pins a worker's name or host port.
    assert "container_name" not in services["worker"]
    assert "ports" not in services["worker"]


def test_compose_names_a_missing_secret():
    env = {**command_env(), "POSTGRES_PASSWORD": "p" * 20}
    done = subprocess.run(
        [str(VENV_BIN / "docker-compose"), "-f", "compose.yaml", "config"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "SECRET_KEY" in done.stderr


def test_the_observability_profile_adds_prometheus_alertmanager_and_grafana():
    services = compose_config("--profile", "observability")["services"]
    assert {"prometheus", "alertmanager", "grafana"} <= set(services)
    mounts = " ".join(v["source"] for v in services["grafana"]["volumes"] if v["type"] == "bind")
    assert "ops/grafana/provisioning" in mounts


def test_the_test_override_uses_host_networking_only():
    ports = {"REDIS_PORT": "1", "WEB_PORT": "2", "SCHEDULER_METRICS_PORT": "3"}
    images = {"POSTGRES_IMAGE": "p", "REDIS_IMAGE": "r"}
    services = compose_config("-f", "ops/compose.test.yaml", **ports, **images)["services"]
    assert {s.get("network_mode") for s in services.values()} == {"host"}
    assert not any(s.get("ports") for s in services.values())


def test_the_example_env_names_every_required_secret():
    example = (ROOT / "ops" / "compose.env.example").read_text()
    for name in ("SECRET_KEY=", "POSTGRES_PASSWORD=", "METRICS_TOKEN="):
        assert name in example


# -- the image --------------------------------------------------------------------------------


def test_the_dockerfile_runs_as_uid_10001_with_a_healthcheck():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.12" in dockerfile
    assert "USER ${UID}:${UID}" in dockerfile
    assert "ARG UID=10001" in dockerfile
    assert "/health/live" in dockerfile.split("HEALTHCHECK", 1)[1]
    assert " AS builder" in dockerfile


@pytest.mark.django_db
def test_the_entrypoint_runs_manage_commands(test_database_url):
    env = command_env(DEBUG="0", SECRET_KEY="x" * 60, DATABASE_URL=test_database_url)
    env["PATH"] = f"{VENV_BIN}:{env['PATH']}"
    done = run("sh", ROOT / "ops" / "entrypoint.sh", "manage", "check", "--deploy",
               "--fail-level", "ERROR", env=env)  # fmt: skip
    assert "System check identified" in done.stdout + done.stderr


# -- Kubernetes -------------------------------------------------------------------------------


def test_the_manifests_validate_against_the_kubernetes_schemas():
    files = [path for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"]
    done = run(VENV_BIN / "kubernetes-validate", "--strict", "--quiet", *files)
    assert "error" not in (done.stdout + done.stderr).lower()


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_every_pod_is_non_root_read_only_bounded_and_probed():
    kinds = {}
    for doc in manifests():
        kinds.setdefault(doc["kind"], []).append(doc)
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert {"requests", "limits"} <= set(container["resources"])
            if doc["kind"] == "Deployment":
                assert "livenessProbe" in container
                assert "readinessProbe" in container
    web = next(d for d in kinds["Deployment"] if d["metadata"]["name"] == "ordinaut-web")
    probes = web["spec"]["template"]["spec"]["containers"][0]
    assert probes["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    names = {d["metadata"]["name"] for d in kinds["Deployment"]}
    assert names == {"ordinaut-web", "ordinaut-scheduler", "ordinaut-worker"}
    assert {d["spec"]["scaleTargetRef"]["name"] for d in kinds["HorizontalPodAutoscaler"]} == {
        "ordinaut-web", "ordinaut-worker"}  # fmt: skip
    assert len(kinds["PodDisruptionBudget"]) >= 2
    assert kinds["Ingress"][0]["spec"]["ingressClassName"] == "nginx"
    assert kinds["Job"][0]["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
    assert kinds["Service"]
