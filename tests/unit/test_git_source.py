"""The git source against real git: a local bare repo and a token-protected smart-HTTP
server (git http-backend) on 127.0.0.1."""

from __future__ import annotations

import pytest
import rig
from git_http_server import GitHTTPServer
from structlog.testing import capture_logs

from agent.edges.git import GitSource
from agent.errors import ConfigError, DesiredStateError, SourceRefused, SourceUnavailable

TOKEN = "ghp_gitHttpTokenNeverLogged_0123456789"


@pytest.fixture
def origin(tmp_path):
    repo = rig.GitRepo(tmp_path / "git").init()
    sha = repo.commit_file("desired-state.yml", "version: 1\nservices: {}\n", "one")
    return repo, sha


def test_fetch_reads_the_file_at_the_branch_head_and_fetches_into_one_mirror(origin, tmp_path):
    repo, sha = origin
    src = GitSource(str(repo.origin), "main", "desired-state.yml", tmp_path / "mirror")
    got = src.fetch()
    assert got.revision == sha and got.content.startswith(b"version: 1")
    sha2 = repo.commit_file("desired-state.yml", "version: 1\nservices: {}\n# two\n", "two")
    got = src.fetch()
    assert got.revision == sha2 and b"# two" in got.content
    assert not got.went_backwards


def test_force_push_to_an_older_commit_is_followed_and_flagged(origin, tmp_path):
    repo, sha = origin
    src = GitSource(str(repo.origin), "main", "desired-state.yml", tmp_path / "mirror")
    repo.commit_file("desired-state.yml", "version: 1\nservices: {}\n# two\n", "two")
    src.fetch()
    rig.git("push", "--quiet", "--force", "origin", f"{sha}:main", cwd=repo.work)
    got = src.fetch()
    assert got.revision == sha and got.went_backwards


def test_missing_file_at_the_revision_is_invalid_input(origin, tmp_path):
    repo, _ = origin
    src = GitSource(str(repo.origin), "main", "nope.yml", tmp_path / "mirror")
    with pytest.raises(DesiredStateError, match="no file 'nope.yml'"):
        src.fetch()


def test_unreachable_remote_is_transient(tmp_path):
    src = GitSource("http://127.0.0.1:9/none.git", "main", "d.yml", tmp_path / "mirror",
                    timeout=10)
    with pytest.raises(SourceUnavailable, match="git fetch of"):
        src.fetch()


def test_https_token_is_sent_as_a_header_never_on_the_command_line_or_in_logs(origin, tmp_path):
    repo, sha = origin
    with GitHTTPServer(repo.root, TOKEN) as srv:
        url = srv.url("origin.git")
        src = GitSource(url, "main", "desired-state.yml", tmp_path / "mirror", token=TOKEN)
        assert all(TOKEN not in v for v in src.env.values())  # only its base64 form
        with capture_logs() as logs:
            got = src.fetch()
        assert got.revision == sha
        assert TOKEN not in repr(logs)
        assert any(a and a.startswith("Basic ") for a in srv.auth_seen)
        # a wrong token: the same server refuses, with a clear, secret-free error
        wrong = "ghp_wrongTokenAlsoNeverShown_987654321"
        bad = GitSource(url, "main", "desired-state.yml", tmp_path / "mirror2", token=wrong)
        with pytest.raises(SourceRefused) as e:  # permanent: tests/unit/test_git_errors.py
            bad.fetch()
        assert "git fetch of" in str(e.value)
        assert wrong not in str(e.value) and TOKEN not in str(e.value)


def test_token_needs_an_https_url(tmp_path):
    with pytest.raises(ConfigError, match="needs an https URL"):
        GitSource("git@github.com:acme/shop.git", "main", "d.yml", tmp_path / "m", token="t0k3n")


def test_ssh_key_path_is_quoted_for_the_shell_git_runs_it_through(tmp_path):
    src = GitSource("git@example.test:a/b.git", "main", "d.yml", tmp_path / "m",
                    ssh_key_file=tmp_path / "key; touch pwned")
    assert "'" in src.env["GIT_SSH_COMMAND"]
    assert "-o BatchMode=yes" in src.env["GIT_SSH_COMMAND"]


# ---------------------------------------------------------------------------- trust & size
def _keygen(path):
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "t", "-f", str(path)],
                   check=True)
    return path


def test_is_ancestor_answers_from_the_mirror_including_commits_it_no_longer_holds(origin,
                                                                                  tmp_path):
    repo, one = origin
    two = repo.commit_file("desired-state.yml", "version: 1\nservices: {}\n# two\n", "two")
    src = GitSource(str(repo.origin), "main", "desired-state.yml", tmp_path / "mirror")
    src.fetch()
    assert src.is_ancestor(one, two) and src.is_ancestor(two, two)
    assert not src.is_ancestor(two, one)
    assert not src.is_ancestor("0" * 40, two)  # unknown to the mirror: not an ancestor


def test_option_looking_repository_url_is_never_parsed_as_an_option(tmp_path):
    marker = tmp_path / "pwned"
    src = GitSource(f"--upload-pack=touch {marker}", "main", "d.yml", tmp_path / "mirror",
                    timeout=10)
    with pytest.raises(SourceUnavailable):
        src.fetch()
    assert not marker.exists()


def test_desired_state_over_the_size_limit_is_refused_unread(origin, tmp_path):
    from agent.desired import MAX_BYTES

    repo, _ = origin
    # just over the limit: the partial fetch leaves the blob out altogether
    repo.commit_file("desired-state.yml", "#" * (MAX_BYTES + 1), "huge")
    src = GitSource(str(repo.origin), "main", "desired-state.yml", tmp_path / "mirror")
    with pytest.raises(DesiredStateError, match=f"larger than the limit of {MAX_BYTES} bytes"):
        src.fetch()
    # exactly the limit is read
    repo.commit_file("desired-state.yml", "#" * MAX_BYTES, "limit")
    assert len(src.fetch().content) == MAX_BYTES


def _du(path):
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.mark.parametrize("transport", ["path", "http"])
def test_huge_blob_elsewhere_in_the_repository_never_reaches_state_dir(origin, tmp_path,
                                                                       transport):
    import os

    repo, _ = origin
    (repo.work / "big.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    sha = repo.commit_file("desired-state.yml", "version: 1\nservices: {}\n# big\n", "big")
    mirror = tmp_path / "mirror"
    if transport == "path":
        got = GitSource(str(repo.origin), "main", "desired-state.yml", mirror).fetch()
    else:
        with GitHTTPServer(repo.root, None) as srv:
            got = GitSource(srv.url("origin.git"), "main", "desired-state.yml", mirror).fetch()
            assert srv.bytes_sent < 1024 * 1024, srv.bytes_sent
    assert got.revision == sha and b"# big" in got.content
    assert _du(mirror) < 1024 * 1024, _du(mirror)
    # and the mirror holds no URL: nothing is fetched lazily behind the agent's back
    assert str(repo.origin) not in (mirror / "config").read_text()


def _signed_source(repo, tmp_path):
    key = _keygen(tmp_path / "allowed")
    signers = tmp_path / "allowed_signers"
    signers.write_text(f"ci@example.test {(tmp_path / 'allowed.pub').read_text().strip()}\n")
    return key, GitSource(str(repo.origin), "main", "desired-state.yml", tmp_path / "mirror",
                          allowed_signers_file=signers)


def test_commit_signed_by_an_allowed_ssh_key_verifies(origin, tmp_path):
    repo, _ = origin
    key, src = _signed_source(repo, tmp_path)
    repo.commit_file("desired-state.yml", "version: 1\nservices: {}\n# s\n", "s", key)
    assert src.fetch().trust_error is None


def test_openpgp_signed_commit_is_refused_whatever_the_keyring_holds(origin, tmp_path,
                                                                       monkeypatch, request):
    import os
    import subprocess

    repo, _ = origin
    _, src = _signed_source(repo, tmp_path)
    # a real OpenPGP key in the agent's user's keyring, which git would trust on verify
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("GNUPGHOME", str(home))
    request.addfinalizer(lambda: subprocess.run(["gpgconf", "--kill", "all"], check=False,
                                                env={**os.environ, "GNUPGHOME": str(home)}))
    subprocess.run(["gpg", "--batch", "--quiet", "--passphrase", "", "--quick-gen-key",
                    "ci@example.test", "ed25519", "sign", "never"], check=True,
                   capture_output=True)
    (repo.work / "desired-state.yml").write_text("version: 1\nservices: {}\n# pgp\n")
    rig.git("add", "desired-state.yml", cwd=repo.work)
    rig.git("-c", "user.signingkey=ci@example.test", "commit", "--quiet", "-S", "-m", "pgp",
            cwd=repo.work)
    rig.git("push", "--quiet", "origin", "HEAD:main", cwd=repo.work)
    rev = rig.git("rev-parse", "HEAD", cwd=repo.work)
    # git itself would call this a good signature
    assert subprocess.run(["git", "verify-commit", rev], cwd=repo.work,
                          capture_output=True).returncode == 0
    got = src.fetch()
    assert got.trust_error == (
        f"commit {rev[:12]} carries an OpenPGP signature; only SSH signatures by a key in "
        "trust.allowed_signers_file are accepted")
