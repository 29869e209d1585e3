"""The GitHub REST source against a real HTTP fake of the GitHub API on 127.0.0.1."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from github_server import FakeGitHub
from structlog.testing import capture_logs

from agent.config import AgentConfig, parse_config
from agent.edges.github import CACHE_FILE, USER_AGENT, GitHubSource, RateLimited
from agent.errors import ConfigError, DesiredStateError, SourceUnavailable, TransientError
from agent.retry import retry_transient

TOKEN = "ghp_s3cr3tTokenValue0123456789abcdef"
PATH = "desired-state.yml"
V1 = b"version: 1\nservices: {web: {image: a}}\n"
V2 = b"version: 1\nservices: {web: {image: b}}\n"


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def gh() -> Iterator[FakeGitHub]:
    with FakeGitHub(repo="acme/shop", token=TOKEN) as server:
        yield server


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    p = tmp_path / "gh-token"
    p.write_text(TOKEN + "\n")
    p.chmod(0o600)
    return p


def make_cfg(tmp_path: Path, api_url: str, *, token_file: Path | None = None,
             signed: bool = False, signers: Path | None = None, **source: Any) -> AgentConfig:
    data: dict[str, Any] = {
        "source": {"kind": "github", "repo": "acme/shop", "branch": "main", "path": PATH,
                   "api_url": api_url, "timeout_seconds": 5.0, **source},
        "compose": {"project_dir": str(tmp_path / "project")},
        "agent": {"state_dir": str(tmp_path / "state")},
    }
    if token_file is not None:
        data["source"]["token_file"] = str(token_file)
    if signed:
        # without a signers file the github kind takes GitHub's own verification
        data["trust"] = {"require_signed_commits": True}
    if signers is not None:
        data["trust"] = {"require_signed_commits": True, "allowed_signers_file": str(signers)}
    (tmp_path / "state").mkdir(exist_ok=True)
    return parse_config(data)


def make_source(tmp_path: Path, gh: FakeGitHub, token_file: Path | None,
                clock: Clock | None = None, **kw: Any) -> GitHubSource:
    cfg = make_cfg(tmp_path, gh.api_url, token_file=token_file, **kw)
    if clock is not None:
        return GitHubSource.from_config(cfg, clock=clock)
    return GitHubSource.from_config(cfg)


# ---------------------------------------------------------------------------- polling
def test_first_poll_asks_for_the_head_then_the_file_at_that_sha(gh, tmp_path, token_file):
    sha = gh.commit({PATH: V1})
    src = make_source(tmp_path, gh, token_file)

    got = src.fetch()

    assert (got.revision, got.content, got.path) == (sha, V1, PATH)
    assert got.trust_error is None and not got.went_backwards
    head, contents = gh.logged()
    assert head.path == "/repos/acme/shop/commits/main"
    assert head.header("accept") == "application/vnd.github.sha"
    assert head.header("if-none-match") is None
    assert head.status == 200
    assert contents.path == f"/repos/acme/shop/contents/{PATH}"
    assert contents.query == {"ref": sha}
    # JSON: its "size" is checked before the content is decoded
    assert contents.header("accept") == "application/vnd.github+json"
    for r in (head, contents):
        assert r.header("authorization") == f"Bearer {TOKEN}"
        assert r.header("user-agent") == USER_AGENT == "gitops-agent/0.1.0"
        assert r.header("x-github-api-version") == "2022-11-28"
    assert src.requests_made == 2


def test_unchanged_head_is_one_conditional_request_answered_304(gh, tmp_path, token_file):
    sha = gh.commit({PATH: V1})
    src = make_source(tmp_path, gh, token_file)
    first = src.fetch()
    gh.clear_log()

    for _ in range(3):
        again = src.fetch()
        assert again == first

    reqs = gh.logged()
    assert len(reqs) == 3
    assert all(r.endpoint == "commits" and r.status == 304 for r in reqs)
    assert all(r.header("if-none-match") == FakeGitHub.etag_for(sha) for r in reqs)
    assert src.requests_made == 2 + 3


def test_new_head_fetches_the_file_at_exactly_that_sha(gh, tmp_path, token_file):
    gh.commit({PATH: V1})
    src = make_source(tmp_path, gh, token_file)
    src.fetch()
    # a later commit also exists but is not the head: the head is what is fetched
    new = gh.commit({PATH: V2})
    gh.commit({PATH: b"never"}, move_head=False)
    gh.clear_log()

    got = src.fetch()

    assert (got.revision, got.content) == (new, V2)
    head, contents = gh.logged()
    assert head.status == 200 and head.header("if-none-match") is not None
    assert contents.query == {"ref": new}
    # and the next poll is a single 304 again
    gh.clear_log()
    assert src.fetch() == got
    assert [r.status for r in gh.logged()] == [304]


def test_same_sha_behind_a_new_etag_fetches_nothing_more(gh, tmp_path, token_file):
    gh.commit({PATH: V1})
    src = make_source(tmp_path, gh, token_file)
    first = src.fetch()
    src._cache.etag = '"stale"'  # e.g. GitHub rotated its ETag scheme
    gh.clear_log()

    assert src.fetch() == first
    assert [(r.endpoint, r.status) for r in gh.logged()] == [("commits", 200)]


def test_restarted_source_does_one_conditional_request(gh, tmp_path, token_file):
    sha = gh.commit({PATH: V1})
    first = make_source(tmp_path, gh, token_file).fetch()
    cache = json.loads((tmp_path / "state" / CACHE_FILE).read_text())
    assert cache["sha"] == sha and TOKEN not in json.dumps(cache)
    assert os.stat(tmp_path / "state" / CACHE_FILE).st_mode & 0o077 == 0
    gh.clear_log()

    restarted = make_source(tmp_path, gh, token_file)
    got = restarted.fetch()

    assert got == first
    (req,) = gh.logged()
    assert req.endpoint == "commits" and req.status == 304
    assert restarted.requests_made == 1


def test_cache_of_another_source_is_not_used(gh, tmp_path, token_file):
    gh.commit({PATH: V1, "other.yml": V2})
    make_source(tmp_path, gh, token_file).fetch()
    gh.clear_log()

    got = make_source(tmp_path, gh, token_file, path="other.yml").fetch()

    assert got.content == V2
    assert [r.endpoint for r in gh.logged()] == ["commits", "contents"]
    assert gh.logged()[0].header("if-none-match") is None


def test_corrupt_cache_is_ignored(gh, tmp_path, token_file):
    gh.commit({PATH: V1})
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / CACHE_FILE).write_text("{not json")
    with capture_logs() as logs:
        got = make_source(tmp_path, gh, token_file).fetch()
    assert got.content == V1
    assert any(e["event"] == "agent.source.cache_ignored" for e in logs)


def test_github_enterprise_api_prefix_and_a_branch_with_a_slash(tmp_path, token_file):
    with FakeGitHub(repo="acme/shop", branch="release/1.0", prefix="/api/v3",
                    token=TOKEN) as ghe:
        sha = ghe.commit({"deploy/desired-state.yml": V1})
        src = make_source(tmp_path, ghe, token_file, branch="release/1.0",
                          path="deploy/desired-state.yml")
        assert ghe.api_url.endswith("/api/v3")
        got = src.fetch()
        assert (got.revision, got.content) == (sha, V1)
        assert ghe.logged()[0].path == "/repos/acme/shop/commits/release/1.0"
        assert "127.0.0.1" in src.describe() and "release/1.0" in src.describe()


def test_public_repository_without_a_token(tmp_path):
    with FakeGitHub(repo="acme/shop") as public:
        public.commit({PATH: V1})
        got = make_source(tmp_path, public, None).fetch()
        assert got.content == V1
        assert all(r.header("authorization") is None for r in public.logged())


# ---------------------------------------------------------------------------- errors
def test_missing_file_at_the_sha_is_a_desired_state_error(gh, tmp_path, token_file):
    sha = gh.commit({"elsewhere.yml": V1})
    src = make_source(tmp_path, gh, token_file)
    with pytest.raises(DesiredStateError) as e:
        src.fetch()
    assert str(e.value) == f"{PATH}@{sha[:12]}: no file {PATH!r} at revision {sha[:12]}"
    assert [(r.endpoint, r.status) for r in gh.logged()] == [("commits", 200), ("contents", 404)]

    # while that head stays, one conditional request per poll
    gh.clear_log()
    with pytest.raises(DesiredStateError, match=sha[:12]):
        src.fetch()
    assert [(r.endpoint, r.status) for r in gh.logged()] == [("commits", 304)]

    # a fixed head is fetched
    good = gh.commit({PATH: V1})
    got = src.fetch()
    assert (got.revision, got.content) == (good, V1)


def test_a_head_without_the_file_after_a_good_one(gh, tmp_path, token_file):
    good = gh.commit({PATH: V1})
    src = make_source(tmp_path, gh, token_file)
    src.fetch()
    bad = gh.commit({"elsewhere.yml": V1})
    for _ in range(2):
        with pytest.raises(DesiredStateError, match=bad[:12]):
            src.fetch()
    gh.set_head(good)  # reverted: the cached content serves it without a contents request
    gh.clear_log()
    got = src.fetch()
    assert (got.revision, got.content) == (good, V1)
    assert [(r.endpoint, r.status) for r in gh.logged()] == [("commits", 200)]


def test_server_errors_are_source_unavailable_and_retried(gh, tmp_path, token_file):
    gh.commit({PATH: V1})
    src = make_source(tmp_path, gh, token_file)
    gh.fail(502)
    with pytest.raises(SourceUnavailable, match="answered 502") as e:
        src.fetch()
    assert not isinstance(e.value, RateLimited)

    gh.fail(503, count=2)  # the reconcile's retry policy gets through
    got = retry_transient(src.fetch, event="agent.fetch", retry_on=SourceUnavailable)
    assert got.content == V1
    assert [r.status for r in gh.logged()][-4:] == [503, 503, 200, 200]


def test_unreachable_and_slow_api_are_source_unavailable(gh, tmp_path, token_file):
    gh.commit({PATH: V1})
    cfg = make_cfg(tmp_path, "http://127.0.0.1:1", token_file=token_file)
    with pytest.raises(SourceUnavailable, match="unreachable"):
        GitHubSource.from_config(cfg).fetch()

    slow = make_source(tmp_path, gh, token_file, timeout_seconds=0.2)
    gh.set_delay(1.0)
    with pytest.raises(SourceUnavailable, match="did not answer within 0.2s"):
        slow.fetch()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("bad-token", r"refused access to acme/shop \(401 Bad credentials\).*source\.token_file"),
        ("no-repo", r"repository acme/nope not found .*check source\.repo"),
        ("no-branch", r"branch 'nope' not found in GitHub repository acme/shop.*source\.branch"),
    ],
)
def test_auth_and_naming_errors_are_config_errors_that_say_what_to_fix(gh, tmp_path, token_file, case, expected):
    gh.commit({PATH: V1})
    if case == "bad-token":
        token_file.write_text("ghp_wrongwrongwrong")
        src = make_source(tmp_path, gh, token_file)
    elif case == "no-repo":
        src = make_source(tmp_path, gh, token_file, repo="acme/nope")
    else:
        src = make_source(tmp_path, gh, token_file, branch="nope")
    kind = SourceUnavailable if case == "no-branch" else ConfigError
    with capture_logs() as logs, pytest.raises(kind, match=expected) as e:
        src.fetch()
    assert "ghp_" not in str(e.value) and TOKEN not in repr(logs)
    # a configuration problem is not retried as an outage
    requests_before = gh.count()
    with pytest.raises(kind):
        retry_transient(src.fetch, event="agent.fetch", retry_on=SourceUnavailable)
    assert gh.count() - requests_before == (4 if kind is SourceUnavailable else 1)


def test_forbidden_without_rate_limit_is_a_config_error_naming_the_token(gh, tmp_path,
                                                                          token_file):
    gh.commit({PATH: V1})
    gh.fail(403)
    src = make_source(tmp_path, gh, token_file)
    with pytest.raises(ConfigError, match="forbids reading acme/shop.*Contents: read") as e:
        src.fetch()
    assert str(e.value).startswith("source.token_file: ")


# ---------------------------------------------------------------------------- rate limits
@pytest.mark.parametrize(("status", "reason"), [(403, "primary rate limit"),
                                                (429, "retry-after")])
def test_rate_limited_waits_without_sending_anything(gh, tmp_path, token_file, status, reason):
    gh.commit({PATH: V1})
    clock = Clock()
    src = make_source(tmp_path, gh, token_file, clock=clock)
    first = src.fetch()
    gh.rate_limit(status=status, seconds=600)
    clock.now = time.time()  # the reset is an epoch: compare with real time
    gh.clear_log()

    with capture_logs() as logs, pytest.raises(RateLimited) as e:
        src.fetch()
    assert 590 <= e.value.retry_after_seconds <= 602
    # transient, but not retried by the pass's policy (retry_on=SourceUnavailable)
    assert isinstance(e.value, TransientError) and not isinstance(e.value, SourceUnavailable)
    (event,) = [x for x in logs if x["event"] == "agent.source.rate_limited"]
    assert event["log_level"] == "warning" and reason in event["reason"]
    assert 590 <= event["wait_seconds"] <= 602
    assert gh.count() == 1

    # until the wait has elapsed: no request at all, and the reconcile's retry policy does
    # not retry it (no retry noise): it is waited out once
    clock.now += 300
    with pytest.raises(RateLimited) as again:
        src.fetch()
    assert 290 <= again.value.retry_after_seconds <= 302
    assert "rate limit" in str(again.value)
    with capture_logs() as logs, pytest.raises(RateLimited):
        retry_transient(src.fetch, event="agent.fetch", retry_on=SourceUnavailable)
    assert [x["event"] for x in logs] == []
    # a restarted daemon honours the same wait
    with pytest.raises(RateLimited):
        make_source(tmp_path, gh, token_file, clock=clock).fetch()
    assert gh.count() == 1

    # after the reset: one conditional request, answered 304
    gh.clear_rate_limit()
    clock.now += 400
    assert src.fetch() == first
    assert [r.status for r in gh.logged()] == [status, 304]


def test_rate_limit_on_the_first_ever_poll_is_kept_across_a_restart(gh, tmp_path, token_file):
    gh.commit({PATH: V1})
    gh.rate_limit(status=429, seconds=30)
    clock = Clock()
    with pytest.raises(RateLimited, match="rate limit"):
        make_source(tmp_path, gh, token_file, clock=clock).fetch()
    with pytest.raises(RateLimited):
        make_source(tmp_path, gh, token_file, clock=clock).fetch()
    assert gh.count() == 1
    gh.clear_rate_limit()
    clock.now += 31
    assert make_source(tmp_path, gh, token_file, clock=clock).fetch().content == V1


def test_a_reset_far_in_the_future_is_capped_at_an_hour(gh, tmp_path, token_file):
    gh.commit({PATH: V1})
    gh.rate_limit(status=403, seconds=86400)  # e.g. the host's clock is a day behind
    with pytest.raises(RateLimited) as e:
        make_source(tmp_path, gh, token_file, clock=Clock(time.time())).fetch()
    assert e.value.retry_after_seconds == 3600


# ---------------------------------------------------------------------------- auth & secrets
def test_authorization_goes_only_to_the_configured_host(gh, tmp_path, token_file):
    sha = gh.commit({PATH: V1})
    with FakeGitHub(repo="acme/shop", host="localhost") as other:
        other.commit({PATH: V1}, sha=sha)
        gh.redirect_contents(other.base_url)
        assert other.base_url.startswith("http://localhost:")

        got = make_source(tmp_path, gh, token_file).fetch()

        assert got.content == V1
        assert [(r.endpoint, r.status) for r in gh.logged()] == [("commits", 200),
                                                                 ("contents", 302)]
        assert all(r.header("authorization") == f"Bearer {TOKEN}" for r in gh.logged())
        (followed,) = other.logged()
        assert followed.endpoint == "contents" and followed.query == {"ref": sha}
        assert followed.header("authorization") is None
        assert TOKEN not in json.dumps(followed.headers)


def test_group_readable_token_file_is_refused(gh, tmp_path, token_file):
    token_file.chmod(0o644)
    with pytest.raises(ConfigError) as e:
        make_source(tmp_path, gh, token_file)
    msg = str(e.value)
    assert "source.token_file" in msg and "0644" in msg and f"chmod 600 {token_file}" in msg
    assert TOKEN not in msg


def test_token_never_appears_in_logs_or_errors(gh, tmp_path, token_file):
    gh.commit({PATH: V1})
    clock = Clock(time.time())
    texts: list[str] = []
    with capture_logs() as logs:
        src = make_source(tmp_path, gh, token_file, clock=clock)
        src.fetch()
        for mode in ("5xx", "rate", "404"):
            if mode == "5xx":
                gh.fail(500, count=1)
            elif mode == "rate":
                gh.rate_limit(seconds=5)
            else:
                gh.clear_rate_limit()
                clock.now += 10
                gh.set_head("f" * 40)  # a head without the file
            try:
                src.fetch()
            except Exception as e:  # noqa: BLE001
                texts += [str(e), repr(e)]
        structlog.get_logger().info("probe", source=src.describe())
    assert len(texts) == 6
    everything = "\n".join(texts) + repr(logs) + (tmp_path / "state" / CACHE_FILE).read_text()
    assert TOKEN not in everything
    assert TOKEN not in src.describe() and TOKEN not in repr(vars(src).get("_session"))


# ---------------------------------------------------------------------------- trust
def test_unverified_head_sets_trust_error_when_signed_commits_are_required(
    gh, tmp_path, token_file
):
    sha = gh.commit({PATH: V1}, verified=False, reason="unsigned")
    src = make_source(tmp_path, gh, token_file, signed=True)

    got = src.fetch()

    assert got.trust_error == f"commit {sha[:12]} is not verified by GitHub (reason: unsigned)"
    assert got.revision == sha
    verify = [r for r in gh.logged() if r.path == f"/repos/acme/shop/commits/{sha}"]
    assert len(verify) == 1 and "json" in (verify[0].header("accept") or "")
    # the verdict is kept with the cache: an unchanged head costs one 304
    gh.clear_log()
    assert src.fetch().trust_error == got.trust_error
    assert [r.status for r in gh.logged()] == [304]
    restarted = make_source(tmp_path, gh, token_file, signed=True)
    assert restarted.fetch().trust_error == got.trust_error

    # a verified new head is accepted
    good = gh.commit({PATH: V2}, verified=True)
    got2 = src.fetch()
    assert (got2.revision, got2.content, got2.trust_error) == (good, V2, None)


def test_verification_is_not_asked_unless_required(gh, tmp_path, token_file):
    gh.commit({PATH: V1}, verified=False)
    got = make_source(tmp_path, gh, token_file).fetch()
    assert got.trust_error is None
    assert [r.endpoint for r in gh.logged()] == ["commits", "contents"]
    assert gh.logged()[0].path == "/repos/acme/shop/commits/main"


def test_turning_on_signed_commits_reverifies_the_cached_head(gh, tmp_path, token_file):
    sha = gh.commit({PATH: V1}, verified=False, reason="unknown_key")
    assert make_source(tmp_path, gh, token_file).fetch().trust_error is None
    got = make_source(tmp_path, gh, token_file, signed=True).fetch()
    assert got.trust_error == f"commit {sha[:12]} is not verified by GitHub (reason: unknown_key)"
