"""scripts/release-local for the tests that run it (tests/unit/test_release_local.py, the
argument checks; tests/e2e/test_release_local_e2e.py, the rehearsals against a registry):
a config repository to release into, and the script run on it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "release-local"
AGENT = Path(sys.executable).with_name("gitops-agent")
OLD = "sha256:" + "0" * 64


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def config_repo(tmp_path: Path, prefix: str) -> Path:
    repo = tmp_path / "config"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=main")
    git(repo, "config", "user.name", "t")
    git(repo, "config", "user.email", "t@example.test")
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
    git(repo, "add", "desired-state.yml")
    git(repo, "commit", "--quiet", "-m", "initial")
    return repo


def release(repo: Path, registry: str, services: list[tuple[str, Path]],
             *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(SCRIPT), "--registry", registry, "--repo-dir", str(repo),
            "--gitops-agent", str(AGENT)]
    for name, ctx in services:
        argv += ["--service", f"{name}={ctx}"]
    return subprocess.run([*argv, *extra], capture_output=True, text=True, check=False,
                          timeout=600)
