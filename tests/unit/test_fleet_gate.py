"""Rollout waves: the ``rollout:`` section, the decision (pure), the statuses client against
the fake GitHub on loopback (real HTTP, ETag/304, pages, rate limits), and the gate in a
pass with the honest fakes (nothing pulled or touched while held)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fakes import HEALTHY, FakeCompose, FakeEngine, FakeSource, digest_of
from github_server import FakeGitHub
from structlog.testing import capture_logs

from agent.cli import main as cli_main
from agent.config import AgentConfig, parse_config
from agent.desired import Wave, parse_desired_state
from agent.edges.github_statuses import GitHubStatuses, StatusesUnavailable
from agent.errors import ConfigError, DesiredStateError
from agent.fleet import HostReport, RolloutGate, build_gates, decide, describe_wave, wave_of
from agent.ports import GateQuestion
from agent.reconcile import Reconciler

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
REV = "a" * 40
WAVES = [Wave(name="canary", hosts=["canary-1"], soak_seconds=600),
         Wave(name="eu", hosts=["eu-*"], min_hosts=2),
         Wave(name="rest", hosts=["*"])]


def doc(rollout: str) -> bytes:
    return f"version: 1\nservices: {{}}\nrollout:\n{rollout}".encode()


# ------------------------------------------------------------------ the section
def test_rollout_section_parses_names_patterns_soak_and_min_hosts() -> None:
    d = parse_desired_state(doc(
        "  - {name: canary, hosts: [canary-1], soak_seconds: 600}\n"
        "  - {name: eu, hosts: ['eu-*'], min_hosts: 3}\n"
        "  - {name: rest, hosts: ['*']}\n"))
    assert d.rollout is not None
    assert [(w.name, w.exact, w.patterns, w.soak_seconds, w.min_hosts) for w in d.rollout] == [
        ("canary", ["canary-1"], [], 600, None), ("eu", [], ["eu-*"], 0, 3),
        ("rest", [], ["*"], 0, None)]
    assert parse_desired_state(b"version: 1\nservices: {}\n").rollout is None


def test_rollout_section_errors_name_each_path() -> None:
    with pytest.raises(DesiredStateError) as e:
        parse_desired_state(doc(
            "  - {name: a, hosts: [x], soak_seconds: -1, min_hosts: 0, colour: red}\n"
            "  - {name: b, hosts: []}\n"
            "  - {name: c, hosts: ['Bad Host']}\n"))
    text = str(e.value)
    assert "At 'rollout.0.soak_seconds': Input should be greater than or equal to 0" in text
    assert "At 'rollout.0.min_hosts': Input should be greater than or equal to 1" in text
    assert "At 'rollout.0.colour': unknown key" in text
    assert "At 'rollout.1.hosts'" in text and "At 'rollout.2.hosts'" in text


def test_wave_names_must_be_unique_and_min_hosts_needs_patterns() -> None:
    with pytest.raises(DesiredStateError, match=r"At 'rollout': wave names must be unique; "
                                                r"more than once: a"):
        parse_desired_state(doc("  - {name: a, hosts: [x]}\n  - {name: a, hosts: ['*']}\n"))
    with pytest.raises(DesiredStateError, match=r"At 'rollout.0': min_hosts counts hosts "
                                                r"matched by patterns"):
        parse_desired_state(doc("  - {name: a, hosts: [x], min_hosts: 2}\n"))


def test_validate_command_rejects_a_bad_rollout_with_exit_2(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    f = tmp_path / "desired-state.yml"
    f.write_bytes(doc("  - {name: a, hosts: [x], soak_seconds: -5}\n"))
    assert cli_main(["validate", str(f)], configure_logging=False) == 2
    assert "At 'rollout.0.soak_seconds'" in capsys.readouterr().err
    f.write_bytes(doc("  - {name: a, hosts: [x], soak_seconds: 5}\n"))
    assert cli_main(["validate", str(f)], configure_logging=False) == 0


# ------------------------------------------------------------------ the decision
def ok(host: str, at: datetime = T0) -> HostReport:
    return HostReport(host, "success", at)


def test_a_host_belongs_to_the_first_wave_that_matches_it() -> None:
    assert [wave_of(h, WAVES) for h in ("canary-1", "eu-1", "us-1")] == [0, 1, 2]
    assert wave_of("x", WAVES[:2]) is None
    assert describe_wave("eu-7", WAVES) == "eu (wave 2 of 3)"
    assert describe_wave("x", WAVES[:2]) == "none: not in any rollout wave (never released)"
    assert describe_wave("x", None) is None


def test_the_first_wave_applies_at_once_and_a_host_in_no_wave_is_held() -> None:
    assert decide("canary-1", WAVES, [], T0, REV) is None
    assert decide("x", WAVES[:2], [], T0, REV) == f"x is not in any rollout wave of {REV[:12]}"


def test_a_later_wave_waits_for_each_named_host_then_the_soak() -> None:
    assert decide("eu-1", WAVES, [], T0, REV) == (
        f"waiting for wave canary: canary-1 has not reported success on {REV[:12]}")
    pending = [HostReport("canary-1", "pending", T0)]
    assert "canary-1 has not reported success" in (decide("eu-1", WAVES, pending, T0, REV) or "")
    soaking = decide("eu-1", WAVES, [ok("canary-1")], T0 + timedelta(seconds=599), REV)
    assert soaking == f"waiting for wave canary to soak until 2026-01-01T12:10:00Z ({REV[:12]})"
    assert decide("eu-1", WAVES, [ok("canary-1")], T0 + timedelta(seconds=600), REV) is None


def test_a_pattern_wave_needs_min_hosts_successes_among_its_own_members() -> None:
    later = T0 + timedelta(hours=1)
    reports = [ok("canary-1"), ok("eu-1"), ok("us-1")]  # us-1 is in "rest", not "eu"
    assert decide("us-2", WAVES, reports, later, REV) == (
        f"waiting for wave eu: 1 of 2 hosts matching eu-* reported success on {REV[:12]}")
    assert decide("us-2", WAVES, [*reports, ok("eu-2")], later, REV) is None


def test_a_failure_or_error_in_an_earlier_wave_stops_the_rollout_naming_the_host() -> None:
    later = T0 + timedelta(hours=1)
    for state in ("failure", "error"):
        reports = [ok("canary-1"), ok("eu-1"), HostReport("eu-2", state, later)]
        assert decide("us-1", WAVES, reports, later, REV) == (
            f"rollout of {REV[:12]} stopped: eu-2 (wave eu) reported {state}; "
            "this host keeps what it runs")
    # a failure in the same or a later wave does not stop this host's wave
    assert decide("eu-1", WAVES, [ok("canary-1"), HostReport("eu-2", "failure", T0),
                                  HostReport("us-1", "failure", T0)], later, REV) is None


# ------------------------------------------------------------------ reading statuses
@pytest.fixture
def gh() -> FakeGitHub:
    with FakeGitHub(repo="acme/shop", token="tok") as server:
        yield server


def client(gh: FakeGitHub, state_dir: Path | None = None) -> GitHubStatuses:
    return GitHubStatuses(repo="acme/shop", api_url=gh.api_url, token="tok",
                          state_dir=state_dir, timeout=2)


def test_statuses_are_read_conditionally_and_a_304_reuses_the_last_answer(
        gh: FakeGitHub, tmp_path: Path) -> None:
    gh.add_status(REV, "deploy/canary-1", "pending")
    gh.add_status(REV, "deploy/canary-1", "success")
    first = client(gh, tmp_path).read(REV)
    assert [(s.context, s.state) for s in first.statuses] == [("deploy/canary-1", "success")]
    assert (first.requests, first.not_modified) == (1, 0)
    again = client(gh, tmp_path).read(REV)  # a new process: the ETag was kept in state_dir
    assert (again.requests, again.not_modified) == (1, 1)
    assert again.statuses == first.statuses
    assert gh.logged("status")[-1].header("if-none-match") is not None
    gh.add_status(REV, "deploy/eu-1", "failure")
    changed = client(gh, tmp_path).read(REV)
    assert (changed.not_modified, len(changed.statuses)) == (0, 2)


def test_more_than_a_hundred_hosts_are_read_page_by_page(gh: FakeGitHub) -> None:
    for i in range(150):
        gh.add_status(REV, f"deploy/h-{i:03d}", "success")
    c = client(gh)
    got = c.read(REV)
    assert (len(got.statuses), got.requests) == (150, 2)
    again = c.read(REV)
    assert (len(again.statuses), again.requests, again.not_modified) == (150, 2, 2)


def test_github_unreachable_rate_limited_or_refusing_is_a_transient_error(
        gh: FakeGitHub) -> None:
    gh.rate_limit(status=403, seconds=60)
    with pytest.raises(StatusesUnavailable, match="rate limit"):
        client(gh).read(REV)
    gh.clear_rate_limit()
    gh.fail(503)
    with pytest.raises(StatusesUnavailable, match="HTTP 503"):
        client(gh).read(REV)
    gh.clear_failures()
    bad = GitHubStatuses(repo="acme/shop", api_url=gh.api_url, token="wrong", timeout=2)
    with pytest.raises(StatusesUnavailable, match="refused the token") as e:
        bad.read(REV)
    assert "wrong" not in str(e.value)


# ------------------------------------------------------------------ the gate in a pass
WEB = "registry.test:5000/shop/web"
V1, V2 = digest_of("v1"), digest_of("v2")


def desired(web: str, rollout: str) -> bytes:
    return (f"version: 1\nservices:\n  web: {{image: {WEB}, digest: '{web}'}}\n"
            f"rollout:\n{rollout}").encode()


ROLLOUT = "  - {name: canary, hosts: [canary-1], soak_seconds: 0}\n  - {name: prod, hosts: ['prod-*']}\n"


def host_config(tmp: Path, host: str, **sections: object) -> AgentConfig:
    return parse_config({
        "source": {"repo": "https://git.test/shop.git"},
        "compose": {"project_dir": str(tmp / "project"), "project_name": "shop"},
        "agent": {"state_dir": str(tmp / "state"), "settle_seconds": 0.0,
                  "health_timeout_seconds": 2.0, "host": host},
        **sections,
    })


def reconciler(tmp: Path, gh: FakeGitHub | None, host: str, source: FakeSource,
               engine: FakeEngine) -> Reconciler:
    cfg = host_config(tmp, host)
    read = client(gh, tmp / "state").read if gh is not None else None
    gate = RolloutGate(host, context="deploy/{host}" if gh else None, read=read)
    return Reconciler(cfg, source=source, engine=engine,
                      compose=FakeCompose(engine, model={"web": {}}), gates=[gate],
                      sleep=lambda _s: None)


def test_a_held_pass_pulls_and_touches_nothing_then_applies_once_the_canary_succeeded(
        gh: FakeGitHub, tmp_path: Path) -> None:
    engine = FakeEngine()
    for d in (V1, V2):
        engine.publish(WEB, d, HEALTHY)
    source = FakeSource()
    rec = reconciler(tmp_path, gh, "prod-1", source, engine)
    rev = source.commit(desired(V1, ROLLOUT))
    gh.known_commit(rev)  # the commit is on GitHub too (no statuses yet)
    with capture_logs() as logs:
        r = rec.run_pass()
    assert (r.outcome, r.exit_code) == ("held", 0)
    assert r.reason == f"waiting for wave canary: canary-1 has not reported success on {rev[:12]}"
    assert engine.pulls == [] and engine.of("web") == []
    assert "agent.fleet.held" in [e["event"] for e in logs]
    rec.run_pass()
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert state["history"][0]["outcome"] == "held" and state["history"][0]["repeats"] == 2
    assert gh.count("status") == 2 and gh.status_counts[304] == 1  # one request per pass
    gh.add_status(rev, "deploy/canary-1", "success")
    assert rec.run_pass().outcome == "applied"
    assert {c.digest for c in engine.of("web")} == {V1}
    # nothing to change: the gate is not consulted (no request)
    before = gh.count("status")
    assert rec.run_pass().outcome == "no-op" and gh.count("status") == before


def test_a_failed_canary_keeps_the_previous_release_on_a_later_wave(
        gh: FakeGitHub, tmp_path: Path) -> None:
    engine = FakeEngine()
    for d in (V1, V2):
        engine.publish(WEB, d, HEALTHY)
    source = FakeSource()
    rec = reconciler(tmp_path, gh, "prod-1", source, engine)
    good = source.commit(desired(V1, ROLLOUT))
    gh.add_status(good, "deploy/canary-1", "success")
    assert rec.run_pass().outcome == "applied"
    bad = source.commit(desired(V2, ROLLOUT))
    gh.add_status(bad, "deploy/canary-1", "failure")
    r = rec.run_pass()
    assert r.outcome == "held" and r.reason is not None
    assert r.reason.startswith(f"rollout of {bad[:12]} stopped: canary-1 (wave canary) "
                               "reported failure")
    assert {c.digest for c in engine.of("web") if c.status == "running"} == {V1}


def test_the_first_wave_reads_nothing_and_applies_at_once(gh: FakeGitHub,
                                                          tmp_path: Path) -> None:
    engine = FakeEngine()
    engine.publish(WEB, V1, HEALTHY)
    source = FakeSource()
    source.commit(desired(V1, ROLLOUT))
    assert reconciler(tmp_path, gh, "canary-1", source, engine).run_pass().outcome == "applied"
    assert gh.count("status") == 0


def test_waves_without_report_github_are_invalid_and_say_so(tmp_path: Path) -> None:
    engine = FakeEngine()
    engine.publish(WEB, V1, HEALTHY)
    source = FakeSource()
    source.commit(desired(V1, ROLLOUT))
    r = reconciler(tmp_path, None, "canary-1", source, engine).run_pass()
    assert (r.outcome, r.exit_code) == ("invalid", 2)
    assert isinstance(r.error, ConfigError)
    assert "need [report.github]" in (r.reason or "") and engine.of("web") == []


def test_a_gate_without_rollout_lets_every_host_apply(tmp_path: Path) -> None:
    gate = RolloutGate("x", context=None, read=None)
    assert gate.check(GateQuestion(REV, ("web",), converging=False, force=False)) is None


# ------------------------------------------------------------------ whose statuses count
def test_a_next_page_on_another_host_is_refused_and_the_token_never_goes_there(
        gh: FakeGitHub) -> None:
    for i in range(150):
        gh.add_status(REV, f"deploy/h-{i:03d}", "success")
    with FakeGitHub(repo="acme/shop") as elsewhere:
        gh.link_base = elsewhere.base_url
        with pytest.raises(StatusesUnavailable, match="next page .* is not under"):
            client(gh).read(REV)
        assert elsewhere.request_count == 0


def gated_reconciler(tmp: Path, gh: FakeGitHub, host: str, source: FakeSource,
                     engine: FakeEngine, trusted: list[str] | None = None) -> Reconciler:
    token = tmp / "report-token"
    token.write_text("tok\n")
    token.chmod(0o600)
    github: dict[str, object] = {"repo": "acme/shop", "api_url": gh.api_url,
                                 "token_file": str(token)}
    if trusted is not None:
        github["trusted_creators"] = trusted
    cfg = host_config(tmp, host, report={"github": github})
    return Reconciler(cfg, source=source, engine=engine,
                      compose=FakeCompose(engine, model={"web": {}}), gates=build_gates(cfg),
                      sleep=lambda _s: None)


def test_statuses_from_another_login_neither_release_nor_halt_a_wave(
        gh: FakeGitHub, tmp_path: Path) -> None:
    gh.logins["tok"] = "fleet-bot"  # the hosts' report token
    engine = FakeEngine()
    for d in (V1, V2):
        engine.publish(WEB, d, HEALTHY)
    source = FakeSource()
    rec = gated_reconciler(tmp_path, gh, "prod-1", source, engine)
    rev = source.commit(desired(V1, ROLLOUT))
    # a CI job with statuses: write posts the canary's success: it does not release prod
    gh.add_status(rev, "deploy/canary-1", "success", creator="github-actions[bot]")
    with capture_logs() as logs:
        r = rec.run_pass()
    assert r.outcome == "held" and engine.pulls == []
    ignored = [e for e in logs if e["event"] == "agent.fleet.statuses_ignored"]
    assert ignored and ignored[0]["creators"] == ["github-actions[bot]"]
    gh.add_status(rev, "deploy/canary-1", "success", creator="fleet-bot")
    assert rec.run_pass().outcome == "applied"
    # nor can it halt one: a failure from another login on the next revision is not counted
    nxt = source.commit(desired(V2, ROLLOUT))
    gh.add_status(nxt, "deploy/canary-1", "success", creator="fleet-bot")
    gh.add_status(nxt, "deploy/eu-9", "failure", creator="mallory")
    assert rec.run_pass().outcome == "applied"
    assert {c.digest for c in engine.of("web") if c.status == "running"} == {V2}
    assert gh.count("user") == 1  # whose the token is: asked once per process


def test_trusted_creators_in_the_config_replace_the_tokens_own_login(
        gh: FakeGitHub, tmp_path: Path) -> None:
    engine = FakeEngine()
    engine.publish(WEB, V1, HEALTHY)
    source = FakeSource()
    rec = gated_reconciler(tmp_path, gh, "prod-1", source, engine,
                           trusted=["canary-host-bot"])
    rev = source.commit(desired(V1, ROLLOUT))
    gh.add_status(rev, "deploy/canary-1", "success")  # as the default login: not listed
    assert rec.run_pass().outcome == "held"
    gh.add_status(rev, "deploy/canary-1", "success", creator="canary-host-bot")
    assert rec.run_pass().outcome == "applied"
    assert gh.count("user") == 0
