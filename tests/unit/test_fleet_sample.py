"""The sample gate of rollout waves (issue 26, fleet at scale): a wave is done once a sample
of its hosts succeeded and no host of an earlier wave failed, so hosts outside the sample
need not post success before the next wave goes; decided purely (``decide``) and by the real
gate against the fake GitHub on loopback (real HTTP, pages of 100, ETag/304)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from github_server import FakeGitHub

from agent.desired import Wave
from agent.edges.github_statuses import GitHubStatuses
from agent.errors import ConfigError
from agent.fleet import (
    DEFAULT_SAMPLE,
    HostReport,
    RolloutGate,
    decide,
    fleet_sample,
    wave_need,
)
from agent.ports import GateQuestion

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
REV = "c" * 40
EARLY = [f"early-{i:02d}" for i in range(50)]
WAVES = [Wave(name="canary", hosts=["canary-1"]),
         Wave(name="early", hosts=EARLY, soak_seconds=600),
         Wave(name="main", hosts=["main-*"], min_hosts=3),
         Wave(name="rest", hosts=["*"])]
LATER = T0 + timedelta(hours=2)


def ok(host: str, at: datetime = T0) -> HostReport:
    return HostReport(host, "success", at)


def through_early(n: int, at: datetime = T0) -> list[HostReport]:
    return [ok("canary-1"), *(ok(h, at + timedelta(seconds=i)) for i, h in
                              enumerate(EARLY[:n]))]


def test_a_samples_successes_release_the_next_wave() -> None:
    assert decide("main-1", WAVES, through_early(9), LATER, REV, sample=10) == (
        f"waiting for wave early: 9 of 10 its 50 named hosts reported success on {REV[:12]}")
    assert decide("main-1", WAVES, through_early(10), LATER, REV, sample=10) is None
    # any ten of the wave's hosts make the sample, not particular ones
    last_ten = [ok("canary-1"), *(ok(h) for h in EARLY[-10:])]
    assert decide("main-1", WAVES, last_ten, LATER, REV, sample=10) is None


def test_a_host_outside_the_sample_that_never_posts_success_does_not_block() -> None:
    # 40 of early's 50 hosts never report at all (or only pending): main goes anyway
    reports = [*through_early(10), *(HostReport(h, "pending", T0) for h in EARLY[10:20])]
    assert decide("main-1", WAVES, reports, LATER, REV) is None  # the default sample, 10
    assert DEFAULT_SAMPLE == 10
    # the strict gate still waits for every named host
    assert decide("main-1", WAVES, reports, LATER, REV, sample=None) == (
        f"waiting for wave early: early-10, early-11, early-12, early-13, early-14 have not "
        f"reported success on {REV[:12]}")


def test_a_failure_in_an_earlier_wave_halts_although_the_sample_succeeded() -> None:
    for state in ("failure", "error"):
        reports = [*through_early(10), HostReport(EARLY[30], state, T0)]  # outside the sample
        assert decide("main-1", WAVES, reports, LATER, REV, sample=10) == (
            f"rollout of {REV[:12]} stopped: {EARLY[30]} (wave early) reported {state}; "
            "this host keeps what it runs")
        # a failure two waves back halts as well
        far = [*through_early(10), *(ok(f"main-{i}") for i in range(3)),
               HostReport(EARLY[40], state, T0)]
        assert (decide("rest-1", WAVES, far, LATER, REV) or "").startswith(
            f"rollout of {REV[:12]} stopped: {EARLY[40]} (wave early)")


def test_the_soak_runs_from_the_success_that_completed_the_sample() -> None:
    # the 10th success at T0+9 s completes the sample; stragglers at T0+1 h do not move it
    reports = [*through_early(10), *(ok(h, T0 + timedelta(hours=1)) for h in EARLY[10:])]
    done = T0 + timedelta(seconds=9 + 600)
    assert decide("main-1", WAVES, reports, done - timedelta(seconds=1), REV) == (
        f"waiting for wave early to soak until 2026-01-01T12:10:09Z ({REV[:12]})")
    assert decide("main-1", WAVES, reports, done, REV) is None
    # strict: from the wave's last success
    assert decide("main-1", WAVES, reports, done, REV, sample=None) == (
        f"waiting for wave early to soak until 2026-01-01T13:10:00Z ({REV[:12]})")


def test_what_a_wave_needs_from_its_sample() -> None:
    assert [wave_need(w, 10) for w in WAVES] == [1, 10, 3, 1]  # names: at most all of them
    assert wave_need(Wave(name="few", hosts=["a", "b"]), 10) == 2
    assert wave_need(WAVES[1], 1) == 1
    assert [wave_need(w, None) for w in WAVES] == [1, 50, 3, 1]  # strict: every named host
    with pytest.raises(ValueError, match="sample is a count of hosts"):
        RolloutGate("x", context="deploy/{host}", read=None, sample=0)


def test_fleet_sample_comes_from_the_fleet_section_and_is_checked_before_any_pass() -> None:
    def cfg(**fleet: Any) -> Any:
        return SimpleNamespace(fleet=SimpleNamespace(**fleet)) if fleet else SimpleNamespace()

    assert fleet_sample(cfg()) == DEFAULT_SAMPLE  # no [fleet] section
    assert fleet_sample(cfg(sample=25)) == 25
    assert fleet_sample(cfg(sample="all")) is None
    for bad in (0, -1, True, "ten", 2.5):
        with pytest.raises(ConfigError) as e:
            fleet_sample(cfg(sample=bad))
        assert "At 'fleet.sample': a count of hosts (>= 1) or \"all\"" in str(e.value)


# ------------------------------------------------------------------ the gate on the fake
@pytest.fixture
def gh() -> FakeGitHub:
    with FakeGitHub(repo="acme/shop", token="tok", log_requests=True) as server:
        yield server


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def gate(gh: FakeGitHub, host: str, clock: Any = time.monotonic,
         sample: int | None = DEFAULT_SAMPLE) -> RolloutGate:
    reader = GitHubStatuses(repo="acme/shop", api_url=gh.api_url, token="tok", timeout=2)
    return RolloutGate(host, context="deploy/{host}", read=reader.read, sample=sample,
                       clock=clock)


QUESTION = GateQuestion(REV, ("web",), converging=False, force=False, rollout=WAVES)


def test_a_thousand_hosts_are_read_in_ten_pages_and_the_sample_releases(
        gh: FakeGitHub) -> None:
    an_hour_ago = iso(time.time() - 3600)
    gh.add_status(REV, "deploy/canary-1", "success", updated_at=an_hour_ago)
    for h in EARLY[:10]:
        gh.add_status(REV, f"deploy/{h}", "success", updated_at=an_hour_ago)
    for h in EARLY[10:]:
        gh.add_status(REV, f"deploy/{h}", "pending", updated_at=an_hour_ago)
    for i in range(1000 - 51):  # later waves' hosts, waiting (pending: a strict leftover)
        gh.add_status(REV, f"deploy/rest-{i:04d}", "pending", updated_at=an_hour_ago)
    g = gate(gh, "main-1")
    before = gh.count("status")
    assert g.check(QUESTION) is None  # the sample of early released main
    assert gh.count("status") - before == 10  # 1,000 contexts: 10 pages of 100
    assert g.check(QUESTION) is None
    assert gh.count("status") - before == 20
    assert [r.status for r in gh.logged("status")[-10:]] == [304] * 10  # nothing changed
    held = gate(gh, "main-2", sample=None).check(QUESTION)  # strict: 40 pending named hosts
    assert held is not None and "early-10, early-11" in held.reason


def test_a_failure_posted_after_the_sample_halts_the_next_wave_on_the_fake(
        gh: FakeGitHub) -> None:
    an_hour_ago = iso(time.time() - 3600)
    for h in ["canary-1", *EARLY[:10]]:
        gh.add_status(REV, f"deploy/{h}", "success", updated_at=an_hour_ago)
    g = gate(gh, "main-1")
    gh.add_status(REV, f"deploy/{EARLY[33]}", "failure")
    held = g.check(QUESTION)
    assert held is not None and held.outcome == "held"
    assert held.reason.startswith(f"rollout of {REV[:12]} stopped: {EARLY[33]} (wave early)")


def test_the_gate_reads_nothing_while_an_earlier_wave_soaks_then_reads_again(
        gh: FakeGitHub) -> None:
    # the sample completed 590 s ago (GitHub's clock): early soaks for 10 s more
    done = time.time() - 590
    gh.add_status(REV, "deploy/canary-1", "success", updated_at=iso(done - 60))
    for h in EARLY[:10]:
        gh.add_status(REV, f"deploy/{h}", "success", updated_at=iso(done))
    now = [0.0]
    g = gate(gh, "main-1", clock=lambda: now[0])
    first = g.check(QUESTION)
    assert first is not None and "waiting for wave early to soak until" in first.reason
    reads = gh.count("status")
    now[0] = 5.0
    gh.add_status(REV, f"deploy/{EARLY[20]}", "failure")  # appears during the soak
    again = g.check(QUESTION)
    assert again is not None and again.reason == first.reason  # held, without a read
    assert gh.count("status") == reads
    now[0] = 10.0  # the soak it saw has ended (give or take the second of Date): it reads, and the failure holds it
    after = g.check(QUESTION)
    assert gh.count("status") == reads + 1
    assert after is not None and "stopped: early-20 (wave early) reported failure" in \
        after.reason
    # a newer revision is not held by the old one's soak
    g2 = gate(gh, "main-1", clock=lambda: now[0])
    g2.check(QUESTION)
    other = GateQuestion("d" * 40, ("web",), converging=False, force=False, rollout=WAVES)
    gh.known_commit("d" * 40)
    before = gh.count("status")
    g2.check(other)
    assert gh.count("status") == before + 1
