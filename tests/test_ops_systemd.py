"""The systemd units pass `systemd-analyze verify` and carry what ops/README.md promises."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

UNITS = ROOT / "ops" / "systemd"
INSTANCES = ["ordinaut-migrate.service", "ordinaut-web.service", "ordinaut-scheduler.service",
             "ordinaut-mcp.service", "ordinaut-worker@1.service"]  # fmt: skip


def installed(tmp_path: Path) -> Path:
    """The units as installed from this checkout (/opt/ordinaut is where they expect it)."""
    for unit in UNITS.glob("*.service"):
        text = unit.read_text().replace("/opt/ordinaut", str(ROOT))
        (tmp_path / unit.name).write_text(text)
    return tmp_path


def verify(directory: Path, *names: str) -> subprocess.CompletedProcess:
    assert shutil.which("systemd-analyze"), "systemd-analyze is installed by .ci/run"
    return subprocess.run(
        ["systemd-analyze", "verify", *names], cwd=directory, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


def test_every_unit_verifies(tmp_path):
    done = verify(installed(tmp_path), *INSTANCES)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == ""


def test_the_check_catches_a_broken_unit(tmp_path):
    directory = installed(tmp_path)
    broken = (
        (directory / "ordinaut-web.service")
        .read_text()
        .replace("ExecStart=", "ExecStart=not/an/absolute/path ")
    )
    (directory / "ordinaut-web.service").write_text(broken)
    assert verify(directory, "ordinaut-web.service").returncode != 0


def parse(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keep the directives' case
    parser.read_string((UNITS / name).read_text())
    return parser


@pytest.mark.parametrize("name", [n for n in INSTANCES if n != "ordinaut-worker@1.service"]
                         + ["ordinaut-worker@.service"])  # fmt: skip
def test_each_unit_is_hardened_and_waits_for_the_network(name):
    unit = parse(name)
    assert unit["Unit"]["Wants"] == "network-online.target"
    service = unit["Service"]
    for directive, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                             "PrivateTmp": "yes"}.items():  # fmt: skip
        assert service[directive] == value
    assert service["ReadWritePaths"] == "/var/lib/ordinaut"
    assert service["User"] == "ordinaut"
    if name != "ordinaut-migrate.service":
        assert "ordinaut-migrate.service" in unit["Unit"]["Requires"]
        assert "RestartSec" in service


def test_migrations_are_a_one_shot_unit_only():
    assert parse("ordinaut-migrate.service")["Service"]["Type"] == "oneshot"
    web = parse("ordinaut-web.service")["Service"]
    assert "ExecStartPre" not in web
