"""The GitHub workflows and the example stack, checked offline.

Every workflow validates against the GitHub workflow schema (check-jsonschema's vendored
copy: no network). The release workflow's structure is checked, and its shell glue (record
the digest, bump) is run for real here, so the digest build-push-action outputs is proven to
be what reaches `gitops-agent bump`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
BIN = Path(sys.executable).parent
BUILT = {"binance-provider", "mcp-gateway"}


def _load(path: Path) -> Any:
    return YAML(typ="safe", pure=True).load(path.read_text())


def _steps(job: dict[str, Any], uses_prefix: str) -> list[dict[str, Any]]:
    return [s for s in job["steps"] if str(s.get("uses", "")).startswith(uses_prefix)]


def _one(job: dict[str, Any], uses_prefix: str) -> dict[str, Any]:
    found = _steps(job, uses_prefix)
    assert len(found) == 1, f"expected one {uses_prefix} step, found {len(found)}"
    return found[0]


def _named(job: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in job["steps"] if s.get("name") == name)


@pytest.fixture(scope="module")
def release() -> dict[str, Any]:
    return dict(_load(WORKFLOWS / "release.yml"))


@pytest.fixture(scope="module")
def ci() -> dict[str, Any]:
    return dict(_load(WORKFLOWS / "ci.yml"))


# --------------------------------------------------------------------------- all workflows
def _workflow_files() -> list[Path]:
    return sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])


def test_release_and_ci_workflows_exist() -> None:
    assert {p.name for p in _workflow_files()} >= {"release.yml", "ci.yml"}


@pytest.mark.parametrize("path", _workflow_files(), ids=lambda p: p.name)
def test_workflow_validates_against_the_github_workflow_schema(path: Path) -> None:
    exe = BIN / "check-jsonschema"
    cmd = [str(exe)] if exe.exists() else [shutil.which("check-jsonschema") or "check-jsonschema"]
    done = subprocess.run([*cmd, "--builtin-schema", "vendor.github-workflows", str(path)],
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", _workflow_files(), ids=lambda p: p.name)
def test_no_expression_is_interpolated_into_a_shell_script(path: Path) -> None:
    """${{ }} in run: is a script-injection hole; values reach scripts through env."""
    wf = _load(path)
    for job_id, job in wf["jobs"].items():
        for step in job.get("steps", []):
            assert "${{" not in str(step.get("run", "")), (job_id, step.get("name"))


@pytest.mark.parametrize("path", _workflow_files(), ids=lambda p: p.name)
def test_top_level_permissions_grant_no_write(path: Path) -> None:
    perms = _load(path).get("permissions")
    assert perms is not None, "set top-level permissions explicitly"
    assert perms == {} or all(v in ("read", "none") for v in dict(perms).values())


# --------------------------------------------------------------------------- release
def test_release_runs_on_main_on_version_tags_and_by_hand(release: dict[str, Any]) -> None:
    on = release["on"]
    assert on["push"]["branches"] == ["main"]
    assert on["push"]["tags"] == ["v*"]
    assert "workflow_dispatch" in on


def test_release_has_a_concurrency_group_that_never_cancels_a_run(
    release: dict[str, Any],
) -> None:
    assert release["concurrency"]["group"]
    assert release["concurrency"]["cancel-in-progress"] is False


def test_release_permissions_are_least_privilege(release: dict[str, Any]) -> None:
    assert release["permissions"] == {}
    jobs = release["jobs"]
    assert jobs["build"]["permissions"] == {"contents": "read", "packages": "write"}
    assert jobs["bump"]["permissions"] == {"contents": "write", "pull-requests": "write"}
    assert set(jobs) == {"build", "bump"}


def test_release_matrix_is_the_built_services_with_their_contexts(
    release: dict[str, Any],
) -> None:
    entries = release["jobs"]["build"]["strategy"]["matrix"]["include"]
    assert {e["service"] for e in entries} == BUILT
    for e in entries:
        assert (ROOT / e["context"]).is_dir()
        assert (ROOT / e["dockerfile"]).is_file()
        assert Path(e["dockerfile"]).parent == Path(e["context"])


def test_release_builds_multi_arch_with_gha_cache_and_ghcr_login(
    release: dict[str, Any],
) -> None:
    build = release["jobs"]["build"]
    _one(build, "docker/setup-buildx-action@")
    login = _one(build, "docker/login-action@")["with"]
    assert login["registry"] == "ghcr.io"
    assert login["password"] == "${{ secrets.GITHUB_TOKEN }}"
    meta = _one(build, "docker/metadata-action@")
    tags = meta["with"]["tags"]
    assert "type=sha,prefix=sha-" in tags
    assert "type=ref,event=branch" in tags
    assert "type=raw,value=latest,enable={{is_default_branch}}" in tags
    assert "type=semver" in tags
    push = _one(build, "docker/build-push-action@")["with"]
    assert set(push["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert push["push"] is True
    assert push["tags"] == f"${{{{ steps.{meta['id']}.outputs.tags }}}}"
    assert push["cache-from"].startswith("type=gha")
    assert push["cache-to"].startswith("type=gha")


def test_release_digest_output_reaches_the_bump_step(release: dict[str, Any]) -> None:
    build, bump = release["jobs"]["build"], release["jobs"]["bump"]
    push_id = _one(build, "docker/build-push-action@")["id"]
    record = _named(build, "Record the pushed digest")
    assert record["env"]["DIGEST"] == f"${{{{ steps.{push_id}.outputs.digest }}}}"
    # ... written to a file the upload step uploads, one artifact per matrix entry ...
    upload = _one(build, "actions/upload-artifact@")["with"]
    assert upload["name"] == "digest-${{ matrix.service }}"
    assert upload["path"] == "${{ runner.temp }}/digests/${{ matrix.service }}.json"
    assert '> "$RUNNER_TEMP/digests/$SERVICE.json"' in record["run"]
    # ... downloaded, all of them, by the bump job, after every build ...
    assert bump["needs"] == "build"
    download = _one(bump, "actions/download-artifact@")["with"]
    assert download["pattern"] == "digest-*"
    assert download["merge-multiple"] is True
    # ... where the bump step reads them.
    step = _named(bump, "gitops-agent bump")
    assert step["env"]["DIGESTS_DIR"] == download["path"]
    assert "gitops-agent bump desired-state.yml" in step["run"]
    # and the bump runs before the PR is made, then the PR carries desired-state.yml
    order = [s.get("name") or s.get("uses") for s in bump["steps"]]
    pr_index = next(i for i, s in enumerate(bump["steps"])
                    if str(s.get("uses", "")).startswith("peter-evans/create-pull-request@"))
    assert order.index("gitops-agent bump") < order.index("Validate") < pr_index


def test_release_opens_one_pr_on_a_fixed_branch(release: dict[str, Any]) -> None:
    pr = _one(release["jobs"]["bump"], "peter-evans/create-pull-request@")["with"]
    assert pr["title"] == "release: bump digests"
    assert pr["branch"] == "release/bump-digests"
    assert pr["add-paths"] == "desired-state.yml"
    assert pr["base"] == "${{ github.event.repository.default_branch }}"


def test_release_never_bumps_traefik(release: dict[str, Any]) -> None:
    entries = release["jobs"]["build"]["strategy"]["matrix"]["include"]
    assert "traefik" not in {e["service"] for e in entries}
    bump_run = _named(release["jobs"]["bump"], "gitops-agent bump")["run"]
    assert "traefik" not in bump_run
    assert "--force" not in bump_run  # a pinned service is never overridden
    from agent.desired import parse_desired_state

    state = parse_desired_state((ROOT / "desired-state.yml").read_bytes())
    assert state.services["traefik"].pinned


def _bash_with_jq() -> None:
    if not shutil.which("bash") or not shutil.which("jq"):
        pytest.skip("bash and jq are needed to run the workflow's shell steps")


def test_release_shell_steps_turn_pushed_digests_into_a_bump(
    release: dict[str, Any], tmp_path: Path
) -> None:
    """Run the record and bump steps' scripts as the runner would, on a copy of the repo's
    desired-state.yml: the digests written are exactly the ones build-push-action gave."""
    _bash_with_jq()
    build, bump = release["jobs"]["build"], release["jobs"]["bump"]
    record_script = _named(build, "Record the pushed digest")["run"]
    bump_script = _named(bump, "gitops-agent bump")["run"]
    runner_temp = tmp_path / "runner"
    work = tmp_path / "checkout"
    runner_temp.mkdir()
    work.mkdir()
    shutil.copy(ROOT / "desired-state.yml", work)
    shutil.copy(ROOT / "compose.yml", work)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "RUNNER_TEMP": str(runner_temp), "GITHUB_SHA": "0123456789abcdef" * 2 + "01234567",
           "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}
    pushed = {"binance-provider": "sha256:" + "b" * 64, "mcp-gateway": "sha256:" + "c" * 64}
    for service, digest in pushed.items():
        image = f"ghcr.io/someone/some-repo/{service}"
        subprocess.run(["bash", "-c", record_script], cwd=work, check=True, env={
            **env, "SERVICE": service, "IMAGE": image, "DIGEST": digest})
    # upload + download(merge-multiple) put every entry's file in one directory
    done = subprocess.run(["bash", "-c", bump_script], cwd=work, capture_output=True,
                          text=True, check=False,
                          env={**env, "DIGESTS_DIR": str(runner_temp / "digests")})
    assert done.returncode == 0, done.stdout + done.stderr

    from agent.desired import parse_desired_state

    before = parse_desired_state((ROOT / "desired-state.yml").read_bytes())
    after = parse_desired_state((work / "desired-state.yml").read_bytes())
    for service, digest in pushed.items():
        spec = after.services[service]
        assert (spec.image, spec.digest, spec.tag) == (
            f"ghcr.io/someone/some-repo/{service}", digest, "sha-0123456")
    assert after.services["traefik"] == before.services["traefik"]
    validate = subprocess.run([str(BIN / "gitops-agent"), "validate", "desired-state.yml",
                               "--compose", "compose.yml"], cwd=work, capture_output=True,
                              text=True, check=False)
    assert validate.returncode == 0, validate.stderr


def test_release_record_step_fails_without_a_digest(
    release: dict[str, Any], tmp_path: Path
) -> None:
    _bash_with_jq()
    script = _named(release["jobs"]["build"], "Record the pushed digest")["run"]
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          check=False, env={**os.environ, "RUNNER_TEMP": str(tmp_path),
                                            "GITHUB_SHA": "a" * 40, "SERVICE": "x",
                                            "IMAGE": "ghcr.io/a/b/x", "DIGEST": "",
                                            "GITHUB_STEP_SUMMARY": str(tmp_path / "s")})
    assert done.returncode != 0
    assert "no digest" in done.stdout


# --------------------------------------------------------------------------- ci
def test_ci_runs_on_pull_requests_and_pushes(ci: dict[str, Any]) -> None:
    assert "pull_request" in ci["on"] and "push" in ci["on"]


def test_ci_runs_make_test_and_validates_the_desired_state(ci: dict[str, Any]) -> None:
    runs = [str(s.get("run", "")) for job in ci["jobs"].values() for s in job["steps"]]
    assert any(r.strip() == "make test" for r in runs)
    assert any(r.strip() == "gitops-agent validate desired-state.yml --compose compose.yml"
               for r in runs)


def test_ci_token_is_read_only(ci: dict[str, Any]) -> None:
    assert ci["permissions"] == {"contents": "read"}
    assert all("permissions" not in job for job in ci["jobs"].values())


# --------------------------------------------------------------------------- the example stack
def test_top_level_desired_state_passes_validate_against_compose() -> None:
    done = subprocess.run([str(BIN / "gitops-agent"), "validate", "desired-state.yml",
                           "--compose", "compose.yml"], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "valid (3 services)" in done.stdout


def test_desired_state_pins_all_three_services_by_digest_and_says_ci_writes_them() -> None:
    from agent.desired import parse_desired_state

    text = (ROOT / "desired-state.yml").read_text()
    state = parse_desired_state(text.encode())
    assert set(state.services) == BUILT | {"traefik"}
    for name in BUILT:
        assert state.services[name].image == f"ghcr.io/acme/gitops-agent/{name}"
    assert state.services["traefik"].image == "traefik"
    assert re.search(r"#.*written by CI", text)


def test_compose_never_builds_and_keeps_named_volumes() -> None:
    compose = _load(ROOT / "compose.yml")
    services = compose["services"]
    assert set(services) == BUILT | {"traefik"}
    assert all("build" not in s for s in services.values())
    assert set(compose["volumes"]) == {"binance-analytics", "traefik-certs"}
    assert "binance-analytics:/data" in services["binance-provider"]["volumes"]
    assert any(v.startswith("traefik-certs:") for v in services["traefik"]["volumes"])
    for name in BUILT:
        svc = services[name]
        assert svc["image"].startswith(f"ghcr.io/acme/gitops-agent/{name}:")
        assert svc["healthcheck"]["test"][0] == "CMD"
        labels = svc["labels"]
        assert labels["traefik.enable"] == "true"
        assert any(k.endswith(".loadbalancer.server.port") for k in labels)
        assert "container_name" not in svc  # start-first needs two containers at once
    assert services["traefik"]["image"].startswith("traefik:")


def test_compose_override_only_adds_builds_for_local_development() -> None:
    override = _load(ROOT / "compose.override.yml")
    assert set(override["services"]) == BUILT
    for name, svc in override["services"].items():
        assert set(svc) == {"build"}
        assert (ROOT / svc["build"]["context"] / "Dockerfile").is_file()
        assert svc["build"]["context"] == f"services/{name}"


def test_service_sources_have_a_health_endpoint_and_a_dockerfile() -> None:
    rust = ROOT / "services" / "binance-provider"
    assert '"/health"' in (rust / "src" / "main.rs").read_text()
    assert (rust / "Cargo.toml").is_file() and (rust / "Cargo.lock").is_file()
    assert (rust / "Dockerfile").read_text().count("FROM ") >= 2  # multi-stage
    py = ROOT / "services" / "mcp-gateway"
    assert '"/health"' in (py / "app.py").read_text()
    assert "HEALTHCHECK" in (py / "Dockerfile").read_text()
