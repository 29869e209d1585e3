"""End-to-end: the shipped unit (agent/data/gitops-agent.service) under a real systemd.

A container runs systemd as PID 1 (Debian bookworm, ``local/debian:bookworm`` from
scripts/debian-base-image). The agent is installed in it as an admin would: a venv, ``pip
install --no-index`` from wheels built on this host (the container reaches Debian's mirror,
not PyPI), the compose v2 binary as a CLI plugin, the unit in /etc/systemd/system, the config
in /etc/gitops-agent. The host's Docker socket is mounted -- and there is no docker.socket
unit, as on hosts where Docker is not socket-activated. The compose project's containers are
created by the host engine, from the rig's registry on the host's loopback.

The derived image ``local/gitops-agent-systemd:<hash of its inputs>`` is built once per
change of the agent's source, the unit, the compose binary or the Dockerfile below; the
container and the image cache are tests/e2e/systemd_rig.py's.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import rig
from systemd_rig import (
    REPO_ROOT,
    SYSTEMD_BASE,
    SYSTEMD_CMD,
    agent_sources,
    booted,
    build_image,
    build_wheels,
    compose_binary,
    journal,
    put_file,
    sh,
    show,
    wait_status,
)

UNIT = REPO_ROOT / "agent" / "data" / "gitops-agent.service"
IMAGE_REPO = "local/gitops-agent-systemd"
MOUNT = "/srv/e2e"  # the harness's root (git origin, compose project) inside the container

DOCKERFILE = SYSTEMD_BASE + """\
# Install as README says: a venv from wheels, the entry point on PATH, compose v2, the unit.
COPY wheels /tmp/wheels
RUN python3 -m venv /opt/gitops-agent \\
 && /opt/gitops-agent/bin/pip install --quiet --no-index --find-links /tmp/wheels gitops-agent \\
 && ln -s /opt/gitops-agent/bin/gitops-agent /usr/local/bin/gitops-agent \\
 && rm -rf /tmp/wheels
COPY docker-compose /usr/local/lib/docker/cli-plugins/docker-compose
COPY gitops-agent.service /etc/systemd/system/gitops-agent.service
""" + SYSTEMD_CMD


@pytest.fixture(scope="session")
def systemd_agent_image(debian_base_image: str, docker_client: docker.DockerClient,
                        tmp_path_factory: pytest.TempPathFactory) -> str:
    compose = compose_binary()

    def context(ctx: Path) -> None:
        shutil.copytree(build_wheels(tmp_path_factory), ctx / "wheels")
        shutil.copy2(compose, ctx / "docker-compose")
        shutil.copy2(UNIT, ctx / "gitops-agent.service")

    return build_image(docker_client, IMAGE_REPO, DOCKERFILE.format(base=debian_base_image),
                       [*agent_sources(), UNIT, compose], context, tmp_path_factory)


@pytest.fixture
def systemd_host(systemd_agent_image: str, docker_client: docker.DockerClient,
                 harness: Any) -> Iterator[Any]:
    with booted(docker_client, systemd_agent_image, "gitops-systemd",
                {str(harness.project.root): MOUNT}) as c:
        yield c


def test_unit_under_real_systemd_starts_deploys_reloads_logs_json_and_stops(harness, systemd_host):
    c = systemd_host
    # the host has no docker.socket unit, as where Docker is not socket-activated
    assert "docker.socket" not in sh(c, "systemctl", "list-unit-files", "--no-pager")[1]
    rev1 = harness.release(web="web-v1", api="api-v1")
    put_file(c, "/etc/gitops-agent/agent.toml", rig.agent_toml(
        repo=f"{MOUNT}/git/origin.git", branch=harness.project.repo.branch,
        project_dir=Path(MOUNT) / "srv", project_name=harness.project.name,
        state_dir=Path("/var/lib/gitops-agent"), interval=3600, jitter=0, health_timeout=30))

    # Type=notify: `systemctl start` returns once the agent has sent READY=1
    code, out = sh(c, "systemctl", "start", "gitops-agent")
    assert code == 0, out + "\n" + sh(c, "systemctl", "status", "gitops-agent", "--no-pager")[1]
    assert show(c, "ActiveState", "SubState") == {"ActiveState": "active", "SubState": "running"}

    # the first release deploys; StatusText tells what the last pass did
    status = wait_status(c, f"applied at {rev1[:12]}", timeout=120)
    assert harness.running_digest("web") == harness.images["web-v1"]
    assert harness.serve("web") == "web v1"
    props = show(c, "WatchdogUSec", "WatchdogTimestampMonotonic", "StatusText")
    assert props["WatchdogUSec"] == "2min"
    assert int(props["WatchdogTimestampMonotonic"]) > 0, props  # the agent pinged it
    assert props["StatusText"] == status

    # `systemctl reload` = SIGHUP = a pass now, not in an hour
    rev2 = harness.release(web="web-v2", api="api-v1")
    t0 = time.monotonic()
    code, out = sh(c, "systemctl", "reload", "gitops-agent")
    assert code == 0, out
    wait_status(c, f"applied at {rev2[:12]}", timeout=60)
    assert time.monotonic() - t0 < 60
    assert harness.serve("web") == "web v2"

    # `systemctl stop`: SIGTERM, a clean exit 0
    code, out = sh(c, "systemctl", "stop", "gitops-agent")
    assert code == 0, out
    props = show(c, "ActiveState", "Result", "ExecMainStatus")
    assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, props

    # the journal holds the agent's JSON events as they are; systemd's own lines about the
    # unit (Starting/Started/Reloading/Stopped, PID 1) are the only other ones
    code, out = sh(c, "journalctl", "-u", "gitops-agent", "--no-pager", "-o", "json")
    assert code == 0, out
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    agent_lines = [e["MESSAGE"] for e in entries if e.get("SYSLOG_IDENTIFIER") == "gitops-agent"]
    others = [e for e in entries if e.get("SYSLOG_IDENTIFIER") != "gitops-agent"]
    assert all(e.get("_PID") == "1" for e in others), [
        (e.get("SYSLOG_IDENTIFIER"), e.get("_PID"), e.get("_COMM"), e.get("MESSAGE"))
        for e in others]
    events = [json.loads(m) for m in agent_lines]  # every line the agent wrote is JSON
    names = [e["event"] for e in events]
    assert all(re.fullmatch(r"agent(\.[a-z_]+)+", n) for n in names), names
    for expected in ("agent.daemon.started", "agent.pass.completed", "agent.daemon.reload",
                     "agent.daemon.stopped"):
        assert expected in names, names
    completed = [e for e in events if e["event"] == "agent.pass.completed"]
    assert [e["revision"] for e in completed if e["outcome"] == "applied"] == [rev1, rev2]
    # and `journalctl -u gitops-agent -o cat` shows them line by line, as they are
    cat = journal(c).splitlines()
    assert agent_lines and all(m in cat for m in agent_lines)
    # each line carries its syslog priority (the `<N>` prefix journald strips): PRIORITY is
    # the event's level, so `journalctl -p warning` shows the errors of a broken commit
    # (started again on it), and no info line
    bad = harness.commit("version: 1\nservices: [oops\n", "broken")
    assert sh(c, "systemctl", "start", "gitops-agent")[0] == 0
    wait_status(c, f"invalid at {bad[:12]}", timeout=60)
    assert sh(c, "systemctl", "stop", "gitops-agent")[0] == 0
    out = sh(c, "journalctl", "-u", "gitops-agent", "--no-pager", "-o", "json")[1]
    mine = [e for e in map(json.loads, filter(str.strip, out.splitlines()))
            if e.get("SYSLOG_IDENTIFIER") == "gitops-agent"]
    prio = {"debug": "7", "info": "6", "warning": "4", "error": "3", "critical": "2"}
    levels = [(json.loads(e["MESSAGE"])["level"], e["PRIORITY"]) for e in mine]
    assert all(p == prio[level] for level, p in levels), levels
    assert ("error", "3") in levels and ("info", "6") in levels
    warned = sh(c, "journalctl", "-p", "warning", "-u", "gitops-agent", "--no-pager",
                "-o", "cat")[1].splitlines()
    assert "agent.desired.invalid" in "\n".join(warned), warned
    assert [m for m in (e["MESSAGE"] for e in mine) if m in warned] == [
        e["MESSAGE"] for e in mine if e["PRIORITY"] <= "4"]
