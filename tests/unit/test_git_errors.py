"""What a failed git fetch means, against real git: local bare repos, the token-protected
smart-HTTP server (git http-backend) and a bare HTTP server answering one status. A host
that refuses (no such repository or branch, credentials refused) is permanent -- stalled,
exit 2, never retried, reported once; unreachable hosts and 5xx stay transient. The error
keeps git's whole stderr, with credentials redacted."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rig
from fakes import FakeCompose, FakeEngine
from git_http_server import GitHTTPServer
from structlog.testing import capture_logs

from agent import retry
from agent.config import parse_config
from agent.edges.git import GitSource, classify_fetch_error
from agent.errors import (
    GitError,
    InvalidInput,
    SourceNotFound,
    SourceRefused,
    SourceUnavailable,
    TransientError,
)
from agent.outcomes import EXIT_INVALID, EXIT_TRANSIENT, disposition
from agent.reconcile import Reconciler

TOKEN = "ghp_gitErrorsTokenNeverShown_0123456789"


@pytest.fixture
def origin(tmp_path: Path) -> rig.GitRepo:
    repo = rig.GitRepo(tmp_path / "git").init()
    repo.commit_file("desired-state.yml", "version: 1\nservices: {}\n", "one")
    return repo


@pytest.fixture
def status_server() -> Iterator[Any]:
    """An HTTP server answering every request with one status (set on the server)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(self.server.status)  # type: ignore[attr-defined]
            self.send_header("Content-Length", "0")
            self.end_headers()

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.status = 500  # type: ignore[attr-defined]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _src(url: str, tmp_path: Path, branch: str = "main", **kw: Any) -> GitSource:
    return GitSource(url, branch, "desired-state.yml", tmp_path / "mirror", timeout=20, **kw)


# --------------------------------------------------------------------------- refused: permanent
def test_missing_local_repository_is_source_not_found_naming_source_repo(tmp_path):
    with pytest.raises(SourceNotFound) as ei:
        _src(str(tmp_path / "nope.git"), tmp_path).fetch()
    e = ei.value
    assert isinstance(e, InvalidInput) and not isinstance(e, TransientError)
    assert e.source == "source.repo"
    # the whole stderr: the cause (first line) and git's advice (last), not only the last
    assert "does not appear to be a git repository" in str(e)
    assert "and the repository exists" in str(e)
    assert "\n" not in str(e)  # one line
    assert "\n" in e.stderr and "does not appear to be a git repository" in e.stderr
    assert disposition(e).outcome == "invalid" and disposition(e).exit_code == EXIT_INVALID


def test_missing_branch_is_source_not_found_naming_source_branch(origin, tmp_path):
    with pytest.raises(SourceNotFound) as ei:
        _src(str(origin.origin), tmp_path, branch="no-such-branch").fetch()
    assert ei.value.source == "source.branch"
    assert "couldn't find remote ref refs/heads/no-such-branch" in str(ei.value)
    assert "check source.branch" in str(ei.value)


def test_missing_repository_over_http_is_source_not_found(origin, tmp_path):
    with GitHTTPServer(origin.root, TOKEN) as srv:
        with pytest.raises(SourceNotFound) as ei:
            _src(srv.url("nope.git"), tmp_path, token=TOKEN).fetch()
    assert ei.value.source == "source.repo"
    assert "repository 'http://127.0.0.1:" in str(ei.value) and "not found" in str(ei.value)


def test_missing_branch_over_http_is_source_not_found(origin, tmp_path):
    with GitHTTPServer(origin.root, TOKEN) as srv:
        with pytest.raises(SourceNotFound) as ei:
            _src(srv.url("origin.git"), tmp_path, branch="gone", token=TOKEN).fetch()
    assert ei.value.source == "source.branch"


def test_wrong_token_is_refused_naming_the_token_file_and_never_showing_a_token(
        origin, tmp_path):
    wrong = "ghp_wrongTokenNeverShownEither_987654321"
    with GitHTTPServer(origin.root, TOKEN) as srv:
        with capture_logs() as logs, pytest.raises(SourceRefused) as ei:
            _src(srv.url("origin.git"), tmp_path, token=wrong).fetch()
    e = ei.value
    assert not isinstance(e, SourceNotFound)
    assert e.source == "source.token_file"
    assert "refused the credentials" in str(e)
    assert wrong not in str(e) and wrong not in e.stderr and TOKEN not in str(e)
    assert wrong not in repr(logs)


def test_no_credentials_for_a_protected_repository_is_refused(origin, tmp_path):
    with GitHTTPServer(origin.root, TOKEN) as srv:
        with pytest.raises(SourceRefused) as ei:
            _src(srv.url("origin.git"), tmp_path).fetch()
    assert "set source.token_file" in str(ei.value)


def test_credentials_in_the_url_are_redacted_from_the_error(origin, tmp_path):
    with GitHTTPServer(origin.root, TOKEN) as srv:
        url = srv.url("nope.git").replace("http://", f"http://bot:{TOKEN}@")
        with pytest.raises(SourceRefused) as ei:
            _src(url, tmp_path).fetch()
    assert TOKEN not in str(ei.value) and TOKEN not in ei.value.stderr
    assert "http://***@127.0.0.1:" in str(ei.value)


@pytest.mark.parametrize("status,kind", [
    (401, SourceRefused), (403, SourceRefused), (404, SourceNotFound),
])
def test_http_401_403_404_are_refusals(status_server, tmp_path, status, kind):
    status_server.status = status
    url = f"http://127.0.0.1:{status_server.server_address[1]}/shop.git"
    with pytest.raises(kind):
        _src(url, tmp_path).fetch()


@pytest.mark.parametrize("stderr,kind", [
    # what GitHub, GitLab and Bitbucket print over ssh and https
    ("ERROR: Repository not found.\nfatal: Could not read from remote repository.\n\n"
     "Please make sure you have the correct access rights\nand the repository exists.", "repo"),
    ("remote: Repository not found.\nfatal: repository 'https://github.com/a/b.git/' "
     "not found", "repo"),
    ("git@github.com: Permission denied (publickey).\nfatal: Could not read from remote "
     "repository.", "auth"),
    ("remote: Invalid username or password.\nfatal: Authentication failed for "
     "'https://github.com/a/b.git/'", "auth"),
    ("fatal: unable to access 'https://h/a.git/': The requested URL returned error: 403",
     "auth"),
    ("warning: Remote branch nope not found in upstream origin", "branch"),
    ("fatal: couldn't find remote ref refs/heads/nope", "branch"),
    # transient: unreachable, timed out, server errors -- and the generic advice alone
    ("ssh: connect to host h port 22: Connection refused\nfatal: Could not read from remote "
     "repository.\n\nPlease make sure you have the correct access rights\n"
     "and the repository exists.", None),
    ("fatal: unable to access 'https://h/a.git/': The requested URL returned error: 502",
     None),
    ("fatal: unable to access 'https://h/a.git/': Could not resolve host: h", None),
])
def test_git_stderr_is_classified_by_its_cause_not_its_generic_advice(stderr, kind):
    assert classify_fetch_error(stderr) == kind


# --------------------------------------------------------------------------- transient
def test_http_5xx_stays_transient_with_the_whole_stderr(status_server, tmp_path):
    status_server.status = 503
    url = f"http://127.0.0.1:{status_server.server_address[1]}/shop.git"
    with pytest.raises(SourceUnavailable) as ei:
        _src(url, tmp_path).fetch()
    assert "returned error: 503" in str(ei.value)
    assert disposition(ei.value).exit_code == EXIT_TRANSIENT


def test_unreachable_host_stays_transient(tmp_path):
    url = f"http://127.0.0.1:{rig.free_port()}/shop.git"
    with pytest.raises(SourceUnavailable, match="Failed to connect|Couldn't connect"):
        _src(url, tmp_path).fetch()


def test_git_error_message_keeps_every_line_of_stderr():
    e = GitError(["git", "merge-base"], 128, "fatal: first cause\nhint: advice\n\nlast\n")
    assert str(e) == "git exited 128: fatal: first cause | hint: advice | last"
    assert e.stderr.startswith("fatal: first cause\n")


# --------------------------------------------------------------------------- the pass
class CountingGitSource(GitSource):
    fetches = 0

    def fetch(self):  # type: ignore[no-untyped-def]
        self.fetches += 1
        return super().fetch()


def _reconciler(tmp: Path, source: GitSource) -> Reconciler:
    cfg = parse_config({
        "source": {"repo": source.repo, "branch": source.branch},
        "compose": {"project_dir": str(tmp / "project"), "project_name": "shop"},
        "agent": {"state_dir": str(tmp / "state")},
    })
    engine = FakeEngine()
    return Reconciler(cfg, source=source, engine=engine,
                      compose=FakeCompose(engine, model={}), sleep=lambda _s: None)


def _events(logs: list[dict[str, Any]], level: str | None = None) -> list[str]:
    return [e["event"] for e in logs if level is None or e["log_level"] == level]


def test_a_refusing_host_is_not_retried_stalls_the_pass_and_is_reported_once(
        origin, tmp_path):
    src = CountingGitSource(str(origin.root / "missing.git"), "main", "desired-state.yml",
                            tmp_path / "state" / "mirror")
    rec = _reconciler(tmp_path, src)
    with capture_logs() as first:
        result = rec.run_pass()
    assert (result.outcome, result.exit_code) == ("invalid", EXIT_INVALID)
    assert isinstance(result.error, SourceNotFound)
    assert src.fetches == 1  # not retried: the retry policy retries only transient errors
    assert not [e for e in _events(first) if e.endswith("retry_scheduled")]
    assert _events(first, "error") == ["agent.desired.invalid"]
    [invalid] = [e for e in first if e["event"] == "agent.desired.invalid"]
    assert invalid["kind"] == "SourceNotFound" and "source.repo" in invalid["error"]
    # the same refusal at every later poll: no error storm, nothing above debug
    for _ in range(3):
        with capture_logs() as again:
            assert rec.run_pass().outcome == "invalid"
        assert _events(again, "error") == [] and _events(again, "info") == []
        assert {"agent.desired.invalid", "agent.pass.completed"} <= set(_events(again, "debug"))
    assert src.fetches == 4
    # a different error is reported again
    src.branch = "other"
    with capture_logs() as changed:
        rec.run_pass()
    assert _events(changed, "error") == ["agent.desired.invalid"]


def test_a_transient_fetch_failure_is_still_retried(status_server, tmp_path):
    status_server.status = 500
    url = f"http://127.0.0.1:{status_server.server_address[1]}/shop.git"
    src = CountingGitSource(url, "main", "desired-state.yml", tmp_path / "state" / "mirror",
                            timeout=20)
    rec = _reconciler(tmp_path, src)
    was_fast = retry.is_fast()
    retry.set_fast(True)
    try:
        with capture_logs() as logs:
            result = rec.run_pass()
    finally:
        retry.set_fast(was_fast)
    assert (result.outcome, result.exit_code) == ("error", EXIT_TRANSIENT)
    assert src.fetches == retry.ATTEMPTS
    assert "agent.fetch.retry_scheduled" in _events(logs)
