"""End-to-end: ``scripts/install`` and ``scripts/uninstall`` on a Debian 12 host with a
real systemd (tests/e2e/systemd_rig.py), as an admin runs them.

The host image has what docs/install.md asks for (Python 3.11 with venv, git, the Docker CLI
with the compose v2 plugin, systemd) and no agent. The agent comes from wheels built on this
host (the container reaches no PyPI: ``install --wheels DIR``). The host's Docker socket is
mounted; the compose project (from git, ``compose.from_repo``) runs on the host engine and is
deployed by the agent under the hardened unit the script installed. One container serves the
whole module, in the order an admin goes: install, install again, configure and --enable,
uninstall, --purge.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import rig
from harness import Harness
from systemd_rig import (
    REPO_ROOT,
    SYSTEMD_BASE,
    SYSTEMD_CMD,
    booted,
    build_image,
    build_wheels,
    compose_binary,
    put_file,
    sh,
    show,
    wait_status,
)

from agent.edges.compose import find_compose_command

IMAGE_REPO = "local/gitops-install-host"
MOUNT = "/srv/e2e"  # the harness's root (git origin, compose project) inside the container
WHEELS = "/srv/wheels"
SCRIPTS = "/srv/checkout/scripts"
UNIT = "/etc/systemd/system/gitops-agent.service"
DROPIN = "/etc/systemd/system/gitops-agent.service.d/paths.conf"
CONFIG = "/etc/gitops-agent/agent.toml"
LINK = "/usr/local/bin/gitops-agent"
VENV = "/opt/gitops-agent"
INSTALLED = [UNIT, DROPIN, LINK, VENV]

# A Debian 12 host as docs/install.md's prerequisites describe it, without the agent.
DOCKERFILE = SYSTEMD_BASE + """\
COPY docker /usr/local/bin/docker
COPY docker-compose /usr/local/lib/docker/cli-plugins/docker-compose
""" + SYSTEMD_CMD


def docker_cli() -> Path:
    path = shutil.which("docker")
    if path is None:
        pytest.fail("the docker CLI is needed to install in the image (scripts/rig-up installs "
                    "it)", pytrace=False)
    return Path(path).resolve()


@pytest.fixture(scope="module")
def install_image(debian_base_image: str, docker_client: docker.DockerClient,
                  tmp_path_factory: pytest.TempPathFactory) -> str:
    cli, compose = docker_cli(), compose_binary()

    def context(ctx: Path) -> None:
        shutil.copy2(cli, ctx / "docker")
        shutil.copy2(compose, ctx / "docker-compose")

    return build_image(docker_client, IMAGE_REPO, DOCKERFILE.format(base=debian_base_image),
                       [cli, compose], context, tmp_path_factory)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, registry: Any, images: dict[str, str],
         docker_client: docker.DockerClient) -> Iterator[Harness]:
    """A git repo with compose.yml (``from_repo``) and a project dir without one."""
    h = Harness.create(tmp_path_factory.mktemp("install-site"), registry.host, images,
                       docker_client, find_compose_command(), name=f"inst{uuid.uuid4().hex[:8]}")
    compose = (h.project.project_dir / "compose.yml")
    h.project.repo.commit_file("compose.yml", compose.read_text(), "compose")
    compose.unlink()
    yield h
    h.teardown()


@pytest.fixture(scope="module")
def host(install_image: str, docker_client: docker.DockerClient, site: Harness,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    wheels = build_wheels(tmp_path_factory)
    with booted(docker_client, install_image, "gitops-install",
                {str(site.project.root): MOUNT},
                read_only={str(wheels): WHEELS, str(REPO_ROOT / "scripts"): SCRIPTS}) as c:
        yield c


def run(c: Any, script: str, *args: str) -> tuple[int, str]:
    return sh(c, f"{SCRIPTS}/{script}", *args)


def lines(out: str, step: str) -> list[str]:
    """The script's lines for one step (``unit     /etc/... installed``), step word left out."""
    return [line[len(step):].strip() for line in out.splitlines()
            if line.split(" ", 1)[0] == step]


def exists(c: Any, path: str) -> bool:
    return sh(c, "test", "-e", path)[0] == 0 or sh(c, "test", "-L", path)[0] == 0


def snapshot(c: Any) -> str:
    """Every file install owns: path, type, mode, owner, size, mtime, link target."""
    code, out = sh(c, "find", VENV, UNIT, DROPIN, LINK, "/etc/gitops-agent",
                   "-printf", r"%p %y %m %u:%g %s %T@ %l\n")
    assert code == 0, out
    return "\n".join(sorted(out.splitlines()))


@pytest.fixture(scope="module")
def installed(host: Any) -> str:
    code, out = run(host, "install", "--wheels", WHEELS)
    assert code == 0, out
    return out


@pytest.fixture(scope="module")
def deployed(host: Any, site: Harness, installed: str) -> tuple[str, str]:
    """The admin's config (compose from git, project dir in the container), then
    ``install --enable``; the revision it deploys and what install printed."""
    rev = site.release(web="web-v1", api="api-v1")
    config = rig.agent_toml(
        repo=f"{MOUNT}/git/origin.git", branch=site.project.repo.branch,
        project_dir=Path(MOUNT) / "srv", project_name=site.project.name,
        state_dir=Path("/var/lib/gitops-agent"), interval=3600, jitter=0, health_timeout=60)
    line = f'project_name = "{site.project.name}"'
    put_file(host, CONFIG, config.replace(line, f'{line}\nfrom_repo = ["compose.yml"]', 1))
    code, out = run(host, "install", "--wheels", WHEELS, "--enable")
    assert code == 0, out
    return rev, out


def test_install_names_every_missing_prerequisite_and_changes_nothing(
        debian_base_image: str, docker_client: docker.DockerClient) -> None:
    # a bare Debian: no Python, git, Docker nor systemd
    out = docker_client.containers.run(
        debian_base_image, ["bash", "-c", f"{SCRIPTS}/install --wheels {WHEELS} 2>&1; echo rc=$?; "
                            "ls -A /opt /etc/systemd/system /usr/local/bin"],
        remove=True, volumes={str(REPO_ROOT / "scripts"): {"bind": SCRIPTS, "mode": "ro"}},
    ).decode()
    missing = lines(out, "missing")
    assert [m.split(":", 1)[0] for m in missing] == [
        "Python >= 3.11", "git", "Docker", "systemd", "wheels"], out
    assert "rc=3" in out.splitlines()
    assert "missing: Python >= 3.11, git, Docker, systemd, wheels; nothing changed" in out
    assert lines(out, "ok") == ["root"]
    assert "gitops-agent" not in out.split("rc=3", 1)[1]  # no venv, unit nor link


def test_install_puts_the_venv_link_unit_and_config_where_the_unit_looks(
        host: Any, installed: str) -> None:
    out = installed
    for step in ("venv", "package", "link", "unit", "config", "drop-in", "systemd", "service"):
        assert len(lines(out, step)) == 1, (step, out)
    assert lines(out, "unit") == [f"{UNIT} installed"]
    assert lines(out, "systemd") == ["daemon-reload"]
    # the unit systemd loaded is the package's, and every path it names is there
    assert sh(host, "cat", UNIT)[1] == (REPO_ROOT / "agent/data/gitops-agent.service").read_text()
    props = show(host, "LoadState", "FragmentPath", "DropInPaths", "NeedDaemonReload",
                 "ExecStart", "ReadWritePaths", "ActiveState", "UnitFileState")
    assert props["LoadState"] == "loaded" and props["FragmentPath"] == UNIT, props
    assert props["DropInPaths"] == DROPIN and props["NeedDaemonReload"] == "no", props
    assert props["ReadWritePaths"] == "/srv/shop", props  # the example config's project_dir
    assert f"path={LINK} " in props["ExecStart"], props
    assert sh(host, "readlink", LINK)[1].strip() == f"{VENV}/bin/gitops-agent"
    assert sh(host, LINK, "--version")[1].strip() == "gitops-agent 0.1.0"
    code, verify = sh(host, "systemd-analyze", "verify", UNIT)
    assert code == 0 and LINK not in verify, verify
    # the example config, the admin's to edit: root's, not world-readable
    assert sh(host, "stat", "-c", "%a %U:%G", CONFIG)[1].split() == ["640", "root:root"]
    assert sh(host, "stat", "-c", "%a", "/etc/gitops-agent")[1].strip() == "750"
    assert sh(host, "cat", CONFIG)[1] == (REPO_ROOT / "agent/data/agent.toml.example").read_text()
    # nothing enabled or started without --enable
    assert props["ActiveState"] == "inactive" and props["UnitFileState"] == "disabled", props


def test_second_install_changes_nothing_and_succeeds(host: Any, installed: str) -> None:
    before = snapshot(host)
    code, out = run(host, "install", "--wheels", WHEELS)
    assert code == 0, out
    assert snapshot(host) == before
    assert lines(out, "venv") == [f"{VENV} exists (Python 3.11), kept"]
    assert lines(out, "package")[0].endswith("already installed, unchanged"), out
    assert lines(out, "link")[0].endswith("exists, kept")
    assert lines(out, "unit") == [f"{UNIT} unchanged"]
    assert lines(out, "config")[0].startswith(f"{CONFIG} exists, kept")
    assert lines(out, "drop-in")[0].startswith(f"{DROPIN} unchanged")
    assert lines(out, "systemd") == ["unit files unchanged, no daemon-reload"]
    assert show(host, "ActiveState")["ActiveState"] == "inactive"


def test_enable_starts_the_hardened_unit_and_it_deploys_compose_from_git(
        host: Any, site: Harness, deployed: tuple[str, str]) -> None:
    rev, out = deployed
    # the admin's config kept, the drop-in follows its project_dir, the unit runs
    assert lines(out, "config")[0].startswith(f"{CONFIG} exists, kept (mode 0640")
    assert lines(out, "drop-in") == [f'{DROPIN} updated: ReadWritePaths="{MOUNT}/srv"']
    assert lines(out, "check") == [f"gitops-agent check-config: {CONFIG} is valid"]
    assert lines(out, "service") == ["enabled and started"]
    assert sh(host, "systemctl", "is-active", "gitops-agent")[1].strip() == "active"
    assert sh(host, "systemctl", "is-enabled", "gitops-agent")[1].strip() == "enabled"
    props = show(host, "ProtectSystem", "ReadWritePaths", "NoNewPrivileges")
    assert props == {"ProtectSystem": "strict", "ReadWritePaths": f"{MOUNT}/srv",
                     "NoNewPrivileges": "yes"}, props
    # under ProtectSystem=strict the agent writes compose.yml from git into project_dir
    # (the drop-in opened it) and runs the desired digests
    wait_status(host, f"applied at {rev[:12]}", timeout=120)
    assert site.running_digest("web") == site.images["web-v1"]
    assert site.running_digest("api") == site.images["api-v1"]
    assert site.serve("web") == "web v1"
    assert (site.project.project_dir / "compose.yml").read_text() == \
        (site.project.repo.work / "compose.yml").read_text()
    # --enable again: nothing to do, the service left running as it is
    pid = show(host, "MainPID")["MainPID"]
    code, again = run(host, "install", "--wheels", WHEELS, "--enable")
    assert code == 0, again
    assert lines(again, "service") == ["enabled and running, unchanged"]
    assert show(host, "MainPID")["MainPID"] == pid


def test_uninstall_keeps_config_state_and_running_containers_and_removes_the_rest(
        host: Any, site: Harness, deployed: tuple[str, str]) -> None:
    config = sh(host, "cat", CONFIG)[1]
    containers = site.container_ids()
    code, out = run(host, "uninstall")
    assert code == 0, out
    assert lines(out, "service")[0].startswith("stopped and disabled"), out
    assert [p for p in INSTALLED if exists(host, p)] == []
    assert not exists(host, str(Path(DROPIN).parent))
    assert show(host, "LoadState")["LoadState"] == "not-found"
    # the admin's config and the agent's state stay, and so does every container
    assert sh(host, "cat", CONFIG)[1] == config
    assert exists(host, "/var/lib/gitops-agent/state.json")
    assert lines(out, "kept") == [
        "/etc/gitops-agent (config; --purge removes it)",
        "/var/lib/gitops-agent (state; --purge removes it)",
        "compose project directories, containers, volumes and images: never touched"]
    assert site.container_ids() == containers
    assert all(c.status == "running" for s in ("web", "api") for c in site.containers(s))
    # a second run finds everything gone and succeeds
    code, again = run(host, "uninstall")
    assert code == 0, again
    assert lines(again, "unit") == [f"{UNIT} absent"]
    assert lines(again, "venv") == [f"{VENV} absent"]


def test_purge_removes_config_and_state_but_no_compose_project(
        host: Any, site: Harness, deployed: tuple[str, str]) -> None:
    containers = site.container_ids()
    code, out = run(host, "uninstall", "--purge")
    assert code == 0, out
    assert lines(out, "config") == ["/etc/gitops-agent removed (--purge)"]
    assert lines(out, "state") == ["/var/lib/gitops-agent removed (--purge)"]
    assert not exists(host, "/etc/gitops-agent") and not exists(host, "/var/lib/gitops-agent")
    assert [p for p in INSTALLED if exists(host, p)] == []
    assert (site.project.project_dir / "compose.yml").is_file()
    assert site.container_ids() == containers
    assert site.serve("web") == "web v1"
    assert site.client.volumes.get(f"{site.project.name}_webdata")
