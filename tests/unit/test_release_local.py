"""scripts/release-local: the release workflow rehearsed against a local registry.

The pure helpers and the argument checks, without an engine; the end to end rehearsals
(real images pushed to a real registry) are tests/e2e/test_release_local_e2e.py."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "release-local"
AGENT = Path(sys.executable).with_name("gitops-agent")
OLD = "sha256:" + "0" * 64


def _load_script() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("release_local", str(SCRIPT))
    spec = importlib.util.spec_from_loader("release_local", loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["release_local"] = mod  # dataclasses look their module up there
    loader.exec_module(mod)
    return mod


rl = _load_script()


# --------------------------------------------------------------------------- pure helpers
def test_script_is_executable_with_a_python3_shebang() -> None:
    assert SCRIPT.stat().st_mode & 0o111
    assert SCRIPT.read_text().startswith("#!/usr/bin/env python3\n")


def test_script_never_runs_a_shell() -> None:
    text = SCRIPT.read_text()
    assert "shell=True" not in text and "os.system" not in text and "os.popen" not in text


def test_push_digest_is_read_from_the_line_for_the_pushed_tag() -> None:
    d1, d2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    out = (
        "The push refers to repository [127.0.0.1:5001/gitops-demo/web]\n"
        "5f70bf18a086: Pushed\n"
        f"other: digest: {d1} size: 527\n"
        f"v1: digest: {d2} size: 739\n"
    )
    assert rl.parse_push_digest(out, "v1") == d2
    assert rl.parse_push_digest(out, "v2") is None


def test_repo_digests_pick_the_pushed_repository() -> None:
    d = "sha256:" + "3" * 64
    refs = [f"elsewhere/web@{'sha256:' + '4' * 64}", f"127.0.0.1:5001/gitops-demo/web@{d}"]
    assert rl.digest_from_repo_digests(refs, "127.0.0.1:5001/gitops-demo/web") == d
    assert rl.digest_from_repo_digests(refs, "127.0.0.1:5001/gitops-demo/api") is None


@pytest.mark.parametrize("bad", ["web", "=ctx", "web=", "Web=ctx", "-x=ctx"])
def test_service_argument_must_be_name_equals_context(bad: str) -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        rl.parse_service(bad)


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--registry", "127.0.0.1:1", "--repo-dir", str(tmp_path),
         "--service", "a=x", "--service", "a=y"],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 2
    assert "more than once" in done.stderr


def test_missing_dockerfile_fails_before_building(tmp_path: Path) -> None:
    repo = _config_repo(tmp_path, "127.0.0.1:1/gitops-demo")
    done = _release(repo, "127.0.0.1:1", [("web", tmp_path / "nothing")], "--tag", "v1")
    assert done.returncode == 1
    assert "no Dockerfile" in done.stderr


# --------------------------------------------------------------------------- helpers
def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def _config_repo(tmp_path: Path, prefix: str) -> Path:
    repo = tmp_path / "config"
    repo.mkdir()
    _git(repo, "init", "--quiet", "--initial-branch=main")
    _git(repo, "config", "user.name", "t")
    _git(repo, "config", "user.email", "t@example.test")
    (repo / "desired-state.yml").write_text(
        "# config repo of the rehearsal\n"
        "version: 1\n"
        "services:\n"
        "  web:\n"
        f"    image: {prefix}/web   # CI writes the digest\n"
        f"    digest: {OLD}\n"
        "  proxy:\n"
        "    image: traefik\n"
        f"    digest: {OLD}\n"
        "    pinned: true\n"
    )
    _git(repo, "add", "desired-state.yml")
    _git(repo, "commit", "--quiet", "-m", "initial")
    return repo


def _release(repo: Path, registry: str, services: list[tuple[str, Path]],
             *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(SCRIPT), "--registry", registry, "--repo-dir", str(repo),
            "--gitops-agent", str(AGENT)]
    for name, ctx in services:
        argv += ["--service", f"{name}={ctx}"]
    return subprocess.run([*argv, *extra], capture_output=True, text=True, check=False,
                          timeout=600)
