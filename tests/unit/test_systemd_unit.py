"""The shipped systemd unit: verified by systemd-analyze, with the directives it promises."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "gitops-agent.service"


def _directives() -> dict[str, str]:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(UNIT.read_text())
    return dict(cp["Service"])


def test_unit_passes_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is needed (Debian package systemd)")
    exe = Path(sys.executable).parent / "gitops-agent"
    assert exe.exists()
    unit = tmp_path / "gitops-agent.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/gitops-agent", str(exe)))
    p = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    problems = [ln for ln in (p.stdout + p.stderr).splitlines()
                if "gitops-agent.service" in ln]
    assert p.returncode == 0 and not problems, p.stdout + p.stderr


def test_unit_is_a_notify_service_with_watchdog_reload_and_restart():
    d = _directives()
    assert d["Type"] == "notify"
    assert d["NotifyAccess"] == "main"
    assert int(d["WatchdogSec"]) > 0
    assert "kill -HUP $MAINPID" in d["ExecReload"]
    assert d["Restart"] == "on-failure"
    assert d["StateDirectory"] == "gitops-agent"
    assert d["ConfigurationDirectory"] == "gitops-agent"


def test_unit_hardening_keeps_the_docker_socket_reachable():
    d = _directives()
    assert d["NoNewPrivileges"] == "yes"
    assert d["ProtectSystem"] == "strict"
    assert d["PrivateTmp"] == "yes"
    assert d["ProtectHome"] in ("yes", "read-only")
    families = d["RestrictAddressFamilies"].split()
    assert "AF_UNIX" in families  # /var/run/docker.sock
    assert set(families) <= {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert "InaccessiblePaths" not in d or "/run" not in d["InaccessiblePaths"]


def _unit_section() -> dict[str, str]:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(UNIT.read_text())
    return dict(cp["Unit"])


def test_unit_starts_without_socket_activated_docker_but_orders_after_it():
    u = _unit_section()
    # no hard dependency: hosts without docker.socket/docker.service must still start it
    assert "Requires" not in u and "BindsTo" not in u and "Requisite" not in u
    assert "docker.service" in u["Wants"].split()
    assert {"docker.service", "docker.socket"} <= set(u["After"].split())
