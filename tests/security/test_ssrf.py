"""The SSRF guard (pipelines.egress) holds against every address form and DNS rebinding.

The probes run in a network namespace of their own (tests/security/egress_probe.py), so an
address the guard wrongly lets through is reached on that namespace's `lo` and nowhere else.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import egress
from tests.conftest import command_env

PROBE = Path(__file__).with_name("egress_probe.py")
REFUSED = "is not a public address"


@pytest.fixture(scope="module")
def probe() -> dict:
    assert shutil.which("unshare"), "needs util-linux"
    assert shutil.which("ip"), "needs iproute2"
    script = (
        "ip link set lo up && ip addr add 100.100.100.200/32 dev lo "
        '&& ip addr add 93.184.216.34/32 dev lo && exec "$0" "$1"'
    )
    env = command_env(
        HTTP_TOOL_ALLOWED_HOSTS="",
        SECRET_KEY="x" * 60,
        DEBUG="0",
        DATABASE_URL="postgresql://u:p@127.0.0.1:1/unused",  # never connected to
    )
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", script, sys.executable, str(PROBE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    marked = [line for line in done.stdout.splitlines() if line.startswith("PROBE-RESULT ")]
    assert marked, done.stdout[-3000:]
    return json.loads(marked[-1].removeprefix("PROBE-RESULT "))


@pytest.mark.parametrize(
    "name",
    ["metadata", "sixtofour", "short_loopback", "mapped", "unspecified", "ipv6_loopback",
     "nat64", "loopback", "metadata_name", "mixed_name"],
)  # fmt: skip
def test_internal_address_forms_fail_the_step(probe, name):
    outcome = probe["results"][name]
    assert "error" in outcome, outcome
    assert REFUSED in outcome["error"]
    assert outcome["retryable"] is False


def test_no_internal_server_receives_anything(probe):
    assert probe["hits"]["canary"] == []


def test_a_rebinding_name_is_resolved_once_and_connected_to_as_checked(probe):
    # The first lookup answered the public address: the request went there, once.
    assert probe["results"]["rebind"] == {"status": 200, "json": {"served_by": "public"}}
    assert probe["lookups"]["rebind.example"] == 1
    assert any("Host: rebind.example" in hit or hit.endswith(" rebind.example:8080")
               for hit in probe["hits"]["public"]), probe["hits"]  # fmt: skip


def test_a_public_name_is_reached(probe):
    assert probe["results"]["public"]["json"] == {"served_by": "public"}


def test_webhook_delivery_is_guarded_the_same_way(probe):
    rebind = probe["results"]["webhook_rebind"]
    assert rebind["status"] == 200, rebind
    assert probe["lookups"]["hook-rebind.example"] == 1
    metadata = probe["results"]["webhook_metadata"]
    assert metadata["status"] is None
    assert REFUSED in metadata["error"]
    assert metadata["retryable"] is False


@pytest.mark.parametrize(
    ("address", "embedded"),
    [("2002:7f00:1::", "127.0.0.1"), ("::ffff:10.0.0.1", None),
     ("64:ff9b::a9fe:a9fe", "169.254.169.254"), ("64:ff9b:1::7f00:1", "127.0.0.1"),
     ("::127.0.0.1", "127.0.0.1"), ("2001:0:4136:e378:8000:63bf:3fff:fdd2", None)],
)  # fmt: skip
def test_embedded_ipv4_forms_are_decoded(address, embedded):
    reason = egress.refusal(ipaddress.ip_address(address))
    assert reason is not None
    if embedded:
        assert embedded in reason


def test_public_addresses_pass():
    for address in ("93.184.216.34", "2606:4700::1111", "64:ff9b::5db8:d822"):
        assert egress.refusal(ipaddress.ip_address(address)) is None


def test_allow_listed_hosts_are_the_only_way_in(settings):
    settings.HTTP_TOOL_ALLOWED_HOSTS = ["127.0.0.1"]
    assert egress.check_url("http://127.0.0.1:1/").host == "127.0.0.1"
    with pytest.raises(egress.EgressRefused, match=REFUSED):
        egress.check_url("http://127.0.0.2:1/")
    with pytest.raises(egress.EgressRefused, match="not an http"):
        egress.check_url("file:///etc/passwd")
