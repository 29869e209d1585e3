"""Shared fixtures. The rig (engine, registry, images) is built once per session."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from agent import retry  # noqa: E402

retry.set_fast(True)  # the real retry path, with millisecond waits


@pytest.fixture(scope="session")
def docker_client():  # type: ignore[no-untyped-def]
    import rig

    # Under CI the end-to-end tests must run: a missing engine fails them, never skips.
    return rig.docker_client()


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rig")


@pytest.fixture(scope="session")
def registry(session_dir: Path, docker_client) -> Iterator[object]:  # type: ignore[no-untyped-def]
    import rig

    reg = rig.Registry(port=rig.free_port(), workdir=session_dir / "registry").start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def images(registry, docker_client, session_dir: Path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Digests of the test images, by short name."""
    import rig

    host = registry.host
    specs = {
        "web-v1": ("e2e/web", "v1", "healthy", "web v1"),
        "web-v2": ("e2e/web", "v2", "healthy", "web v2"),
        "web-v3": ("e2e/web", "v3", "healthy", "web v3"),
        "web-bad": ("e2e/web", "bad", "unhealthy", "web bad"),
        "web-crash": ("e2e/web", "crash", "crash", "web crash"),
        "web-exit0": ("e2e/web", "exit0", "exit0", "web exit0"),
        "web-slow": ("e2e/web", "slow", "slow", "web slow"),
        "api-v1": ("e2e/api", "v1", "nohealth", "api v1"),
        "api-v2": ("e2e/api", "v2", "nohealth", "api v2"),
        "side": ("e2e/side", "v1", "nohealth", "side"),
    }
    out = {}
    for key, (repo, tag, variant, version) in specs.items():
        out[key] = rig.build_and_push(docker_client, host, repo, tag, variant, version,
                                      session_dir / "ctx")
    # Forget the local copies: the agent must pull them from the registry for real.
    for repo, tag, _, _ in specs.values():
        rig.remove_local_image(docker_client, f"{host}/{repo}:{tag}")
    return out


@pytest.fixture(scope="session")
def debian_base_image(docker_client) -> str:  # type: ignore[no-untyped-def]
    """``local/debian:bookworm``: a debootstrap'ed Debian (minbase) imported into the engine,
    for tests that need a real distribution userland (systemd as PID 1, apt packages).
    Built once by scripts/debian-base-image (a few minutes, needs the Debian mirror); the
    image existing is the cache. Derive from it with a Dockerfile ``FROM`` this name."""
    import subprocess

    script = Path(__file__).resolve().parents[1] / "scripts" / "debian-base-image"
    p = subprocess.run([str(script)], capture_output=True, text=True, timeout=1800, check=False)
    if p.returncode != 0:
        pytest.fail(f"{script} could not build the Debian base image (exit {p.returncode}):\n"
                    f"{p.stderr[-3000:]}", pytrace=False)
    return p.stdout.strip().splitlines()[-1]


@pytest.fixture
def compose_cmd() -> list[str]:
    from agent.edges.compose import find_compose_command

    return find_compose_command()


@pytest.fixture
def harness(tmp_path: Path, registry, images, docker_client, compose_cmd):  # type: ignore[no-untyped-def]
    from harness import Harness

    h = Harness.create(tmp_path, registry.host, images, docker_client, compose_cmd,
                       name=f"e2e{uuid.uuid4().hex[:8]}")
    yield h
    h.teardown()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath) or "/faults/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


os.environ.setdefault("GITOPS_AGENT_FAST_RETRY", "1")


@pytest.fixture(scope="session")
def caddy_image(docker_client, session_dir: Path, debian_base_image: str) -> str:  # type: ignore[no-untyped-def]
    """Debian's caddy 2.6 on the Debian base image (built once, kept between sessions):
    a proxy that follows Docker's DNS and checks nothing."""
    import proxy

    return proxy.build_caddy_image(docker_client, session_dir, debian_base_image)
