"""End-to-end: for each compose feature, `gitops-agent validate --compose` (CI) and a real
pass on the server (real engine, registry, git, compose) give the same verdict, and it is
compose's own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from compose_cases import CASES, IDS, Case, compose_verdict, desired_text

REPO_ROOT = Path(__file__).resolve().parents[2]


def _deploy_case(harness, case: Case, compose_cmd: list[str]) -> Path:  # type: ignore[no-untyped-def]
    """Put the case's compose files where the agent runs them, and say so in its config."""
    project_dir: Path = harness.project.project_dir
    for f in project_dir.iterdir():
        if f.is_file():
            f.unlink()
    shutil.copytree(case.dir, project_dir, dirs_exist_ok=True)
    config = harness.project.config_path
    text = config.read_text()
    files = ", ".join(f'"{f}"' for f in case.files)
    profiles = ", ".join(f'"{p}"' for p in case.profiles)
    text = text.replace('files = ["compose.yml"]', f"files = [{files}]\nprofiles = [{profiles}]")
    config.write_text(text)
    return project_dir


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMPOSE_PROFILES", raising=False)
    monkeypatch.delenv("GITOPS_TEST_UNSET_IMAGE", raising=False)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_validate_and_the_real_pass_agree_with_compose(  # type: ignore[no-untyped-def]
    case: Case, harness, compose_cmd: list[str], clean_env: None
) -> None:
    project_dir = _deploy_case(harness, case, compose_cmd)
    try:
        desired = desired_text(case, harness.image("api"), harness.images["api-v1"])
        harness.commit(desired, f"desired-state for {case.name}")
        (project_dir / "desired-state.yml").write_text(desired)  # what CI checks out

        # CI: the real CLI, as a new user runs it
        argv = [sys.executable, "-m", "agent", "validate", str(project_dir / "desired-state.yml")]
        for f in case.files:
            argv += ["--compose", str(project_dir / f)]
        for p in case.profiles:
            argv += ["--profile", p]
        env = {k: v for k, v in os.environ.items()
               if k not in ("COMPOSE_PROFILES", "GITOPS_TEST_UNSET_IMAGE")}
        ci = subprocess.run(argv, capture_output=True, text=True, cwd=REPO_ROOT, env=env,
                            check=False, timeout=120)

        # the server: a real pass
        r = harness.sync()
        outcome = r.summary()["outcome"]

        assert compose_verdict(compose_cmd, case, project_dir) is case.valid
        if case.valid:
            assert ci.returncode == 0, ci.stderr
            assert r.code == 0 and outcome == "applied", r.logs
            for svc in case.services:  # compose ran each of them at the desired digest
                assert harness.running_digest(svc) == harness.images["api-v1"], svc
        else:
            assert ci.returncode == 2, ci.stdout
            assert r.code == 2 and outcome == "invalid", r.logs
            assert case.message in ci.stderr
            assert case.message in r.summary()["reason"]
            for svc in case.services:  # nothing touched
                assert harness.containers(svc) == []
    finally:
        down = [*compose_cmd, "--project-name", harness.project.name,
                "--project-directory", str(project_dir), "--profile", "*"]
        for f in case.files:
            down += ["--file", str(project_dir / f)]
        subprocess.run([*down, "down", "--volumes", "--timeout", "1", "--remove-orphans"],
                       capture_output=True, check=False, timeout=120,
                       env={**os.environ, "GITOPS_TEST_UNSET_IMAGE": "x"})
