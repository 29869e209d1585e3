"""The git source against real git: a local bare repo and a token-protected smart-HTTP
server (git http-backend) on 127.0.0.1."""

from __future__ import annotations

import pytest
import rig
from git_http_server import GitHTTPServer
from structlog.testing import capture_logs

from agent.edges.git import GitSource
from agent.errors import ConfigError, DesiredStateError, SourceUnavailable

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
        with pytest.raises(SourceUnavailable) as e:
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
