"""End-to-end: registry credentials against a local registry with htpasswd auth."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
import rig

USER = "deploy-bot"
SECRET = "s3cr3t-Pa55w0rd-do-not-log"


@pytest.fixture
def auth_registry(tmp_path, docker_client):
    htpasswd = tmp_path / "htpasswd"
    rig.make_htpasswd(htpasswd, USER, SECRET)
    reg = rig.Registry(port=rig.free_port(), workdir=tmp_path / "authreg", htpasswd=htpasswd).start()
    docker_client.login(username=USER, password=SECRET, registry=reg.host, reauth=True)
    digest = rig.build_and_push(docker_client, reg.host, "private/web", "v1", "healthy",
                                "private web", tmp_path / "ctx")
    rig.remove_local_image(docker_client, f"{reg.host}/private/web:v1")
    yield reg, digest
    reg.stop()


def _release_private(harness, reg, digest):
    return harness.commit(rig.desired_yaml({
        "web": (f"{reg.host}/private/web", digest),
        "api": (harness.image("api"), harness.images["api-v1"]),
    }))


def _add_credentials(harness, host: str, password: str, mode: int = 0o600) -> Path:
    pw = harness.project.root / "registry-password"
    pw.write_text(password + "\n")
    pw.chmod(mode)
    with harness.project.config_path.open("a") as f:
        f.write(f'\n[registry."{host}"]\nusername = "{USER}"\npassword_file = "{pw}"\n')
    return pw


def _all_text(harness, logs) -> str:
    blobs = [json.dumps(logs, default=str)]
    for p in harness.project.state_dir.rglob("*"):
        if p.is_file():
            blobs.append(p.read_bytes().decode(errors="replace"))
    return "\n".join(blobs)


def test_right_credentials_from_agent_config_pull_and_never_leak(harness, auth_registry):
    reg, digest = auth_registry
    _add_credentials(harness, reg.host, SECRET)
    _release_private(harness, reg, digest)
    r = harness.sync()
    assert r.code == 0, r.summary()
    assert harness.serve("web") == "private web"
    p = harness.cli_subprocess("status", "--json")
    text = _all_text(harness, r.logs) + p.stdout + p.stderr
    assert SECRET not in text


def test_wrong_credentials_fail_once_clearly_and_touch_nothing(harness, auth_registry):
    reg, digest = auth_registry
    harness.release(web="web-v1", api="api-v1")
    assert harness.sync().code == 0
    before = harness.container_ids()
    _add_credentials(harness, reg.host, "wrong-password-xyz")
    _release_private(harness, reg, digest)
    r = harness.sync()
    assert r.code == 1
    assert r.summary()["outcome"] == "failed"
    assert len(r.find("agent.pull.unauthorized")) == 1
    assert r.find("agent.pull.retry_scheduled") == []  # no retry storm on a 401
    reason = r.summary()["reason"]
    assert reg.host in reason and "docker login" in reason
    assert harness.container_ids() == before
    assert "wrong-password-xyz" not in _all_text(harness, r.logs)


def test_missing_credentials_fail_cleanly(harness, auth_registry):
    reg, digest = auth_registry
    _release_private(harness, reg, digest)
    p = harness.cli_subprocess("sync", env={"DOCKER_CONFIG": str(harness.project.root / "nodocker")})
    assert p.returncode == 1, p.stderr
    assert f"registry {reg.host} refused the credentials" in p.stderr
    assert harness.containers("web") == []


def test_credentials_from_docker_config_are_used(harness, auth_registry):
    reg, digest = auth_registry
    cfg_dir = harness.project.root / "dockercfg"
    cfg_dir.mkdir()
    token = base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
    (cfg_dir / "config.json").write_text(json.dumps({"auths": {reg.host: {"auth": token}}}))
    os.chmod(cfg_dir / "config.json", 0o600)
    _release_private(harness, reg, digest)
    p = harness.cli_subprocess("sync", env={"DOCKER_CONFIG": str(cfg_dir)})
    assert p.returncode == 0, p.stderr
    assert SECRET not in p.stderr and token not in p.stderr
    assert harness.serve("web") == "private web"


def test_password_file_readable_by_others_is_refused(harness, auth_registry):
    reg, digest = auth_registry
    pw = _add_credentials(harness, reg.host, SECRET, mode=0o644)
    _release_private(harness, reg, digest)
    p = harness.cli_subprocess("sync")
    assert p.returncode == 2
    assert f"{pw} is readable by group or others" in p.stderr
    assert f"chmod 600 {pw}" in p.stderr
    assert SECRET not in p.stderr
    assert harness.containers("web") == []


def test_password_file_through_a_symlink_is_refused(harness, auth_registry):
    reg, digest = auth_registry
    pw = _add_credentials(harness, reg.host, SECRET)
    real = pw.with_name("real-password")
    pw.rename(real)
    pw.symlink_to(real)
    _release_private(harness, reg, digest)
    p = harness.cli_subprocess("sync")
    assert p.returncode == 2, p.stderr
    assert f"{pw} is a symlink" in p.stderr
    assert SECRET not in p.stderr
    assert harness.containers("web") == []


def test_repo_url_with_a_token_in_it_is_refused_before_anything_runs(harness):
    cfg = harness.project.config_path
    origin = str(harness.project.repo.origin)
    cfg.write_text(cfg.read_text().replace(
        f'repo = "{origin}"', f'repo = "https://bot:{SECRET}@git.example.com/shop.git"'))
    harness.release(web="web-v1", api="api-v1")
    p = harness.cli_subprocess("sync")
    assert p.returncode == 2, p.stderr
    assert "At 'source.repo': the URL carries credentials" in p.stderr
    assert SECRET not in p.stderr
    assert harness.containers("web") == []
    assert not (harness.project.state_dir / "state.json").exists()
