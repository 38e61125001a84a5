"""The systemd units and udev rule: ``systemd-analyze verify`` clean, exposure <= 3.0, and
consistent with what install and the config loader expect.

``systemd-analyze verify`` checks that ExecStart= exists, which /opt/onecard/… does not
on a build machine. So the units are verified with ``--root`` pointing at a scratch tree:
the host's own unit files (for sysinit.target, network-online.target, modprobe@.service …),
a stand-in executable at the ExecStart= path, and our units in ``etc/systemd/system``.
Nothing else is relaxed: any line on stderr fails the test.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from central.provision import add_site, init_broker
from edge_agent import install as setup
from edge_agent.config import load_config

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
EDGE = UNITS / "onecard-edge.service"
CENTRAL = UNITS / "onecard-central.service"
RULE = UNITS / "99-onecard-serial.rules"
HOST_UNITS = [Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")]
MAX_EXPOSURE = 3.0

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)


def settings(unit: Path) -> list[tuple[str, str]]:
    """(key, value) of every setting, in order (comments and sections left out)."""
    out = []
    for line in unit.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.append((key, value))
    return out


def values(unit: Path, key: str) -> list[str]:
    return [v for k, v in settings(unit) if k == key]


def verify_root(tmp_path: Path, unit: Path) -> Path:
    root = tmp_path / "root"
    lib = root / "usr/lib/systemd/system"
    lib.mkdir(parents=True)
    for host in HOST_UNITS:
        if host.is_dir():
            for path in host.iterdir():
                # Regular files only: the host's alias symlinks are absolute and would
                # resolve outside the scratch root.
                if path.is_file() and not path.is_symlink() and not (lib / path.name).exists():
                    shutil.copy(path, lib / path.name)
    exe = values(unit, "ExecStart")[0].split()[0]
    fake = root / exe.lstrip("/")
    fake.parent.mkdir(parents=True, exist_ok=True)
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    return root


def verify(tmp_path: Path, unit: Path) -> subprocess.CompletedProcess[str]:
    root = verify_root(tmp_path, unit)
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", f"/etc/systemd/system/{unit.name}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def exposure(unit: Path) -> float:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match[1])


@pytest.mark.integration
@needs_systemd_analyze
@pytest.mark.parametrize("unit", [EDGE, CENTRAL], ids=lambda p: p.name)
def test_systemd_analyze_verify_prints_nothing(unit: Path, tmp_path: Path):
    result = verify(tmp_path, unit)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.integration
@needs_systemd_analyze
def test_verify_set_up_does_catch_a_bad_unit(tmp_path: Path):
    # The scratch root must not hide problems: a misspelt directive is reported.
    broken = tmp_path / "onecard-edge.service"
    broken.write_text(EDGE.read_text().replace("ProtectSystem=", "ProtectSystm="))
    result = verify(tmp_path, broken)
    assert "ProtectSystm" in result.stderr  # "Unknown key 'ProtectSystm' in section [Service]"


def systemd_version() -> int:
    out = subprocess.run(
        ["systemd-analyze", "--version"], capture_output=True, text=True, check=False
    ).stdout
    match = re.match(r"systemd (\d+)", out)
    return int(match[1]) if match else 0


@pytest.mark.integration
@needs_systemd_analyze
def test_edge_unit_exposure_is_at_most_3_and_matches_its_comment():
    score = exposure(EDGE)
    assert score <= MAX_EXPOSURE
    if systemd_version() == 252:  # the version the comment was measured with
        assert f"overall exposure {score:.1f} OK" in EDGE.read_text()


@pytest.mark.integration
@needs_systemd_analyze
def test_central_unit_exposure_is_at_most_3():
    score = exposure(CENTRAL)
    assert score <= MAX_EXPOSURE
    if systemd_version() == 252:
        assert f"(systemd 252): {score:.1f} OK" in CENTRAL.read_text()


def test_edge_unit_is_a_watched_notify_service_with_start_limits():
    s = dict(settings(EDGE))
    assert s["Type"] == "notify" and s["NotifyAccess"] == "main"
    assert s["WatchdogSec"] == "30" and s["Restart"] == "on-failure"
    assert int(s["StartLimitBurst"]) > 1 and int(s["StartLimitIntervalSec"]) > 0
    assert (
        s["ExecStart"]
        == "/opt/onecard/current/venv/bin/onecard-edge run --config /etc/onecard/edge.toml"
    )
    assert s["ExecStart"].startswith(f"/{setup.VENV}/bin/")
    assert s["User"] == s["Group"] == setup.USER
    assert "DynamicUser" not in s
    assert s["StateDirectory"] == "onecard" and s["ConfigurationDirectory"] == "onecard"
    assert s["LogsDirectory"] == "onecard" and s["RuntimeDirectory"] == "onecard"


def test_edge_unit_hardening():
    s = dict(settings(EDGE))
    for key in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
        "RestrictNamespaces",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "LockPersonality",
        "MemoryDenyWriteExecute",
    ):
        assert s[key] == "yes", key
    assert s["ProtectSystem"] == "strict"
    assert s["CapabilityBoundingSet"] == "" and s["AmbientCapabilities"] == ""
    assert s["RestrictAddressFamilies"] == "AF_UNIX AF_INET AF_INET6"
    assert values(EDGE, "SystemCallFilter") == ["@system-service", "~@privileged @resources"]
    # Serial devices through the device cgroup, not PrivateDevices= (which would hide them).
    assert "PrivateDevices" not in s and s["DevicePolicy"] == "closed"
    assert values(EDGE, "DeviceAllow") == ["char-ttyUSB rw", "char-ttyACM rw"]


def test_udev_rule_gives_usb_serial_adapters_to_the_service_group():
    rules = [ln for ln in RULE.read_text().splitlines() if ln and not ln.startswith("#")]
    assert len(rules) == 1
    assert 'SUBSYSTEM=="tty"' in rules[0]
    assert 'KERNEL=="ttyUSB[0-9]*|ttyACM[0-9]*"' in rules[0]
    assert f'GROUP="{setup.GROUP}"' in rules[0] and 'MODE="0660"' in rules[0]


def test_credential_path_reaches_the_config_through_the_env_override(tmp_path: Path):
    # The unit hands the password over as a credential; edge.toml (from the bundle) cannot
    # say %d, so Environment= overrides mqtt.password_file. Check the loader maps
    # ONECARD_EDGE_MQTT_PASSWORD_FILE onto [mqtt] password_file, underscore and all.
    assert values(EDGE, "LoadCredential") == ["mqtt.password:/etc/onecard/mqtt.password"]
    (env_line,) = values(EDGE, "Environment")
    name, _, value = env_line.partition("=")
    assert name == "ONECARD_EDGE_MQTT_PASSWORD_FILE" and value == "%d/mqtt.password"
    creds = tmp_path / "credentials/onecard-edge.service"
    bundle = add_site(
        init_broker(tmp_path / "broker", hostnames=["hq.example.com"]).root,
        "SZ-FUTIAN",
        broker_url="mqtts://hq.example.com:8883",
        out=tmp_path,
    )
    toml = tmp_path / "edge.toml"
    toml.write_bytes(setup.read_bundle(bundle).files["edge.toml"])
    config = load_config(toml, env={name: value.replace("%d", str(creds))})
    assert config.mqtt.password_file == creds / "mqtt.password"
    assert config.mqtt.ca_file == Path("/etc/onecard/ca.crt")  # untouched
    assert load_config(toml, env={}).mqtt.password_file == Path("/etc/onecard/mqtt.password")


def test_central_unit_takes_broker_settings_from_its_env_file_and_credentials():
    s = dict(settings(CENTRAL))
    assert s["EnvironmentFile"] == "/etc/onecard/central.env"
    assert s["ExecStart"].startswith("/opt/onecard/venv/bin/onecard-central serve --db ")
    assert s["StateDirectory"] == "onecard-central"
    assert s["ExecStart"].split("--db ")[1] == "/var/lib/onecard-central/central.db"
    env = dict(v.split("=", 1) for v in values(CENTRAL, "Environment"))
    assert env == {
        "ONECARD_BROKER_PASSWORD_FILE": "%d/central.password",
        "ONECARD_BROKER_CA": "%d/broker-ca.crt",
    }
