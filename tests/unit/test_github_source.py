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
from github_server import FakeGitHub, signed_from_git
from structlog.testing import capture_logs

from agent.config import AgentConfig, parse_config
from agent.edges.github import (
    CACHE_FILE,
    USER_AGENT,
    GitHubSource,
    RateLimited,
    SourceCache,
    classify,
)
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


# ---------------------------------------------------------------------------- classify
NOW = 1_700_000_000.0
RECORDED = [
    # (what GitHub answered, status, headers, body) -> kind, wait
    ("head sha", 200, {"ETag": 'W/"abc"'}, b"0123456789abcdef0123456789abcdef01234567",
     "ok", None),
    ("unchanged head", 304, {"ETag": 'W/"abc"'}, b"", "not_modified", None),
    ("primary limit", 403, {"x-ratelimit-limit": "60", "x-ratelimit-remaining": "0",
                            "x-ratelimit-reset": str(int(NOW) + 120)},
     b'{"message":"API rate limit exceeded for 203.0.113.7.","documentation_url":'
     b'"https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting"}',
     "rate_limited", 121.0),
    ("secondary limit, retry-after", 403, {"retry-after": "30"},
     b'{"message":"You have exceeded a secondary rate limit."}', "rate_limited", 30.0),
    ("secondary limit, no header", 403, {},
     b'{"message":"You have exceeded a secondary rate limit. Please wait a few minutes."}',
     "rate_limited", 60.0),
    ("429", 429, {"retry-after": "5"}, b"", "rate_limited", 5.0),
    ("reset a day away", 403, {"x-ratelimit-remaining": "0",
                               "x-ratelimit-reset": str(int(NOW) + 86400)},
     b'{"message":"API rate limit exceeded"}', "rate_limited", 3600.0),
    ("bad token", 401, {}, b'{"message":"Bad credentials","status":"401"}',
     "unauthorized", None),
    ("no permission", 403, {"x-ratelimit-remaining": "4999"},
     b'{"message":"Resource not accessible by personal access token"}', "forbidden", None),
    ("sso", 403, {}, b'{"message":"Resource protected by organization SAML enforcement."}',
     "forbidden", None),
    ("no repo", 404, {}, b'{"message":"Not Found"}', "not_found", None),
    ("no branch", 422, {}, b'{"message":"No commit found for SHA: nope"}',
     "unprocessable", None),
    ("empty repo", 409, {}, b'{"message":"Git Repository is empty."}', "empty_repo", None),
    ("outage", 502, {}, b"<html>Bad Gateway</html>", "server_error", None),
    ("teapot", 418, {}, b"", "unexpected", None),
]


@pytest.mark.parametrize(("what", "status", "headers", "body", "kind", "wait"), RECORDED,
                         ids=[r[0] for r in RECORDED])
def test_classify_sorts_recorded_github_answers_by_cause(what, status, headers, body, kind,
                                                         wait):
    got = classify(status, headers, body, now=NOW)
    assert (got.kind, got.status, got.wait_seconds) == (kind, status, wait)
    if status in (401, 404, 422):
        assert got.message == json.loads(body)["message"]


def test_a_stored_rate_limit_wait_is_capped_when_loaded(gh, tmp_path, token_file):
    gh.commit({PATH: V1})
    clock = Clock()
    make_source(tmp_path, gh, token_file, clock=clock).fetch()
    cache = tmp_path / "state" / CACHE_FILE
    data = json.loads(cache.read_text())
    data["blocked_until"] = clock.now + 10 * 365 * 86400  # the clock stepped back ten years
    cache.write_text(json.dumps(data))
    with pytest.raises(RateLimited) as e:
        make_source(tmp_path, gh, token_file, clock=clock).fetch()
    assert e.value.retry_after_seconds == 3600
    clock.now += 3601
    assert make_source(tmp_path, gh, token_file, clock=clock).fetch().content == V1


def test_a_rate_limit_wait_is_capped_again_when_the_clock_steps_back_in_a_running_process(
        gh, tmp_path, token_file):
    gh.commit({PATH: V1})
    clock = Clock()
    src = make_source(tmp_path, gh, token_file, clock=clock)
    src.fetch()
    gh.rate_limit(status=429, seconds=600)
    clock.now = time.time()
    with pytest.raises(RateLimited):
        src.fetch()
    clock.now -= 10 * 365 * 86400  # NTP steps the clock back ten years under the daemon
    with capture_logs() as logs, pytest.raises(RateLimited) as e:
        src.fetch()
    assert e.value.retry_after_seconds == 3600
    assert [x["event"] for x in logs if x["event"].endswith("wait_capped")] == [
        "agent.source.rate_limit_wait_capped"]
    gh.clear_rate_limit()
    clock.now += 3601
    assert src.fetch().content == V1


def test_cache_is_a_validated_model_and_a_bad_sha_in_it_is_ignored(gh, tmp_path, token_file):
    gh.commit({PATH: V1})
    make_source(tmp_path, gh, token_file).fetch()
    cache = tmp_path / "state" / CACHE_FILE
    loaded = SourceCache.model_validate_json(cache.read_bytes())
    assert loaded.content == V1 and loaded.key is not None and loaded.key.repo == "acme/shop"
    data = json.loads(cache.read_text())
    data["sha"] = "not-a-sha"
    cache.write_text(json.dumps(data))
    with capture_logs() as logs:
        assert make_source(tmp_path, gh, token_file).fetch().content == V1
    assert any(e["event"] == "agent.source.cache_ignored" for e in logs)


# ---------------------------------------------------------------------------- size
def test_file_over_the_size_limit_is_refused_from_its_size_and_never_cached(gh, tmp_path,
                                                                            token_file):
    from agent.desired import MAX_BYTES

    good = gh.commit({PATH: V1})
    src = make_source(tmp_path, gh, token_file)
    src.fetch()
    for size in (MAX_BYTES + 1, 2 * 1024 * 1024):  # inline, and over GitHub's 1 MB inline
        huge = gh.commit({PATH: b"#" * size})
        with pytest.raises(DesiredStateError, match=f"larger than the limit of {MAX_BYTES}"):
            src.fetch()
        cached = SourceCache.model_validate_json((tmp_path / "state" / CACHE_FILE).read_bytes())
        assert cached.sha == good and cached.content == V1 and huge != good


# ---------------------------------------------------------------------------- ancestry
def test_is_ancestor_asks_the_compare_api(gh, tmp_path, token_file):
    one = gh.commit({PATH: V1})
    two = gh.commit({PATH: V2})
    side = gh.commit({PATH: V2}, parents=[one], move_head=False)
    src = make_source(tmp_path, gh, token_file)
    gh.clear_log()
    assert src.is_ancestor(one, two)  # ahead
    assert not src.is_ancestor(two, one)  # behind
    assert not src.is_ancestor(two, side)  # diverged
    assert not src.is_ancestor(two, "f" * 40)  # unknown to GitHub: 404
    assert src.is_ancestor(two, two)  # identical: nothing asked
    reqs = gh.logged()
    assert [r.path for r in reqs][0] == f"/repos/acme/shop/compare/{one}...{two}"
    assert [r.status for r in reqs] == [200, 200, 200, 404]
    assert all(r.header("authorization") == f"Bearer {TOKEN}" for r in reqs)


# ---------------------------------------------------------------------------- allowed signers
def _keygen(path: Path) -> Path:
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "t", "-f", str(path)],
                   check=True)
    return path


@pytest.fixture
def signing(tmp_path):
    """A real git repository to make real signed commits in, an allowed key, another key."""
    import rig

    repo = rig.GitRepo(tmp_path / "git").init()
    allowed, other = _keygen(tmp_path / "allowed"), _keygen(tmp_path / "other")
    signers = tmp_path / "allowed_signers"
    signers.write_text(f"ci@example.test {(tmp_path / 'allowed.pub').read_text().strip()}\n")

    def commit(gh, content: bytes, key: Path | None, **kw):
        repo.commit_file(PATH, content.decode(), "deploy", key)
        sha, sig, payload = signed_from_git(repo.work)
        return gh.commit({PATH: content}, sha=sha, signature=sig, payload=payload, **kw)

    return repo, allowed, other, signers, commit


def test_signature_from_an_allowed_signer_is_verified_locally(gh, tmp_path, token_file,
                                                               signing):
    _, allowed, _, signers, commit = signing
    # GitHub says unverified (the key is not on any GitHub account): the local file decides
    sha = commit(gh, V1, allowed, verified=False, reason="unknown_key")
    got = make_source(tmp_path, gh, token_file, signers=signers).fetch()
    assert (got.revision, got.content, got.trust_error) == (sha, V1, None)


@pytest.mark.parametrize("case", ["other-key", "unsigned", "web-flow-verified-unsigned"])
def test_github_verified_is_not_enough_with_an_allowed_signers_file(gh, tmp_path, token_file,
                                                                    signing, case):
    _, _, other, signers, commit = signing
    key = other if case == "other-key" else None
    sha = commit(gh, V1, key, verified=True)  # GitHub calls it verified either way
    got = make_source(tmp_path, gh, token_file, signers=signers).fetch()
    expected = ("has no valid signature from an allowed signer" if case == "other-key"
                else "is not signed")
    assert got.trust_error is not None and expected in got.trust_error
    assert got.trust_error.startswith(f"commit {sha[:12]}")
    # untrusted content is neither fetched nor cached
    assert got.content == b"" and gh.count("contents") == 0
    cached = SourceCache.model_validate_json((tmp_path / "state" / CACHE_FILE).read_bytes())
    assert cached.content == b""


def test_pgp_signature_is_refused_with_an_allowed_signers_file(gh, tmp_path, token_file,
                                                               signing):
    _, _, _, signers, _ = signing
    pgp = ("-----BEGIN PGP SIGNATURE-----\n\niHUEABYKAB0WIQ==\n=abcd\n"
           "-----END PGP SIGNATURE-----\n")
    sha = gh.commit({PATH: V1}, signature=pgp, payload="tree x\n\nmsg\n", verified=True)
    got = make_source(tmp_path, gh, token_file, signers=signers).fetch()
    assert got.trust_error == (
        f"commit {sha[:12]} does not carry an SSH signature; only SSH signatures by a key in "
        "trust.allowed_signers_file are accepted")


def test_a_valid_signature_of_another_commit_is_refused(gh, tmp_path, token_file, signing):
    repo, allowed, _, signers, commit = signing
    signed = commit(gh, V1, allowed, move_head=False)
    # the host serves that good signature and payload for a different commit
    sig, payload = gh.repo().signatures[signed]
    sha = gh.commit({PATH: V2}, signature=sig, payload=payload)
    got = make_source(tmp_path, gh, token_file, signers=signers).fetch()
    assert got.revision == sha and sha != signed
    assert got.trust_error is not None and "is not that commit" in got.trust_error
    # and an answer about another SHA than the one asked for is refused
    good = commit(gh, V2, allowed)
    gh.answer_sha[good] = signed
    got = make_source(tmp_path, gh, token_file, signers=signers).fetch()
    assert got.revision == good and "when asked for" in (got.trust_error or "")


def test_unreadable_allowed_signers_file_is_a_config_error(gh, tmp_path, token_file):
    with pytest.raises(ConfigError, match="trust.allowed_signers_file: cannot read"):
        make_source(tmp_path, gh, token_file, signers=tmp_path / "missing")


# ---------------------------------------------------------------------------- from_repo
def test_read_files_reads_a_tree_of_paths_at_the_revision(gh, tmp_path, token_file):
    from agent.errors import StackFilesError

    sha = gh.commit({PATH: V1, "compose.yml": b"services: {}\n", "conf/a.conf": b"a\n",
                     "conf/sub/b.conf": b"b\n", "other.txt": b"not asked for"})
    src = make_source(tmp_path, gh, token_file)
    src.fetch()
    gh.clear_log()
    got = src.read_files(sha, ["compose.yml", "conf/"])
    assert got == {"compose.yml": b"services: {}\n", "conf/a.conf": b"a\n",
                   "conf/sub/b.conf": b"b\n"}
    paths = [r.path for r in gh.logged()]
    assert paths[0] == f"/repos/acme/shop/git/trees/{sha}" and len(paths) == 4  # tree + 3
    with pytest.raises(StackFilesError, match="'missing/' is not in the repository"):
        src.read_files(sha, ["compose.yml", "missing/"])


def test_read_files_refuses_a_file_over_the_limit_unread(gh, tmp_path, token_file):
    from agent.errors import StackFilesError

    sha = gh.commit({PATH: V1, "conf/big.bin": b"x" * (256 * 1024 + 1)})
    src = make_source(tmp_path, gh, token_file)
    gh.clear_log()
    with pytest.raises(StackFilesError, match="'conf/big.bin' is larger than the limit"):
        src.read_files(sha, ["conf/"])
    assert [r.path for r in gh.logged()] == [f"/repos/acme/shop/git/trees/{sha}"]


# ---------------------------------------------------------------------------- signed trees
# With signed commits required, every file is read from the blobs of the signed commit's
# tree, each tree and blob checked against its git object name: a lying API can't deploy.
@pytest.fixture
def signed_repo(signing):
    """Real signed commits of several files, served by the fake GitHub as git made them
    (so the root tree the signed payload names is the fake's)."""
    import rig

    repo, allowed, _, signers, _ = signing

    def commit(gh, files: dict[str, bytes], key: Path | None = allowed, **kw) -> str:
        for p, c in files.items():
            (repo.work / p).parent.mkdir(parents=True, exist_ok=True)
            (repo.work / p).write_bytes(c)
        rig.git("add", "-A", cwd=repo.work)
        sign = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", "commit", "-S"]
        rig.git(*sign, "--quiet", "--allow-empty", "-m", "deploy", cwd=repo.work)
        sha, sig, payload = signed_from_git(repo.work)
        tracked = rig.git("ls-files", cwd=repo.work).splitlines()
        return gh.commit({p: (repo.work / p).read_bytes() for p in tracked}, sha=sha,
                         signature=sig, payload=payload, **kw)

    return signers, commit


STACK = {PATH: V1, "compose.yml": b"services: {}\n", "conf/app.conf": b"level=info\n",
         "conf/sub/b.conf": b"b\n", "README": b"not deployed\n"}
FROM_REPO = ["compose.yml", "conf/"]


def _kinds(gh: FakeGitHub) -> list[str]:
    """The requests logged, by what they asked for."""
    out = []
    for r in gh.logged():
        rest = r.path.split("/", 4)[4]
        kind = rest.split("/")[0] if not rest.startswith("git/") else rest.split("/")[1]
        out.append(f"{kind}{'?recursive' if r.query.get('recursive') else ''}")
    return out


def test_signed_head_is_read_from_the_blobs_of_its_signed_tree_never_the_contents_api(
        gh, tmp_path, token_file, signed_repo):
    signers, commit = signed_repo
    sha = commit(gh, STACK)
    src = make_source(tmp_path, gh, token_file, signers=signers)

    got = src.fetch()

    assert (got.revision, got.content, got.trust_error) == (sha, V1, None)
    assert _kinds(gh) == ["commits", "commits", "trees?recursive", "blobs"]
    root = gh.tree_sha(sha)
    assert gh.logged()[2].path == f"/repos/acme/shop/git/trees/{root}"  # the signed root
    assert gh.count("contents") == 0
    cached = SourceCache.model_validate_json((tmp_path / "state" / CACHE_FILE).read_bytes())
    assert (cached.tree, cached.content) == (root, V1)


def test_stack_files_of_the_fetched_revision_reuse_its_checked_tree_listing(
        gh, tmp_path, token_file, signed_repo):
    signers, commit = signed_repo
    sha = commit(gh, STACK)
    src = make_source(tmp_path, gh, token_file, signers=signers)
    src.fetch()
    gh.clear_log()

    got = src.read_files(sha, FROM_REPO)

    assert got == {p: STACK[p] for p in ("compose.yml", "conf/app.conf", "conf/sub/b.conf")}
    assert _kinds(gh) == ["blobs"] * 3  # no second tree request, no commit request


def test_an_idle_poll_with_signed_trees_is_still_one_conditional_request(
        gh, tmp_path, token_file, signed_repo):
    signers, commit = signed_repo
    sha = commit(gh, STACK)
    src = make_source(tmp_path, gh, token_file, signers=signers)
    src.fetch()
    src.read_files(sha, FROM_REPO)
    gh.clear_log()

    got = src.fetch()

    assert (got.revision, got.content, got.trust_error) == (sha, V1, None)
    assert [r.status for r in gh.logged()] == [304] and src.fetch().content == V1
    restarted = make_source(tmp_path, gh, token_file, signers=signers)
    gh.clear_log()
    assert restarted.fetch().content == V1 and [r.status for r in gh.logged()] == [304]


def test_a_lying_blob_for_the_desired_state_is_a_trust_error_and_never_cached(
        gh, tmp_path, token_file, signed_repo):
    signers, commit = signed_repo
    sha = commit(gh, STACK)
    gh.tamper_blob(PATH, V2)  # a valid desired state, just not the signed one
    src = make_source(tmp_path, gh, token_file, signers=signers)

    got = src.fetch()

    assert got.revision == sha and got.content == b""
    assert got.trust_error is not None
    assert got.trust_error.startswith(f"GitHub API 127.0.0.1 answered {PATH!r} at {sha[:12]}")
    assert "content that is not blob" in got.trust_error and "image: b" not in got.trust_error
    assert gh.count("contents") == 0
    cached = SourceCache.model_validate_json((tmp_path / "state" / CACHE_FILE).read_bytes())
    assert (cached.content, cached.tree, cached.trust_error) == (b"", None, got.trust_error)
    # refused once: an unchanged head costs one 304, also after a restart
    gh.clear_log()
    assert src.fetch().trust_error == got.trust_error
    assert make_source(tmp_path, gh, token_file, signers=signers).fetch().trust_error \
        == got.trust_error
    assert [r.status for r in gh.logged()] == [304, 304]


def test_a_lying_blob_for_a_stack_file_is_an_untrusted_revision_naming_it(
        gh, tmp_path, token_file, signed_repo):
    from agent.errors import UntrustedRevision
    from agent.outcomes import disposition

    signers, commit = signed_repo
    sha = commit(gh, STACK)
    gh.tamper_blob("conf/sub/b.conf", b"evil\n")
    src = make_source(tmp_path, gh, token_file, signers=signers)
    assert src.fetch().trust_error is None  # the desired-state blob is honest

    with pytest.raises(UntrustedRevision) as e:
        src.read_files(sha, FROM_REPO)

    assert e.value.source == f"compose.from_repo@{sha[:12]}"
    assert "'conf/sub/b.conf'" in str(e.value) and "content that is not blob" in str(e.value)
    assert "evil" not in str(e.value)
    assert disposition(e.value).exit_code == 2 and disposition(e.value).outcome == "invalid"


def _lie_about(gh: FakeGitHub, path: str, lie: str) -> None:
    """The listing names another blob for ``path`` (served honestly under its own name, so
    only the tree can tell), or leaves it out."""
    gh.tamper_tree_entry(path, None if lie == "left-out" else b"evil: 1\n")


@pytest.mark.parametrize("lie", ["another-blob", "left-out"])
def test_a_lying_tree_entry_for_the_desired_state_is_a_trust_error(
        gh, tmp_path, token_file, signed_repo, lie):
    signers, commit = signed_repo
    sha = commit(gh, STACK)
    _lie_about(gh, PATH, lie)

    got = make_source(tmp_path, gh, token_file, signers=signers).fetch()

    assert got.revision == sha and got.content == b""
    assert got.trust_error is not None
    assert got.trust_error.startswith(f"GitHub API 127.0.0.1 answered {PATH!r} at {sha[:12]}")
    assert "the root tree as listed is not the tree" in got.trust_error
    assert "blobs" not in _kinds(gh)  # refused before any blob is read


@pytest.mark.parametrize("lie", ["another-blob", "left-out"])
def test_a_lying_tree_entry_for_a_stack_file_is_refused_at_the_tree_that_holds_it(
        gh, tmp_path, token_file, signed_repo, lie):
    from agent.errors import UntrustedRevision

    signers, commit = signed_repo
    sha = commit(gh, STACK)
    _lie_about(gh, "conf/sub/b.conf", lie)
    src = make_source(tmp_path, gh, token_file, signers=signers)
    assert src.fetch().content == V1  # the trees on the desired state's path are honest

    with pytest.raises(UntrustedRevision) as e:
        src.read_files(sha, FROM_REPO)

    assert e.value.source == f"compose.from_repo@{sha[:12]}"
    assert "'conf/sub' as listed is not the tree" in str(e.value) and "evil" not in str(e.value)
    assert _kinds(gh).count("blobs") == 1  # the desired state's: no stack file was read


def test_a_lie_with_every_tree_above_it_renamed_is_caught_at_the_signed_root(
        gh, tmp_path, token_file, signed_repo):
    from agent.errors import UntrustedRevision

    signers, commit = signed_repo
    sha = commit(gh, STACK)
    gh.tamper_tree_entry("conf/sub/b.conf", b"evil: 1\n", rehash=True)  # self-consistent
    src = make_source(tmp_path, gh, token_file, signers=signers)

    got = src.fetch()

    expected = f"the root tree as listed is not the tree {gh.tree_sha(sha)[:12]}"
    assert got.content == b"" and expected in (got.trust_error or "")
    with pytest.raises(UntrustedRevision, match="the signed commit names"):
        src.read_files(sha, FROM_REPO)


def test_read_files_of_another_revision_checks_that_commits_signature_first(
        gh, tmp_path, token_file, signed_repo, signing):
    from agent.errors import UntrustedRevision

    signers, commit = signed_repo
    _, _, other, _, _ = signing
    old = commit(gh, {**STACK, "compose.yml": b"services: {old: {}}\n"})
    unsigned = commit(gh, {"compose.yml": b"services: {x: {}}\n"}, key=other)
    commit(gh, STACK)
    src = make_source(tmp_path, gh, token_file, signers=signers)
    src.fetch()
    gh.clear_log()

    got = src.read_files(old, ["compose.yml"])  # a rollback to a recorded release

    assert got == {"compose.yml": b"services: {old: {}}\n"}
    assert _kinds(gh) == ["commits", "trees?recursive", "blobs"]
    assert gh.logged()[1].path == f"/repos/acme/shop/git/trees/{gh.tree_sha(old)}"
    gh.clear_log()
    with pytest.raises(UntrustedRevision, match="no valid signature from an allowed signer"):
        src.read_files(unsigned, ["compose.yml"])
    assert _kinds(gh) == ["commits"]  # nothing of it is read


def test_a_truncated_listing_walks_to_the_desired_state_checking_each_tree(
        gh, tmp_path, token_file, signed_repo):
    signers, commit = signed_repo
    sha = commit(gh, {**STACK, "deploy/prod/desired-state.yml": V2})
    gh.truncate_recursive_trees()
    src = make_source(tmp_path, gh, token_file, signers=signers,
                      path="deploy/prod/desired-state.yml")

    got = src.fetch()

    assert (got.revision, got.content, got.trust_error) == (sha, V2, None)
    assert _kinds(gh) == ["commits", "commits", "trees?recursive", "trees", "trees", "trees",
                          "blobs"]
    # a lie on the way is caught at the tree that holds it
    lying = commit(gh, {**STACK, "deploy/prod/desired-state.yml": V1})
    gh.tamper_tree_entry("deploy/prod/desired-state.yml", V2, sha=lying)
    got = src.fetch()
    assert got.revision == lying and got.content == b""
    assert "'deploy/prod' as listed is not the tree" in (got.trust_error or "")


def test_without_a_signers_file_the_tree_is_the_signed_payloads_not_githubs_word(
        gh, tmp_path, token_file, signed_repo):
    _, commit = signed_repo
    first = commit(gh, {**STACK, PATH: V2})
    sha = commit(gh, STACK)
    gh.answer_tree[sha] = gh.tree_sha(first)  # the commit JSON names another tree
    got = make_source(tmp_path, gh, token_file, signed=True).fetch()
    assert (got.revision, got.content, got.trust_error) == (sha, V1, None)
    assert gh.logged()[2].path == f"/repos/acme/shop/git/trees/{gh.tree_sha(sha)}"


def test_a_cache_from_before_tree_checks_is_read_again_with_signed_commits(
        gh, tmp_path, token_file, signed_repo):
    signers, commit = signed_repo
    commit(gh, STACK)
    src = make_source(tmp_path, gh, token_file, signers=signers)
    src.fetch()
    path = tmp_path / "state" / CACHE_FILE
    doc = json.loads(path.read_text())
    del doc["tree"]  # as an agent that read the contents API wrote it
    path.write_text(json.dumps(doc))
    gh.clear_log()
    got = make_source(tmp_path, gh, token_file, signers=signers).fetch()
    assert got.content == V1 and "trees?recursive" in _kinds(gh)
    assert all(r.header("if-none-match") is None for r in gh.logged())


# ---------------------------------------------------------------------------- the pass
REG = "registry.test:5000"
WEB = f"{REG}/shop/web"


def _compose(env: str) -> bytes:
    return json.dumps({"services": {"web": {"image": f"{WEB}:latest",
                                            "environment": {"X": env}}}}).encode()


class SignedShop:
    """The pass with the real GitHub source, signed commits and compose.from_repo, on the
    honest engine and compose fakes."""

    def __init__(self, gh, tmp_path, token_file, signers, commit, monkeypatch) -> None:
        from fakes import HEALTHY, FakeCompose, FakeEngine, FilesCompose, digest_of

        from agent import health
        from agent.reconcile import Reconciler

        monkeypatch.setattr(health, "CONFIRM_SECONDS", 0.05)
        self.gh, self.tmp, self._commit = gh, tmp_path, commit
        self.v1, self.v2, self.evil = digest_of("v1"), digest_of("v2"), digest_of("evil")
        self.engine = FakeEngine()
        self.engine.publish(WEB, self.v1, HEALTHY)
        self.engine.publish(WEB, self.v2, HEALTHY)
        self.project = tmp_path / "project"
        self.project.mkdir()
        (tmp_path / "state").mkdir()
        cfg = parse_config({
            "source": {"kind": "github", "repo": "acme/shop", "branch": "main", "path": PATH,
                       "api_url": gh.api_url, "token_file": str(token_file)},
            "compose": {"project_dir": str(self.project), "project_name": "shop",
                        "from_repo": ["compose.yml", "conf/"]},
            "agent": {"state_dir": str(tmp_path / "state"), "settle_seconds": 0.0,
                      "handover_seconds": 0.0, "health_timeout_seconds": 2.0},
            "trust": {"require_signed_commits": True, "allowed_signers_file": str(signers)},
        })
        self.source = GitHubSource.from_config(cfg)
        self.rec = Reconciler(
            cfg, source=self.source, engine=self.engine,
            compose=FakeCompose(self.engine, model_file=self.project / "compose.yml"),
            sleep=lambda _s: None, compose_for=lambda files, mirror=None: FilesCompose(files))

    def release(self, digest: str, env: str = "one", conf: bytes = b"level=info\n") -> str:
        from fakes import desired_yaml

        desired = desired_yaml({"web": (WEB, digest)}, {"web": {"update": "stop-first"}})
        return self._commit(self.gh, {PATH: desired, "compose.yml": _compose(env),
                                      "conf/app.conf": conf})

    def written(self) -> dict[str, bytes]:
        """Every file the agent may write for a release: project_dir, state_dir/stack, the
        caches of the validated desired state."""
        roots = [self.project, self.tmp / "state" / "stack"]
        out = {str(p): p.read_bytes() for r in roots for p in r.rglob("*") if p.is_file()}
        cache = self.tmp / "state" / "desired-state.cache.json"
        out["cache"] = cache.read_bytes() if cache.exists() else b""
        return out

    def ids(self) -> set[str]:
        return {c.id for c in self.engine.of("web")}


@pytest.fixture
def shop(gh, tmp_path, token_file, signed_repo, monkeypatch) -> SignedShop:
    shop = SignedShop(gh, tmp_path, token_file, *signed_repo, monkeypatch)
    shop.release(shop.v1)
    result = shop.rec.run_pass()
    assert result.outcome == "applied", result.reason  # honest answers deploy
    assert (shop.project / "conf" / "app.conf").read_bytes() == b"level=info\n"
    return shop


def test_an_idle_pass_with_signed_trees_and_from_repo_is_one_source_request(shop):
    shop.gh.clear_log()
    result = shop.rec.run_pass()
    assert result.outcome == "no-op", result.reason
    assert [r.status for r in shop.gh.logged()] == [304]


@pytest.mark.parametrize("lie", ["desired-state blob", "stack file blob", "tree entry"])
def test_a_lying_api_is_refused_exit_2_and_nothing_is_written_or_touched(shop, lie):
    from agent.errors import UntrustedRevision
    from agent.outcomes import exit_code

    before, ids, pulls = shop.written(), shop.ids(), len(shop.engine.pulls)
    rev = shop.release(shop.v2, env="two", conf=b"level=debug\n")
    if lie == "desired-state blob":  # the API serves another valid desired state
        shop.gh.tamper_blob(PATH, shop.gh.repo().files[rev][PATH].replace(
            shop.v2.encode(), shop.evil.encode()))
        named = PATH
    elif lie == "stack file blob":
        shop.gh.tamper_blob("conf/app.conf", b"level=evil\n")
        named = "conf/app.conf"
    else:  # conf/app.conf listed as another blob; the desired state's trees are honest
        shop.gh.tamper_tree_entry("conf/app.conf", b"level=evil\n")
        named = "the tree of ['compose.yml', 'conf/']"

    result = shop.rec.run_pass()

    assert result.outcome == "invalid" and isinstance(result.error, UntrustedRevision)
    assert exit_code(result.outcome, result.error) == 2
    assert result.revision == rev
    reason = result.reason or ""
    shown = named if named.startswith("the tree") else repr(named)
    assert f"answered {shown} at {rev[:12]}" in reason and "evil" not in reason
    assert shop.evil not in reason
    assert shop.written() == before and shop.ids() == ids
    assert len(shop.engine.pulls) == pulls  # nothing pulled either
