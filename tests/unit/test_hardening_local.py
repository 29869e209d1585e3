"""Local-host hardening: credentials in config, trusted files, state_dir, allowlist
precision, pull errors by cause, a missing compose binary."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import requests
import urllib3.exceptions

from agent.config import parse_config
from agent.desired import check_allowed_images, normalize_repository, parse_desired_state
from agent.edges.compose import Compose
from agent.edges.docker import _permission_denied, classify_pull_error
from agent.errors import (
    AgentEnvironmentError,
    ComposeMissing,
    ConfigError,
    DesiredStateError,
    ImageNotFound,
    LocalPermissionDenied,
    PlatformMismatch,
    RegistryAuthError,
    RegistryUnavailable,
    UnsafeStateDir,
)
from agent.outcomes import EXIT_ENVIRONMENT, EXIT_RELEASE_FAILED, disposition, exit_code
from agent.secrets import check_trusted_file, read_secret_file, token_from_file, trusted_copy
from agent.state import StateLock, StateStore, write_atomic

NOBODY = 65534
TOKEN = "ghp_0123456789abcdefSECRET"


def _cfg(source: dict[str, object], tmp_path: Path) -> dict[str, object]:
    return {"source": source, "compose": {"project_dir": str(tmp_path)}}


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("url", [
    f"https://x-access-token:{TOKEN}@github.com/acme/shop.git",
    f"https://{TOKEN}@github.com/acme/shop.git",  # a token as the user name works on GitHub
    f"http://bot:{TOKEN}@127.0.0.1:8080/shop.git",
    f"ssh://git:{TOKEN}@github.com/acme/shop.git",
])
def test_repo_url_with_credentials_is_a_config_error_that_does_not_repeat_them(tmp_path, url):
    with pytest.raises(ConfigError) as ei:
        parse_config(_cfg({"repo": url}, tmp_path))
    [problem] = ei.value.problems
    assert problem.startswith("At 'source.repo': the URL carries credentials")
    assert "token_file" in problem
    assert TOKEN not in str(ei.value)


@pytest.mark.parametrize("field,url", [
    ("repo", f"https://gitlab.example.com/acme/shop.git?private_token={TOKEN}"),
    ("repo", f"https://git.example.com/shop.git?access_token={TOKEN}"),
    ("api_url", f"https://ghe.example.com/api/v3?access_token={TOKEN}"),
])
def test_a_token_in_the_urls_query_string_is_refused_like_user_token_at(tmp_path, field, url):
    source = {"repo": url} if field == "repo" else {
        "kind": "github", "repo": "acme/shop", "api_url": url}
    with pytest.raises(ConfigError) as ei:
        parse_config(_cfg(source, tmp_path))
    [problem] = ei.value.problems
    assert problem.startswith(f"At 'source.{field}': the URL has a query string")
    assert TOKEN not in str(ei.value)


def test_a_token_in_the_report_api_urls_query_string_is_refused(tmp_path):
    token = tmp_path / "t"
    cfg = _cfg({"repo": "https://github.com/acme/shop.git"}, tmp_path)
    cfg["report"] = {"github": {"repo": "acme/shop", "token_file": str(token),
                                "api_url": f"https://api.github.com/?access_token={TOKEN}"}}
    with pytest.raises(ConfigError) as ei:
        parse_config(cfg)
    assert str(ei.value).count("At 'report.github.api_url': the URL has a query string") == 1
    assert TOKEN not in str(ei.value)


@pytest.mark.parametrize("url", [
    "ssh://git@github.com/acme/shop.git", "git@github.com:acme/shop.git",
    "https://github.com/acme/shop.git", "/srv/repos/shop.git", "file:///srv/repos/shop.git",
])
def test_repo_urls_without_secrets_are_accepted(tmp_path, url):
    assert parse_config(_cfg({"repo": url}, tmp_path)).source.repo == url


def test_token_over_http_to_a_remote_host_is_refused(tmp_path):
    with pytest.raises(ConfigError) as ei:
        parse_config(_cfg({"repo": "http://git.example.com/shop.git",
                           "token_file": str(tmp_path / "t")}, tmp_path))
    [problem] = ei.value.problems
    assert problem.startswith("At 'source.token_file': a token would be sent in clear text")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.9.8.7", "[::1]", "localhost", "LOCALHOST"])
def test_token_over_http_to_loopback_is_accepted(tmp_path, host):
    cfg = parse_config(_cfg({"repo": f"http://{host}:8080/shop.git",
                             "token_file": str(tmp_path / "t")}, tmp_path))
    assert cfg.source.token_file == tmp_path / "t"


def test_http_without_a_token_is_accepted(tmp_path):
    parse_config(_cfg({"repo": "http://git.example.com/shop.git"}, tmp_path))


def test_github_kind_checks_the_api_url_for_http_and_credentials(tmp_path):
    with pytest.raises(ConfigError) as ei:
        parse_config(_cfg({"kind": "github", "repo": "acme/shop",
                           "api_url": "http://ghe.example.com/api/v3",
                           "token_file": str(tmp_path / "t")}, tmp_path))
    assert ei.value.problems[0].startswith("At 'source.token_file': a token would be sent")
    parse_config(_cfg({"kind": "github", "repo": "acme/shop", "api_url": "http://127.0.0.1:9/",
                       "token_file": str(tmp_path / "t")}, tmp_path))
    with pytest.raises(ConfigError) as ei:
        parse_config(_cfg({"kind": "github", "repo": "acme/shop",
                           "api_url": f"https://u:{TOKEN}@ghe.example.com/api/v3"}, tmp_path))
    assert ei.value.problems[0].startswith("At 'source.api_url': the URL carries credentials")


def test_credentials_and_other_config_errors_are_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as ei:
        parse_config({"source": {"repo": f"https://u:{TOKEN}@example.com/r.git", "bogus": 1},
                      "compose": {"project_dir": str(tmp_path)},
                      "agent": {"interval_seconds": -1}})
    joined = "\n".join(ei.value.problems)
    assert "At 'source.repo': the URL carries credentials" in joined
    assert "At 'source.bogus': unknown key" in joined
    assert "At 'agent.interval_seconds'" in joined


# --------------------------------------------------------------------------- trusted files
def _file(tmp_path: Path, name: str, mode: int, text: str = TOKEN) -> Path:
    p = tmp_path / name
    p.write_text(text + "\n")
    p.chmod(mode)
    return p


def test_secret_file_through_a_symlink_is_refused(tmp_path):
    real = _file(tmp_path, "real-token", 0o600)
    link = tmp_path / "token"
    link.symlink_to(real)
    with pytest.raises(ConfigError) as ei:
        token_from_file(link, "source.token_file")
    assert "is a symlink" in str(ei.value) and "source.token_file" in str(ei.value)
    assert TOKEN not in str(ei.value)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o610])
def test_secret_file_with_any_group_or_other_permission_is_refused(tmp_path, mode):
    p = _file(tmp_path, "token", mode)
    with pytest.raises(ConfigError) as ei:
        read_secret_file(p, "source.token_file")
    assert f"mode {mode:04o}" in str(ei.value)


def test_secret_file_owned_by_another_user_is_refused(tmp_path):
    p = _file(tmp_path, "token", 0o600)
    os.chown(p, NOBODY, NOBODY)
    with pytest.raises(ConfigError) as ei:
        read_secret_file(p, "registry.\"ghcr.io\".password_file")
    assert f"owned by uid {NOBODY}" in str(ei.value)


def test_secret_file_owned_by_the_agent_and_private_is_read(tmp_path):
    assert read_secret_file(_file(tmp_path, "token", 0o600), "source.token_file") == TOKEN
    assert read_secret_file(_file(tmp_path, "t2", 0o400), "source.token_file") == TOKEN


def test_allowed_signers_may_be_world_readable_but_not_group_or_other_writable(tmp_path):
    signers = _file(tmp_path, "allowed_signers", 0o644, "ci@example.test ssh-ed25519 AAAA")
    assert check_trusted_file(signers, "trust.allowed_signers_file", secret=False).startswith(
        b"ci@example.test")
    for mode in (0o664, 0o646):
        signers.chmod(mode)
        with pytest.raises(ConfigError) as ei:
            check_trusted_file(signers, "trust.allowed_signers_file", secret=False)
        assert "writable by group or others" in str(ei.value)


def test_allowed_signers_through_a_symlink_or_not_a_file_is_refused(tmp_path):
    real = _file(tmp_path, "signers", 0o644, "x")
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(ConfigError, match="is a symlink"):
        check_trusted_file(tmp_path / "link", "trust.allowed_signers_file", secret=False)
    os.mkfifo(tmp_path / "fifo", 0o600)
    with pytest.raises(ConfigError, match="not a regular file"):
        check_trusted_file(tmp_path / "fifo", "trust.allowed_signers_file", secret=False)
    with pytest.raises(ConfigError, match="cannot read"):
        check_trusted_file(tmp_path / "absent", "trust.allowed_signers_file", secret=False)


def test_trusted_copy_gives_the_tool_the_checked_content_in_a_private_file(tmp_path):
    signers = _file(tmp_path, "allowed_signers", 0o644, "ci@example.test ssh-ed25519 AAAA")
    dest = tmp_path / "state" / "allowed_signers"
    dest.parent.mkdir(mode=0o700)
    assert trusted_copy(signers, "trust.allowed_signers_file", dest) == dest
    assert dest.read_text() == signers.read_text()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    signers.write_text("attacker ssh-ed25519 BBBB\n")
    signers.chmod(0o666)
    with pytest.raises(ConfigError):
        trusted_copy(signers, "trust.allowed_signers_file", dest)
    assert "attacker" not in dest.read_text()  # the copy is not replaced by unchecked content


# --------------------------------------------------------------------------- state_dir
def test_state_dir_owned_by_another_user_is_refused_exit_4(tmp_path):
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    os.chown(d, NOBODY, NOBODY)
    with pytest.raises(UnsafeStateDir) as ei:
        StateStore(d).ensure_dir()
    assert f"owned by uid {NOBODY}" in str(ei.value) and "\n" not in str(ei.value)
    assert exit_code("error", ei.value) == EXIT_ENVIRONMENT


@pytest.mark.parametrize("mode", [0o770, 0o757, 0o1777])
def test_state_dir_writable_by_group_or_others_is_refused(tmp_path, mode):
    d = tmp_path / "state"
    d.mkdir()
    d.chmod(mode)
    with pytest.raises(UnsafeStateDir, match="writable by group or others"):
        StateStore(d).ensure_dir()


def test_state_dir_created_by_the_agent_is_accepted(tmp_path):
    StateStore(tmp_path / "new" / "state").ensure_dir()
    st = (tmp_path / "new" / "state").stat()
    assert st.st_uid == os.geteuid() and not stat.S_IMODE(st.st_mode) & 0o022


def test_lock_file_symlink_is_refused_and_its_target_never_created(tmp_path):
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    (d / "agent.lock").symlink_to(victim)
    with pytest.raises(UnsafeStateDir, match="is a symlink"):
        StateLock(d).acquire()
    assert not victim.exists()
    victim.write_text("precious\n")
    with pytest.raises(AgentEnvironmentError):
        StateLock(d).acquire()
    assert victim.read_text() == "precious\n"  # not truncated, no pid written


def test_write_atomic_replaces_a_symlinked_override_instead_of_following_it(tmp_path):
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    victim = tmp_path / "victim.yml"
    victim.write_text("precious\n")
    override = d / "compose.override.gitops-agent.json"
    override.symlink_to(victim)
    write_atomic(override, b'{"services": {}}\n')
    assert not override.is_symlink()
    assert override.read_text() == '{"services": {}}\n'
    assert victim.read_text() == "precious\n"


# --------------------------------------------------------------------------- allowlist
def _one(image: str):  # type: ignore[no-untyped-def]
    return parse_desired_state(
        f"version: 1\nservices:\n  web:\n    image: {image}\n    digest: sha256:{'a' * 64}\n"
        .encode())


@pytest.mark.parametrize("image", [
    "traefik", "library/traefik", "docker.io/traefik", "docker.io/library/traefik",
    "index.docker.io/library/traefik", "index.docker.io/traefik",
])
def test_allowlist_official_image_entry_allows_every_spelling_of_it(image):
    check_allowed_images(_one(image), ["traefik"], "ds.yml")
    check_allowed_images(_one(image), ["docker.io/library/traefik"], "ds.yml")


@pytest.mark.parametrize("image", [
    "traefik/whoami", "traefik/traefik", "docker.io/traefik/whoami", "ghcr.io/traefik",
    "ghcr.io/library/traefik", "traefikevil", "evil.example/traefik",
])
def test_allowlist_official_image_entry_refuses_lookalikes(image):
    with pytest.raises(DesiredStateError) as ei:
        check_allowed_images(_one(image), ["traefik"], "ds.yml")
    assert ei.value.problems[0].startswith("At 'services.web.image':")
    assert "outside the allowlist" in ei.value.problems[0]


def test_allowlist_namespace_and_registry_entries():
    check_allowed_images(_one("traefik/whoami"), ["traefik/"], "ds.yml")
    check_allowed_images(_one("docker.io/traefik/whoami"), ["traefik/"], "ds.yml")
    with pytest.raises(DesiredStateError):
        check_allowed_images(_one("traefik"), ["traefik/"], "ds.yml")
    check_allowed_images(_one("ghcr.io/anyone/x"), ["ghcr.io/"], "ds.yml")
    with pytest.raises(DesiredStateError):
        check_allowed_images(_one("ghcr.io.evil.example/x"), ["ghcr.io/"], "ds.yml")
    check_allowed_images(_one("127.0.0.1:5000/e2e/web"), ["127.0.0.1:5000/e2e/"], "ds.yml")
    with pytest.raises(DesiredStateError):
        check_allowed_images(_one("127.0.0.1:5001/e2e/web"), ["127.0.0.1:5000/e2e/"], "ds.yml")


def test_normalize_repository_follows_docker_reference_rules():
    assert normalize_repository("traefik") == ("docker.io", "library/traefik")
    assert normalize_repository("index.docker.io/acme/x") == ("docker.io", "acme/x")
    assert normalize_repository("localhost/x") == ("localhost", "x")
    assert normalize_repository("localhost:5000/x") == ("localhost:5000", "x")
    assert normalize_repository("acme/x") == ("docker.io", "acme/x")


# --------------------------------------------------------------------------- pull errors
def test_no_matching_manifest_is_a_permanent_platform_mismatch_naming_both_platforms():
    err = classify_pull_error(
        "ghcr.io", "ghcr.io/a/b@sha256:x",
        "no matching manifest for linux/amd64 in the manifest list entries",
        available="linux/arm64, linux/arm/v7")
    assert isinstance(err, PlatformMismatch)
    assert "linux/amd64" in str(err) and "linux/arm64, linux/arm/v7" in str(err)
    d = disposition(err)
    assert (d.outcome, d.exit_code, d.rollback) == ("failed", EXIT_RELEASE_FAILED, False)


@pytest.mark.parametrize("message", [
    "failed to register layer: open /var/lib/docker/overlay2/abc/diff/x: permission denied",
    "mkdir /var/lib/docker/tmp/GetImageBlob123: permission denied",
    "error creating temporary lease: write /var/lib/docker/containerd/x: "
    "operation not permitted",
    "Got permission denied while trying to connect to the Docker daemon socket at "
    "unix:///var/run/docker.sock: dial unix /var/run/docker.sock: connect: permission denied",
])
def test_local_permission_errors_are_environment_errors_not_docker_login(message):
    err = classify_pull_error("ghcr.io", "ghcr.io/a/b@sha256:x", message)
    assert isinstance(err, LocalPermissionDenied), err
    assert "docker login" not in str(err)
    assert exit_code("error", err) == EXIT_ENVIRONMENT


@pytest.mark.parametrize(("message", "kind"), [
    ("denied: requested access to the resource is denied", RegistryAuthError),
    ("pull access denied for x, repository does not exist or may require 'docker login': "
     "denied: requested access to the resource is denied", RegistryAuthError),
    ("unauthorized: authentication required", RegistryAuthError),
    ("manifest unknown: manifest unknown", ImageNotFound),
    ("Get https://r/v2/: dial tcp 10.0.0.1:443: connect: connection refused",
     RegistryUnavailable),
])
def test_registry_side_errors_keep_their_kind(message, kind):
    assert isinstance(classify_pull_error("r", "r/x@d", message), kind)


def test_docker_socket_permission_error_is_recognised_inside_requests_exceptions():
    inner = urllib3.exceptions.ProtocolError("Connection aborted.",
                                             PermissionError(13, "Permission denied"))
    assert _permission_denied(requests.exceptions.ConnectionError(inner))
    refused = urllib3.exceptions.ProtocolError("Connection aborted.",
                                               ConnectionRefusedError(111, "refused"))
    assert not _permission_denied(requests.exceptions.ConnectionError(refused))


# --------------------------------------------------------------------------- compose
def _compose(tmp_path: Path, command: list[str]) -> Compose:
    (tmp_path / "compose.yml").write_text("services:\n  web:\n    image: x\n")
    return Compose(command, tmp_path, ["compose.yml"], "p")


def test_missing_compose_binary_is_an_environment_error_exit_4(tmp_path):
    c = _compose(tmp_path, [str(tmp_path / "no-such-docker-compose")])
    with pytest.raises(ComposeMissing) as ei:
        c.config()
    assert "no-such-docker-compose" in str(ei.value) and "command not found" in str(ei.value)
    assert exit_code("error", ei.value) == EXIT_ENVIRONMENT


def test_compose_binary_not_executable_is_an_environment_error(tmp_path):
    binary = tmp_path / "docker-compose"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o644)
    with pytest.raises(ComposeMissing, match="not executable"):
        _compose(tmp_path, [str(binary)]).config()


def test_docker_cli_without_the_compose_plugin_is_an_environment_error(tmp_path):
    # what "docker compose" prints when the plugin is not installed (docker 20.10)
    docker = tmp_path / "docker"
    docker.write_text("#!/bin/sh\necho \"docker: 'compose' is not a docker command.\" >&2\n"
                      "echo \"See 'docker --help'\" >&2\nexit 1\n")
    docker.chmod(0o755)
    with pytest.raises(ComposeMissing):
        _compose(tmp_path, [str(docker), "compose"]).config()
