"""Health verdicts: ``judge`` (pure) and ``wait_healthy`` driven by a fake clock."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pytest

from agent import health
from agent.errors import DockerUnavailable
from agent.health import judge, service_health, snapshot_problems, wait_healthy
from agent.plan import ObservedContainer

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def c(status: str = "running", health: str | None = None, *, digest: str = D2,
      cid: str = "c1", restarts: int = 0, exit_code: int = 0, output: str = "",
      service: str = "web") -> ObservedContainer:
    return ObservedContainer(
        service=service, container_id=cid, name=f"{service}-{cid}", image_ref="a/web",
        digest=digest, status=status, health=health, restart_count=restarts,
        exit_code=exit_code, health_output=output,
    )


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.t += seconds


Obs = Mapping[str, Sequence[ObservedContainer]]


def run(observe: Callable[[], Obs], clock: FakeClock, *, services: Sequence[str] = ("web",),
        timeout: float = 30, settle: float = 0,
        digests: Mapping[str, str] | None = None) -> str | None:
    return wait_healthy(observe=observe, services=services,
                        digests=digests or dict.fromkeys(services, D2), timeout=timeout,
                        settle=settle, clock=clock, sleep=clock.sleep)


def script(*steps: Obs | Exception) -> Callable[[], Obs]:
    """observe() returning each step in turn, then the last one forever."""
    calls = {"n": 0}

    def observe() -> Obs:
        i = min(calls["n"], len(steps) - 1)
        calls["n"] += 1
        step = steps[i]
        if isinstance(step, Exception):
            raise step
        return step

    observe.calls = calls  # type: ignore[attr-defined]
    return observe


# ------------------------------------------------------------------------- judge
def test_judge_healthy_container_at_digest_is_ok():
    assert judge([c(health="healthy")], D2, {}, 0, 10).state == "ok"


def test_judge_waits_while_no_container_runs_the_new_digest():
    v = judge([c(health="healthy", digest=D1)], D2, {}, 0, 10)
    assert (v.state, v.detail) == ("wait", "no container at the new digest yet")


def test_judge_unhealthy_fails_with_the_check_output():
    v = judge([c(health="unhealthy", output="curl: (7) connection refused")], D2, {}, 0, 10)
    assert v.state == "fail"
    assert v.detail == "container web-c1 is unhealthy: curl: (7) connection refused"


def test_judge_exit_code_zero_is_a_failure():
    v = judge([c("exited", exit_code=0)], D2, {}, 0, 10)
    assert v.state == "fail" and "exited with code 0" in v.detail


def test_judge_dead_container_is_a_failure():
    assert judge([c("dead", exit_code=137)], D2, {}, 0, 10).state == "fail"


def test_judge_restarting_container_is_crash_looping():
    v = judge([c("restarting", restarts=3)], D2, {}, 0, 10)
    assert v.state == "fail" and "crash-looping (restarted 3 times)" in v.detail


def test_judge_restart_count_increase_since_first_seen_is_crash_looping():
    v = judge([c(restarts=2)], D2, {"c1": (0.0, 1)}, 5, 10)
    assert v.state == "fail" and "crash-looping" in v.detail


def test_judge_without_healthcheck_waits_for_settle_time():
    v = judge([c()], D2, {"c1": (0.0, 0)}, 4, 10)
    assert v.state == "wait" and "settle time" in v.detail
    assert judge([c()], D2, {"c1": (0.0, 0)}, 10, 10).state == "ok"


def test_judge_health_starting_waits():
    v = judge([c(health="starting")], D2, {}, 0, 10)
    assert v == type(v)("wait", "web-c1 health starting")


def test_judge_one_bad_replica_fails_the_service():
    v = judge([c(health="healthy", cid="a"), c(health="unhealthy", cid="b")], D2, {}, 0, 0)
    assert v.state == "fail" and "web-b" in v.detail


def test_judge_ignores_old_digest_containers_being_replaced():
    v = judge([c("exited", digest=D1, cid="old"), c(health="healthy")], D2, {}, 0, 0)
    assert v.state == "ok"


# ------------------------------------------------------------------------- wait_healthy
def test_wait_healthy_returns_none_when_healthy_at_once():
    clock = FakeClock()
    assert run(script({"web": [c(health="healthy")]}), clock) is None
    assert clock.sleeps == []


def test_wait_healthy_waits_through_starting_until_healthy():
    clock = FakeClock()
    obs = script({"web": [c(health="starting")]}, {"web": [c(health="starting")]},
                 {"web": [c(health="healthy")]})
    assert run(obs, clock) is None
    assert obs.calls["n"] == 3  # type: ignore[attr-defined]


def test_wait_healthy_unhealthy_fails_after_confirmation_with_the_check_output():
    """No waiting out the timeout: only the short confirmation window."""
    clock = FakeClock()
    obs = script({"web": [c(health="unhealthy", output="HTTP 500 from /healthz")]})
    reason = run(obs, clock, timeout=120)
    assert reason == "web: container web-c1 is unhealthy: HTTP 500 from /healthz"
    assert sum(clock.sleeps) < health.CONFIRM_SECONDS + 1


def test_wait_healthy_exit_code_zero_counts_as_failure():
    clock = FakeClock()
    reason = run(script({"web": [c()]}, {"web": [c("exited", exit_code=0)]}), clock, settle=10)
    assert reason == "web: container web-c1 exited with code 0"


def test_wait_healthy_restart_count_increase_is_a_crash_loop():
    clock = FakeClock()
    obs = script({"web": [c(restarts=0)]}, {"web": [c(restarts=1)]})
    reason = run(obs, clock, settle=10)
    assert reason is not None
    assert reason.startswith("web: container web-c1 is crash-looping")
    assert clock.t - 1000.0 < 10


def test_wait_healthy_without_healthcheck_needs_the_settle_time():
    clock = FakeClock()
    assert run(script({"web": [c()]}), clock, settle=10, timeout=60) is None
    assert 10 <= clock.t - 1000.0 < 11


def test_wait_healthy_settle_time_counts_from_first_seen_running():
    clock = FakeClock()
    obs = script({"web": [c("created")]}, {"web": [c("created")]}, {"web": [c()]})
    assert run(obs, clock, settle=5, timeout=60) is None
    assert clock.t - 1000.0 >= 5 + 2 * health.POLL_SECONDS  # two polls before it ran


def test_wait_healthy_timeout_names_the_service_and_what_it_waited_for():
    clock = FakeClock()
    reason = run(script({"web": [c(health="starting")]}), clock, timeout=30)
    assert reason == "not healthy within 30s (web: web-c1 health starting)"
    assert 30 <= clock.t - 1000.0 < 31


def test_wait_healthy_with_the_engine_gone_is_transient_not_a_verdict():
    clock = FakeClock()
    with pytest.raises(DockerUnavailable, match="went away during the health wait"):
        run(script(DockerUnavailable("engine restarting")), clock, timeout=2)


def test_a_failure_seen_after_the_engine_went_away_is_not_judged():
    """A daemon restart stops the containers: "exited" afterwards is the host's weather."""
    clock = FakeClock()
    obs = script(DockerUnavailable("restarting"),
                 {"web": [c(status="exited", health=None)]})
    with pytest.raises(DockerUnavailable, match="exited"):
        run(obs, clock)


def test_wait_healthy_tolerates_transient_observe_errors():
    clock = FakeClock()
    obs = script(DockerUnavailable("restarting"), DockerUnavailable("restarting"),
                 {"web": [c(health="healthy")]})
    assert run(obs, clock) is None
    assert obs.calls["n"] == 3  # type: ignore[attr-defined]


def test_wait_healthy_propagates_non_transient_observe_errors():
    with pytest.raises(KeyError):
        run(script(KeyError("bug")), FakeClock())


def test_wait_healthy_waits_for_every_service():
    clock = FakeClock()
    obs = script(
        {"web": [c(health="healthy")], "api": [c(health="starting", service="api", cid="a")]},
        {"web": [c(health="healthy")], "api": [c(health="healthy", service="api", cid="a")]},
    )
    assert run(obs, clock, services=["web", "api"]) is None


def test_wait_healthy_reports_the_service_that_failed():
    clock = FakeClock()
    obs = script({"web": [c(health="healthy")],
                  "api": [c("exited", exit_code=1, service="api", cid="a")]})
    assert run(obs, clock, services=["web", "api"]) == "api: container api-a exited with code 1"


def test_wait_healthy_timeout_lists_only_services_still_pending():
    clock = FakeClock()
    obs = script({"web": [c(health="healthy")], "api": []})
    reason = run(obs, clock, services=["web", "api"], timeout=5)
    assert reason == "not healthy within 5s (api: no container at the new digest yet)"


def test_wait_healthy_polls_without_overshooting_the_deadline():
    clock = FakeClock()
    run(script({"web": [c(health="starting")]}), clock, timeout=1)
    assert all(0 <= s <= 0.25 for s in clock.sleeps)
    assert clock.t - 1000.0 == pytest.approx(1.0)


# ------------------------------------------------------------------------- status words
def test_service_health_words():
    assert service_health([]) == "missing"
    assert service_health([c(health="healthy")]) == "healthy"
    assert service_health([c()]) == "running"
    assert service_health([c(health="healthy", cid="a"), c(health="unhealthy", cid="b")]) == \
        "unhealthy"
    assert service_health([c(health="healthy", cid="a"), c("exited", cid="b")]) == "exited"


def test_snapshot_problems_lists_services_not_healthy_or_running():
    observed = {"web": [c(health="healthy")], "api": [c("restarting", service="api")]}
    assert snapshot_problems({"web": 1, "api": 1, "db": 1}, observed) == [
        "api is restarting", "db is missing"
    ]


def test_a_failure_is_confirmed_before_it_is_the_verdict():
    """Seen failing, then the engine goes away within the confirmation window: a daemon
    shutting down stopped the container, so the release is not judged."""
    clock = FakeClock()
    obs = script({"web": [c(status="exited", health=None)]}, DockerUnavailable("gone"))
    with pytest.raises(DockerUnavailable, match="exited"):
        run(obs, clock)


def test_a_confirmed_failure_takes_the_confirmation_window_and_no_longer():
    clock = FakeClock()
    t0 = clock()
    reason = run(script({"web": [c(health="unhealthy", output="HTTP 500")]}), clock)
    assert reason == "web: container web-c1 is unhealthy: HTTP 500"
    assert health.CONFIRM_SECONDS <= clock() - t0 < health.CONFIRM_SECONDS + 1


# ------------------------------------------------------------------------- the default clock
def test_a_wait_without_its_own_clock_runs_on_the_process_clock_use_clock_sets():
    """What the unit tier relies on (tests/unit/conftest.py): a pass's health wait, which
    passes no clock, polls on the clock ``use_clock`` installed and sleeps only through it."""
    clock = FakeClock()
    health.use_clock(clock, clock.sleep)
    try:
        reason = wait_healthy(observe=script({"web": [c(health="unhealthy", output="HTTP 500")]}),
                              services=["web"], digests={"web": D2}, timeout=30, settle=0)
    finally:
        health.use_clock(None, None)
    assert reason == "web: container web-c1 is unhealthy: HTTP 500"
    assert health.CONFIRM_SECONDS <= sum(clock.sleeps) < health.CONFIRM_SECONDS + 1
    assert clock.t - 1000.0 == pytest.approx(sum(clock.sleeps))


def test_use_clock_with_nothing_restores_the_monotonic_clock_and_real_sleep():
    import time

    health.use_clock(FakeClock(), lambda _s: None)
    health.use_clock(None, None)
    assert health._clock is time.monotonic and health._sleep is time.sleep
