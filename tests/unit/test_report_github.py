"""Commit statuses against the fake GitHub (a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from github_server import FakeGitHub
from structlog.testing import capture_logs

from agent.errors import ConfigError, DockerUnavailable, ImageNotFound, Unhealthy
from agent.outcomes import PassResult
from agent.report.github_status import OUTBOX_FILE, GitHubStatusReporter
from agent.state import ImageDigest

TOKEN = "ghs_statustoken123"
WEB = ImageDigest(image="reg/web", digest="sha256:" + "1a2b3c4d5e6f" + "0" * 52)
API = ImageDigest(image="reg/api", digest="sha256:" + "aaaabbbbcccc" + "0" * 52)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def gh() -> Iterator[FakeGitHub]:
    with FakeGitHub(repo="acme/shop", token=TOKEN) as g:
        yield g


def reporter(gh: FakeGitHub, tmp_path: Path, clock: Clock | None = None,
             token: str = TOKEN, post_pending: bool = True) -> GitHubStatusReporter:
    return GitHubStatusReporter(repo="acme/shop", api_url=gh.api_url, token=token,
                                context="deploy/{host}", host="prod-1", state_dir=tmp_path,
                                timeout=2, clock=clock or Clock(), post_pending=post_pending)


def applied(rev: str, **kw: object) -> PassResult:
    return PassResult("applied", rev, target={"web": WEB, "api": API}, **kw)  # type: ignore[arg-type]


def test_no_pending_status_is_posted_by_default_only_the_verdict(gh, tmp_path):
    rev = gh.commit({})
    r = GitHubStatusReporter(repo="acme/shop", api_url=gh.api_url, token=TOKEN,
                             context="deploy/{host}", host="prod-1", state_dir=tmp_path,
                             timeout=2, clock=Clock())
    r.release_started(rev, ["web", "api"])
    assert gh.statuses_for(rev) == []
    r.pass_finished(applied(rev))
    assert [s["state"] for s in gh.statuses_for(rev)] == ["success"]


def test_post_pending_true_posts_pending_when_a_release_starts(gh, tmp_path):
    rev = gh.commit({})
    r = reporter(gh, tmp_path, post_pending=True)
    r.release_started(rev, ["web"])
    assert [s["state"] for s in gh.statuses_for(rev)] == ["pending"]


def test_good_release_posts_pending_then_success_naming_host_and_digests(gh, tmp_path):
    rev = gh.commit({})
    r = reporter(gh, tmp_path)
    r.release_started(rev, ["web", "api"])
    r.pass_finished(applied(rev))
    st = gh.statuses_for(rev)
    assert [(s["state"], s["description"]) for s in st] == [
        ("pending", "prod-1: deploying web, api"),
        ("success", "prod-1 runs api@aaaabbbbcccc, web@1a2b3c4d5e6f"),
    ]
    assert {s["context"] for s in st} == {"deploy/prod-1"}
    assert {s["authorization"] for s in st} == {f"Bearer {TOKEN}"}


def test_rolled_back_release_posts_failure_with_the_reason_clipped_to_140(gh, tmp_path):
    rev = gh.commit({})
    r = reporter(gh, tmp_path)
    r.release_started(rev, ["web"])
    reason = "web: unhealthy: health endpoint says 503 " + "x" * 300
    r.pass_finished(PassResult("rolled-back", rev, reason=reason + "\nsecond line",
                               error=Unhealthy(reason)))
    st = gh.statuses_for(rev)
    assert [s["state"] for s in st] == ["pending", "failure"]
    assert st[1]["description"].startswith("prod-1: rolled back: web: unhealthy: health "
                                           "endpoint says 503")
    assert len(st[1]["description"]) == 140 and st[1]["description"].endswith("…")


def test_idle_passes_make_no_request(gh, tmp_path):
    rev = gh.commit({})
    r = reporter(gh, tmp_path)
    r.pass_finished(PassResult("no-op", rev, target={"web": WEB}))
    assert len(gh.statuses_for(rev)) == 1  # the first pass to see it says it runs
    gh.clear_log()
    for _ in range(5):
        r.pass_finished(PassResult("no-op", rev, target={"web": WEB}))
    assert gh.count() == 0
    # and a new process (restart) remembers what it said
    reporter(gh, tmp_path).pass_finished(PassResult("no-op", rev, target={"web": WEB}))
    assert gh.count() == 0


def test_skipped_failed_revision_posts_nothing_new_and_a_forced_retry_posts_again(gh, tmp_path):
    rev = gh.commit({})
    r = reporter(gh, tmp_path)
    r.release_started(rev, ["web"])
    r.pass_finished(PassResult("rolled-back", rev, reason="web unhealthy",
                               error=Unhealthy("web unhealthy")))
    for _ in range(3):
        r.pass_finished(PassResult("skipped", rev, reason="failed before"))
    # converging on the known-good digests is not this revision succeeding
    r.pass_finished(PassResult("applied", rev, target={"web": WEB}))
    assert [s["state"] for s in gh.statuses_for(rev)] == ["pending", "failure"]
    r.release_started(rev, ["web"])
    r.pass_finished(applied(rev, forced=True))
    assert [s["state"] for s in gh.statuses_for(rev)] == [
        "pending", "failure", "pending", "success"]


def test_invalid_revision_is_an_error_status_and_transient_errors_post_nothing(gh, tmp_path):
    rev = gh.commit({})
    r = reporter(gh, tmp_path)
    r.pass_finished(PassResult("error", rev, reason="engine down",
                               error=DockerUnavailable("engine down")))
    assert gh.statuses_for(rev) == []
    r.pass_finished(PassResult("invalid", rev, reason="desired-state.yml@abc: At 'services'"))
    assert [(s["state"], s["description"]) for s in gh.statuses_for(rev)] == [
        ("error", "prod-1: invalid: desired-state.yml@abc: At 'services'")]
    r.pass_finished(PassResult("failed", rev, reason="manifest unknown",
                               error=ImageNotFound("manifest unknown")))
    assert gh.statuses_for(rev)[-1]["state"] == "failure"


def test_github_down_queues_statuses_and_delivers_them_in_order_later(gh, tmp_path):
    rev = gh.commit({})
    clock = Clock()
    r = reporter(gh, tmp_path, clock)
    gh.fail(503)
    with capture_logs() as logs:
        r.release_started(rev, ["web"])
        r.pass_finished(applied(rev))
    assert gh.statuses_for(rev) == []
    assert [e["event"] for e in logs if e["event"].startswith("agent.report")] == [
        "agent.report.failed", "agent.report.retry_scheduled"]  # one try per pass, not two
    queued = json.loads((tmp_path / OUTBOX_FILE).read_text())["queue"]
    assert [q["state"] for q in queued] == ["pending", "success"]
    # backoff: the next passes within the delay make no request
    gh.clear_failures()
    gh.clear_log()
    clock.now += 0.5
    r.pass_finished(PassResult("no-op", rev, target={"web": WEB, "api": API}))
    assert gh.count() == 0
    # a restart keeps the outbox; once the delay is over the statuses arrive, in order
    r2 = reporter(gh, tmp_path, clock)
    clock.now += 1
    with capture_logs() as logs:
        r2.pass_finished(PassResult("no-op", rev, target={"web": WEB, "api": API}))
    assert [s["state"] for s in gh.statuses_for(rev)] == ["pending", "success"]
    assert [e["event"] for e in logs].count("agent.report.sent") == 2
    assert json.loads((tmp_path / OUTBOX_FILE).read_text())["queue"] == []


def test_a_full_outbox_drops_the_oldest_success_and_keeps_a_failure(gh, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setattr("agent.report.github_status.MAX_QUEUED", 3)
    bad, *good = [gh.commit({"n": str(i)}) for i in range(4)]
    r = reporter(gh, tmp_path, post_pending=False)
    gh.fail(503)
    r.pass_finished(PassResult("rolled-back", bad, target={"web": WEB}, reason="unhealthy"))
    with capture_logs() as logs:
        for rev in good:
            r.pass_finished(applied(rev))
    queued = json.loads((tmp_path / OUTBOX_FILE).read_text())["queue"]
    assert [(q["sha"], q["state"]) for q in queued] == [
        (bad, "failure"), (good[1], "success"), (good[2], "success")]
    [dropped] = [e for e in logs if e["event"] == "agent.report.dropped"]
    assert (dropped["revision"], dropped["state"]) == (good[0][:12], "success")


def test_backoff_doubles_while_github_stays_down(gh, tmp_path):
    rev = gh.commit({})
    clock = Clock()
    r = reporter(gh, tmp_path, clock)
    gh.fail(502)
    delays = []
    r.release_started(rev, ["web"])
    for _ in range(4):
        delays.append(r.retry_at - clock.now)
        clock.now = r.retry_at
        r.pass_finished(PassResult("no-op", rev))
    assert delays == [1, 2, 4, 8]


def test_bad_token_is_logged_once_with_what_to_fix_and_never_sent_elsewhere(gh, tmp_path):
    rev = gh.commit({})
    clock = Clock()
    r = reporter(gh, tmp_path, clock, token="wrong")
    with capture_logs() as logs:
        r.release_started(rev, ["web"])
        clock.now = r.retry_at
        r.pass_finished(applied(rev))
    unauthorized = [e for e in logs if e["event"] == "agent.report.unauthorized"]
    assert len(unauthorized) == 1
    assert "commit statuses: write" in unauthorized[0]["message"]
    assert gh.statuses_for() == []
    assert {r.header("host") for r in gh.logged()} == {f"127.0.0.1:{gh.port}"}


def test_unknown_commit_is_dropped_not_retried_forever(gh, tmp_path):
    r = reporter(gh, tmp_path)
    with capture_logs() as logs:
        r.release_started("f" * 40, ["web"])
    assert "agent.report.rejected" in [e["event"] for e in logs]
    assert r.queue == []


def test_token_file_must_be_private(tmp_path):
    from agent.config import parse_config

    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o644)
    cfg = parse_config({"source": {"repo": "/r"}, "compose": {"project_dir": str(tmp_path)},
                        "agent": {"state_dir": str(tmp_path), "host": "prod-1"},
                        "report": {"github": {"repo": "acme/shop",
                                              "token_file": str(token)}}})
    with pytest.raises(ConfigError, match="chmod 600"):
        GitHubStatusReporter.from_config(cfg)


def test_secondary_rate_limit_is_waited_out_for_retry_after_not_reported_as_bad_token(
        gh, tmp_path):
    clock = Clock()
    gh.limit_content_creation(per_minute=1, per_hour=500, clock=clock)
    rev = gh.commit({})
    r = reporter(gh, tmp_path, clock=clock)
    with capture_logs() as logs:
        r.release_started(rev, ["web"])  # pending: the one slot this minute
        r.pass_finished(applied(rev))  # success: refused, 403 + retry-after
    assert [s["state"] for s in gh.statuses_for(rev)] == ["pending"]
    assert gh.creation_refusals == 1
    assert not [e for e in logs if e["event"] == "agent.report.unauthorized"]
    assert r.retry_at >= clock.now + 59  # GitHub's retry-after, not the 1 s backoff
    clock.now += 61
    r.pass_finished(applied(rev))
    assert [s["state"] for s in gh.statuses_for(rev)] == ["pending", "success"]
