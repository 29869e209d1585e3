"""A real systemd in a container, for the e2e tests of the unit and of scripts/install.

systemd runs as PID 1 in a container of a Debian bookworm image derived from
``local/debian:bookworm`` (scripts/debian-base-image). The host's Docker socket is mounted
(there is no docker.socket unit, as on hosts where Docker is not socket-activated), the
network is the host's (the rig's registry and git origin are on its loopback) and the
compose project's containers are created by the host engine.

Derived images are tagged ``<repo>:<hash of their inputs>``: the tag existing is the cache,
and older builds of the same repo are removed (about 500 MB each). The agent's wheels are
built on this host (the container reaches Debian's mirror, not PyPI) once per session.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# The packages and masks every systemd image here starts with (one layer cache for all).
SYSTEMD_BASE = """\
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
"""
SYSTEMD_CMD = """\
STOPSIGNAL SIGRTMIN+3
CMD ["/lib/systemd/systemd"]
"""


def compose_binary() -> Path:
    """The rig's compose v2 binary (a CLI plugin that also runs standalone)."""
    from agent.edges.compose import find_compose_command

    cmd = find_compose_command()
    if len(cmd) != 1 or Path(cmd[0]).name != "docker-compose":
        pytest.fail(f"the compose v2 binary is needed to install in the image, found {cmd} "
                    "(scripts/rig-up installs it)", pytrace=False)
    return Path(cmd[0])


def agent_sources() -> list[Path]:
    """What the wheel is built from: the package with its data (the unit, the example
    config). README.md (the wheel's long description) is left out: a docs edit must not
    rebuild."""
    package = [p for p in (REPO_ROOT / "agent").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts]
    return [REPO_ROOT / "pyproject.toml", REPO_ROOT / "LICENSE", *sorted(package)]


def hash_files(h: Any, files: list[Path]) -> None:
    for f in files:
        name = str(f.relative_to(REPO_ROOT)) if f.is_relative_to(REPO_ROOT) else f.name
        with f.open("rb") as fh:
            h.update(name.encode() + b"\0" + hashlib.file_digest(fh, "sha256").digest())


_wheels: dict[str, Path] = {}


def build_wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The agent's wheel and its dependencies', built here from a copy of its sources (not
    in the checkout: an in-tree build would leave build/ and *.egg-info in it). Once per
    session, whichever test module asks first."""
    if "dir" in _wheels:
        return _wheels["dir"]
    work = tmp_path_factory.mktemp("wheels")
    src, out = work / "src", work / "wheels"
    for f in agent_sources():
        dest = src / f.relative_to(REPO_ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest)
    (src / "README.md").write_text("gitops-agent, built for the tests under systemd\n")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "-w", str(out),
                        "--", str(src)], capture_output=True, text=True, timeout=900, check=False)
    if p.returncode != 0:
        pytest.fail(f"pip wheel failed (exit {p.returncode}):\n{p.stderr[-3000:]}", pytrace=False)
    shutil.rmtree(src)
    _wheels["dir"] = out
    return out


def build_image(client: docker.DockerClient, repo: str, dockerfile: str, inputs: list[Path],
                make_context: Callable[[Path], None],
                tmp_path_factory: pytest.TempPathFactory) -> str:
    """``repo:<hash>`` built from ``dockerfile``, unless that tag exists. The hash covers the
    Dockerfile and the files ``inputs`` (what the build context is made from: sources, not
    the wheels built from them, which differ from build to build); ``make_context(dir)``
    fills the build context only when the image is built."""
    h = hashlib.sha256(dockerfile.encode())
    hash_files(h, inputs)
    tag = f"{repo}:{h.hexdigest()[:16]}"
    try:
        client.images.get(tag)
        return tag  # cached
    except docker.errors.ImageNotFound:
        pass
    ctx = tmp_path_factory.mktemp("image-context")
    try:
        make_context(ctx)
        (ctx / "Dockerfile").write_text(dockerfile)
        client.images.build(path=str(ctx), tag=tag, rm=True, forcerm=True)
    except docker.errors.BuildError as e:
        log = "".join(str(x.get("stream", x.get("error", ""))) for x in e.build_log)
        pytest.fail(f"building {tag} failed: {e}\n{log[-3000:]}", pytrace=False)
    finally:
        shutil.rmtree(ctx, ignore_errors=True)
    # builds for older inputs are dead weight (about 500 MB each): keep only this one
    for old in client.images.list(name=repo):
        if tag not in old.tags:
            for t in old.tags:
                client.images.remove(t, noprune=False)
    return tag


@contextmanager
def booted(client: docker.DockerClient, image: str, name: str, mounts: Mapping[str, str],
           read_only: Mapping[str, str] | None = None) -> Iterator[Any]:
    """A container of ``image`` with systemd as PID 1, booted (``is-system-running`` says
    running or degraded), removed on exit. ``mounts`` and ``read_only``: host path ->
    container path; the host's Docker socket and the cgroup tree are always mounted."""
    c = client.containers.run(
        image, detach=True, name=f"{name}-{uuid.uuid4().hex[:8]}",
        cap_add=["SYS_ADMIN"], tmpfs={"/run": "", "/run/lock": ""},
        volumes={
            "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "ro"},
            "/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
            **{host: {"bind": inside, "mode": "rw"} for host, inside in mounts.items()},
            **{host: {"bind": inside, "mode": "ro"} for host, inside in (read_only or {}).items()},
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
