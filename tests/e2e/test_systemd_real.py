"""End-to-end: the shipped unit (agent/data/gitops-agent.service) under a real systemd.

A container runs systemd as PID 1 (Debian bookworm, ``local/debian:bookworm`` from
scripts/debian-base-image). The agent is installed in it as an admin would: a venv, ``pip
install --no-index`` from wheels built on this host (the container reaches Debian's mirror,
not PyPI), the compose v2 binary as a CLI plugin, the unit in /etc/systemd/system, the config
in /etc/gitops-agent. The host's Docker socket is mounted -- and there is no docker.socket
unit, as on hosts where Docker is not socket-activated. The compose project's containers are
created by the host engine, from the rig's registry on the host's loopback.

The derived image ``local/gitops-agent-systemd:<hash of its inputs>`` is built once per
change of the agent's source, the unit, the compose binary or the Dockerfile below.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import rig

REPO_ROOT = Path(__file__).resolve().parents[2]
UNIT = REPO_ROOT / "agent" / "data" / "gitops-agent.service"
IMAGE_REPO = "local/gitops-agent-systemd"
MOUNT = "/srv/e2e"  # the harness's root (git origin, compose project) inside the container

DOCKERFILE = """\
FROM {base}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq \\
 && apt-get install -y -qq --no-install-recommends \\
      systemd systemd-sysv procps python3 python3-venv git ca-certificates >/dev/null \\
 && rm -rf /var/lib/apt/lists/*
# A container's systemd: journald and the agent, nothing that wants a console or devices.
RUN systemctl mask getty.target console-getty.service systemd-logind.service \\
      systemd-udevd.service systemd-udev-trigger.service systemd-firstboot.service \\
      systemd-remount-fs.service sys-kernel-debug.mount sys-kernel-tracing.mount \\
      dev-hugepages.mount systemd-modules-load.service
# Install as README says: a venv from wheels, the entry point on PATH, compose v2, the unit.
COPY wheels /tmp/wheels
RUN python3 -m venv /opt/gitops-agent \\
 && /opt/gitops-agent/bin/pip install --quiet --no-index --find-links /tmp/wheels gitops-agent \\
 && ln -s /opt/gitops-agent/bin/gitops-agent /usr/local/bin/gitops-agent \\
 && rm -rf /tmp/wheels
COPY docker-compose /usr/local/lib/docker/cli-plugins/docker-compose
COPY gitops-agent.service /etc/systemd/system/gitops-agent.service
STOPSIGNAL SIGRTMIN+3
CMD ["/lib/systemd/systemd"]
"""


def _compose_binary() -> Path:
    from agent.edges.compose import find_compose_command

    cmd = find_compose_command()
    if len(cmd) != 1 or Path(cmd[0]).name != "docker-compose":
        pytest.fail(f"the compose v2 binary is needed to install in the image, found {cmd} "
                    "(scripts/rig-up installs it)", pytrace=False)
    return Path(cmd[0])


def _agent_sources() -> list[Path]:
    # README.md (the wheel's long description) is left out: a docs edit must not rebuild
    return [REPO_ROOT / "pyproject.toml", *sorted((REPO_ROOT / "agent").rglob("*.py"))]


def _inputs_hash(base: str, compose: Path) -> str:
    h = hashlib.sha256()
    h.update(DOCKERFILE.format(base=base).encode())
    h.update(UNIT.read_bytes())
    for f in _agent_sources():
        h.update(str(f.relative_to(REPO_ROOT)).encode() + b"\0" + f.read_bytes())
    with compose.open("rb") as fh:
        h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def systemd_agent_image(debian_base_image: str, docker_client: docker.DockerClient,
                        tmp_path_factory: pytest.TempPathFactory) -> str:
    compose = _compose_binary()
    tag = f"{IMAGE_REPO}:{_inputs_hash(debian_base_image, compose)}"
    try:
        docker_client.images.get(tag)
        return tag  # cached
    except docker.errors.ImageNotFound:
        pass
    ctx = tmp_path_factory.mktemp("systemd-image")
    src = ctx / "src"
    for f in _agent_sources():
        dest = src / f.relative_to(REPO_ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest)
    (src / "README.md").write_text("gitops-agent, built for tests/e2e/test_systemd_real.py\n")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "-w", str(ctx / "wheels"),
                        "--", str(src)], capture_output=True, text=True, timeout=900, check=False)
    if p.returncode != 0:
        pytest.fail(f"pip wheel failed (exit {p.returncode}):\n{p.stderr[-3000:]}", pytrace=False)
    shutil.rmtree(src)
    shutil.copy2(compose, ctx / "docker-compose")
    shutil.copy2(UNIT, ctx / "gitops-agent.service")
    (ctx / "Dockerfile").write_text(DOCKERFILE.format(base=debian_base_image))
    try:
        docker_client.images.build(path=str(ctx), tag=tag, rm=True, forcerm=True)
    except docker.errors.BuildError as e:
        log = "".join(str(x.get("stream", x.get("error", ""))) for x in e.build_log)
        pytest.fail(f"building {tag} failed: {e}\n{log[-3000:]}", pytrace=False)
    finally:
        shutil.rmtree(ctx, ignore_errors=True)
    # builds for older sources are dead weight (about 500 MB each): keep only this one
    for old in docker_client.images.list(name=IMAGE_REPO):
        if tag not in old.tags:
            for t in old.tags:
                docker_client.images.remove(t, noprune=False)
    return tag


def sh(c: Any, *argv: str) -> tuple[int, str]:
    code, out = c.exec_run(list(argv))
    return int(code), out.decode(errors="replace")


def show(c: Any, *props: str) -> dict[str, str]:
    code, out = sh(c, "systemctl", "show", "gitops-agent", *(f"--property={p}" for p in props))
    assert code == 0, out
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def journal(c: Any) -> str:
    return sh(c, "journalctl", "-u", "gitops-agent", "--no-pager", "-o", "cat")[1]


def wait_status(c: Any, needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = show(c, "StatusText")["StatusText"]
        if needle in status:
            return status
        time.sleep(0.5)
    raise AssertionError(f"StatusText never had {needle!r} (last: {status!r}); journal:\n"
                         + journal(c)[-4000:])


def put_file(c: Any, path: str, text: str, mode: int = 0o640) -> None:
    data = text.encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(Path(path).name)
        info.size, info.mode = len(data), mode
        tar.addfile(info, io.BytesIO(data))
    # as the unit creates it (ConfigurationDirectoryMode=0750), so systemd has nothing to fix
    sh(c, "mkdir", "-p", "-m", "0750", "--", str(Path(path).parent))
    assert c.put_archive(str(Path(path).parent), buf.getvalue())


@pytest.fixture
def systemd_host(systemd_agent_image: str, docker_client: docker.DockerClient,
                 harness: Any) -> Iterator[Any]:
    c = docker_client.containers.run(
        systemd_agent_image, detach=True, name=f"gitops-systemd-{uuid.uuid4().hex[:8]}",
        cap_add=["SYS_ADMIN"], tmpfs={"/run": "", "/run/lock": ""},
        volumes={
            "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "ro"},
            "/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
            str(harness.project.root): {"bind": MOUNT, "mode": "rw"},
        },
        # the registry listens on the host's loopback; the agent reaches it (and git) there
        network_mode="host",
    )
    try:
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            c.reload()
            if c.status != "running":
                pytest.fail("the systemd container exited at boot; its log:\n"
                            + c.logs().decode(errors="replace")[-3000:], pytrace=False)
            state = sh(c, "systemctl", "is-system-running")[1].strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"systemd did not finish booting in 60 s (state {state!r}): "
                        + sh(c, "systemctl", "--failed", "--no-pager")[1], pytrace=False)
        yield c
    finally:
        c.remove(force=True)


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
