"""scripts/release-local end to end: real images built FROM scratch, pushed to the session's
registry on a free 127.0.0.1 port; the digests the script commits are the ones the registry
serves. (The pure helpers and the argument checks: tests/unit/test_release_local.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from release_rehearsal import OLD, config_repo, git, release


# --------------------------------------------------------------------------- helpers
def _registry_digest(registry: str, repo: str, tag: str) -> str:
    r = requests.head(
        f"http://{registry}/v2/{repo}/manifests/{tag}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                           "application/vnd.oci.image.manifest.v1+json"},
        timeout=10,
    )
    r.raise_for_status()
    return r.headers["Docker-Content-Digest"]


@pytest.fixture
def contexts(tmp_path: Path) -> dict[str, Path]:
    import rig

    return {
        "web": rig.build_context(tmp_path / "ctx-web", "nohealth", f"web {tmp_path.name}"),
        "api": rig.build_context(tmp_path / "ctx-api", "nohealth", f"api {tmp_path.name}"),
    }


# --------------------------------------------------------------------------- end to end
def test_release_local_pushes_bumps_and_commits_the_registry_digests(
    tmp_path: Path, registry, contexts: dict[str, Path],  # type: ignore[no-untyped-def]
) -> None:
    host = registry.host
    repo = config_repo(tmp_path, f"{host}/gitops-demo")
    before = git(repo, "rev-parse", "HEAD")

    done = release(repo, host, [("web", contexts["web"]), ("api", contexts["api"])],
                    "--tag", "r1", "--message", "release: rehearsal")
    assert done.returncode == 0, done.stderr

    lines = done.stdout.splitlines()
    assert len(lines) == 3
    pushed = dict(line.split(" ", 1) for line in lines[:2])
    for name in ("web", "api"):
        digest = _registry_digest(host, f"gitops-demo/{name}", "r1")
        assert pushed[name] == f"{host}/gitops-demo/{name}@{digest}"

    sha = lines[2]
    assert sha == git(repo, "rev-parse", "HEAD") != before
    assert git(repo, "log", "-1", "--format=%s") == "release: rehearsal"
    assert git(repo, "show", "--name-only", "--format=", "HEAD") == "desired-state.yml"
    assert git(repo, "status", "--porcelain") == ""

    from agent.desired import parse_desired_state

    text = (repo / "desired-state.yml").read_text()
    state = parse_desired_state(text.encode())
    assert state.services["web"].reference == pushed["web"]
    assert state.services["api"].reference == pushed["api"]  # the new service was added
    assert state.services["api"].tag == "r1"
    assert state.services["proxy"].digest == OLD  # the pinned one untouched
    assert "# config repo of the rehearsal" in text and "# CI writes the digest" in text


def test_release_local_twice_with_the_same_images_commits_nothing_new(
    tmp_path: Path, registry, contexts: dict[str, Path],  # type: ignore[no-untyped-def]
) -> None:
    host = registry.host
    repo = config_repo(tmp_path, f"{host}/gitops-demo")
    first = release(repo, host, [("web", contexts["web"])], "--tag", "same")
    assert first.returncode == 0, first.stderr
    head = git(repo, "rev-parse", "HEAD")

    again = release(repo, host, [("web", contexts["web"])], "--tag", "same")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1] == head == git(repo, "rev-parse", "HEAD")
    assert "nothing committed" in again.stderr


def test_release_local_no_commit_leaves_the_change_uncommitted(
    tmp_path: Path, registry, contexts: dict[str, Path],  # type: ignore[no-untyped-def]
) -> None:
    host = registry.host
    repo = config_repo(tmp_path, f"{host}/gitops-demo")
    head = git(repo, "rev-parse", "HEAD")
    done = release(repo, host, [("web", contexts["web"])], "--tag", "nc", "--no-commit")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1
    assert git(repo, "rev-parse", "HEAD") == head
    assert git(repo, "status", "--porcelain") == "M desired-state.yml"


def test_release_local_refuses_a_pinned_service_and_commits_nothing(
    tmp_path: Path, registry, contexts: dict[str, Path],  # type: ignore[no-untyped-def]
) -> None:
    host = registry.host
    repo = config_repo(tmp_path, f"{host}/gitops-demo")
    head = git(repo, "rev-parse", "HEAD")
    done = release(repo, host, [("proxy", contexts["web"])], "--tag", "p1",
                    "--image-prefix", f"{host}/pinned")
    assert done.returncode == 1
    assert "gitops-agent bump failed" in done.stderr and "pinned" in done.stderr
    assert git(repo, "rev-parse", "HEAD") == head
    assert git(repo, "status", "--porcelain") == ""


def test_release_local_fails_clearly_when_the_registry_is_down(
    tmp_path: Path, contexts: dict[str, Path], docker_client,  # type: ignore[no-untyped-def]
) -> None:
    import rig

    host = f"127.0.0.1:{rig.free_port()}"  # nothing listens there
    repo = config_repo(tmp_path, f"{host}/gitops-demo")
    done = release(repo, host, [("web", contexts["web"])], "--tag", "down")
    assert done.returncode == 1
    assert "docker push of web failed" in done.stderr
    assert git(repo, "status", "--porcelain") == ""
