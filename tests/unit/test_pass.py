"""The reconcile pass, every path, with honest in-memory fakes (tests/fakes.py) and no
Docker: no-op, applied, stop-first and start-first rollback, a failed revision skipped and
forced, recovery from each recorded phase, a transient error at each phase, invalid input.
The e2e and fault suites prove the same paths against the real engine."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fakes import (
    CRASH,
    HEALTHY,
    NOHEALTH,
    UNHEALTHY,
    FakeCompose,
    FakeEngine,
    FakeSource,
    Killed,
    desired_yaml,
    digest_of,
)
from structlog.testing import capture_logs

from agent import health
from agent.config import parse_config
from agent.errors import StateWriteError
from agent.outcomes import PassResult
from agent.ports import GateAnswer, GateQuestion
from agent.reconcile import Reconciler

REG = "registry.test:5000"
WEB, API = f"{REG}/shop/web", f"{REG}/shop/api"
V1, V2, BAD, CRASHY = (digest_of(n) for n in ("v1", "v2", "bad", "crash"))


@dataclass
class World:
    tmp: Path
    source: FakeSource
    engine: FakeEngine
    compose: FakeCompose
    rec: Reconciler

    def release(self, web: str = V1, api: str = V1, stop_first: tuple[str, ...] = ()) -> str:
        extra = {s: {"update": "stop-first"} for s in stop_first}
        return self.source.commit(desired_yaml({"web": (WEB, web), "api": (API, api)}, extra))

    def sync(self, force: bool = False) -> tuple[PassResult, list[dict[str, Any]]]:
        with capture_logs() as logs:
            result = self.rec.run_pass(force=force)
        return result, logs

    def state(self) -> dict[str, Any]:
        return json.loads((self.tmp / "state" / "state.json").read_text())

    def running(self, service: str) -> set[str | None]:
        return {c.digest for c in self.engine.of(service) if c.status == "running"}

    def ids(self, service: str) -> set[str]:
        return {c.id for c in self.engine.of(service)}

    def restart(self) -> None:
        """A new agent process on the same state_dir, engine and compose project."""
        self.rec = _reconciler(self.tmp, self.source, self.engine, self.compose)


def _reconciler(tmp: Path, source: FakeSource, engine: FakeEngine,
                compose: FakeCompose) -> Reconciler:
    cfg = parse_config({
        "source": {"repo": "https://git.test/shop.git"},
        "compose": {"project_dir": str(tmp / "project"), "project_name": "shop"},
        "agent": {"state_dir": str(tmp / "state"), "settle_seconds": 0.0,
                  "handover_seconds": 0.0, "health_timeout_seconds": 2.0,
                  "pull_concurrency": 1},
    })
    return Reconciler(cfg, source=source, engine=engine, compose=compose,
                      sleep=lambda _s: None)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    # the confirmation window of a failing health check has its own tests (test_health.py)
    monkeypatch.setattr(health, "CONFIRM_SECONDS", 0.05)
    engine = FakeEngine()
    for image in (WEB, API):
        engine.publish(image, V1, HEALTHY)
        engine.publish(image, V2, HEALTHY)
        engine.publish(image, BAD, UNHEALTHY)
        engine.publish(image, CRASHY, CRASH)
    compose = FakeCompose(engine, model={"web": {}, "api": {}})
    source = FakeSource()
    yield World(tmp_path, source, engine, compose,
                _reconciler(tmp_path, source, engine, compose))


@pytest.fixture
def deployed(world: World) -> World:
    world.release(V1, V1)
    result, _ = world.sync()
    assert result.outcome == "applied"
    return world


# ------------------------------------------------------------------ applied / no-op
def test_first_pass_pulls_then_applies_and_records_known_good(world: World) -> None:
    rev = world.release(V1, V1)
    result, logs = world.sync()
    assert (result.outcome, result.exit_code, result.revision) == ("applied", 0, rev)
    assert world.running("web") == {V1} and world.running("api") == {V1}
    events = [e["event"] for e in logs]
    assert events.index("agent.pull.done") < events.index("agent.apply.started")
    st = world.state()
    assert st["known_good"]["web"]["digest"] == V1 and st["in_flight"] is None
    assert st["last_applied"]["revision"] == rev


def test_an_idle_pass_is_a_no_op_that_touches_nothing(deployed: World) -> None:
    before = deployed.ids("web") | deployed.ids("api")
    ups = len(deployed.compose.ups)
    deployed.engine.calls.clear()
    result, _ = deployed.sync()
    assert (result.outcome, result.exit_code) == ("no-op", 0)
    assert deployed.ids("web") | deployed.ids("api") == before
    assert deployed.engine.calls == ["observe"]  # one read-only engine call
    assert len(deployed.compose.ups) == ups  # no compose call


def test_a_new_digest_recreates_only_that_service(deployed: World) -> None:
    api_ids = deployed.ids("api")
    deployed.release(V2, V1)
    result, _ = deployed.sync()
    assert result.outcome == "applied"
    assert [c.service for c in result.changes] == ["web"]
    assert deployed.running("web") == {V2} and deployed.ids("api") == api_ids


def test_start_first_starts_the_new_container_beside_the_old_then_retires_it(
        deployed: World) -> None:
    old = deployed.ids("web")
    deployed.release(V2, V1)
    result, logs = deployed.sync()
    assert result.outcome == "applied"
    assert deployed.compose.ups[-1] == (["web"], {"web": 2}, True)
    assert old <= set(deployed.engine.removed)
    assert deployed.running("web") == {V2} and len(deployed.engine.of("web")) == 1
    assert "agent.apply.retiring" in [e["event"] for e in logs]


def test_every_phase_of_a_release_is_recorded_in_history(deployed: World) -> None:
    deployed.release(V2, V1)
    result, _ = deployed.sync()
    assert result.outcome == "applied"
    phases = deployed.state()["history"][0]["phases"]
    assert {"fetch", "validate", "observe", "pull", "apply", "health"} <= set(phases)
    assert all(isinstance(v, float) and v >= 0 for v in phases.values())
    assert phases == result.phases


def test_a_rolled_back_release_records_its_rollback_phase(deployed: World) -> None:
    deployed.release(BAD, V1, stop_first=("web", "api"))
    result, _ = deployed.sync()
    assert result.outcome == "rolled-back"
    assert {"apply", "health", "rollback"} <= set(deployed.state()["history"][0]["phases"])


# ------------------------------------------------------------------ rolled back
def test_an_unhealthy_stop_first_release_is_rolled_back_and_marked_failed(
        deployed: World) -> None:
    rev = deployed.release(BAD, V2, stop_first=("web", "api"))
    result, logs = deployed.sync()
    assert (result.outcome, result.exit_code) == ("rolled-back", 1)
    assert "web" in (result.reason or "") and "unhealthy" in (result.reason or "")
    assert deployed.running("web") == {V1} and deployed.running("api") == {V1}
    st = deployed.state()
    assert rev in st["failed_revisions"] and st["in_flight"] is None
    assert st["known_good"]["web"]["digest"] == V1
    assert "agent.rollback.done" in [e["event"] for e in logs]


def test_a_start_first_rollback_keeps_the_old_container_that_never_stopped(
        deployed: World) -> None:
    old = deployed.ids("web")
    deployed.release(BAD, V1)
    result, logs = deployed.sync()
    assert result.outcome == "rolled-back"
    assert deployed.ids("web") == old and deployed.running("web") == {V1}
    assert "agent.rollback.start_first" in [e["event"] for e in logs]


def test_a_crashing_container_fails_the_release(deployed: World) -> None:
    deployed.release(CRASHY, V1)
    result, _ = deployed.sync()
    assert result.outcome == "rolled-back" and "exited" in (result.reason or "")
    assert deployed.running("web") == {V1}


def test_compose_failing_to_apply_rolls_back(deployed: World) -> None:
    rev = deployed.release(V2, V2, stop_first=("web", "api"))
    deployed.compose.fail_up = 1
    result, _ = deployed.sync()
    assert (result.outcome, result.exit_code) == ("rolled-back", 1)
    assert "docker compose up failed" in (result.reason or "")
    assert rev in deployed.state()["failed_revisions"]
    assert deployed.running("web") == {V1} and deployed.running("api") == {V1}


def test_a_service_with_no_earlier_release_is_removed_on_rollback(world: World) -> None:
    rev = world.release(BAD, V1)
    result, logs = world.sync()
    assert result.outcome == "rolled-back"
    # the whole release is reverted: neither service had run before
    assert world.engine.of("web") == [] and world.engine.of("api") == []
    assert rev in world.state()["failed_revisions"]
    assert "agent.rollback.removing" in [e["event"] for e in logs]


# ------------------------------------------------------------------ skipped / forced
def test_a_failed_revision_is_skipped_until_forced(deployed: World) -> None:
    rev = deployed.release(BAD, V1)
    assert deployed.sync()[0].outcome == "rolled-back"
    before = deployed.ids("web")
    result, _ = deployed.sync()
    assert (result.outcome, result.exit_code) == ("skipped", 1)
    assert deployed.ids("web") == before
    deployed.engine.publish(WEB, BAD, HEALTHY)  # whatever was wrong got fixed
    result, logs = deployed.sync(force=True)
    assert (result.outcome, result.forced) == ("applied", True)
    assert "agent.sync.forced" in [e["event"] for e in logs]
    assert rev not in deployed.state()["failed_revisions"]
    assert deployed.running("web") == {BAD}


def test_a_new_commit_after_a_failed_one_is_released(deployed: World) -> None:
    deployed.release(BAD, V1)
    deployed.sync()
    deployed.release(V2, V1)
    result, _ = deployed.sync()
    assert result.outcome == "applied" and deployed.running("web") == {V2}


# ------------------------------------------------------------------ failed before touching
def test_a_digest_the_registry_lacks_fails_before_anything_is_touched(deployed: World) -> None:
    before = deployed.ids("web") | deployed.ids("api")
    rev = deployed.release(digest_of("never-pushed"), V1)
    result, _ = deployed.sync()
    assert (result.outcome, result.exit_code) == ("failed", 1)
    assert deployed.ids("web") | deployed.ids("api") == before
    assert rev in deployed.state()["failed_revisions"]
    assert deployed.state()["in_flight"] is None


def test_refused_credentials_fail_the_pass_without_marking_the_revision(
        deployed: World) -> None:
    rev = deployed.release(V2, V1)
    deployed.engine.denied.add(REG)
    result, logs = deployed.sync()
    assert (result.outcome, result.exit_code) == ("failed", 1)
    assert rev not in deployed.state()["failed_revisions"]
    assert "agent.pull.unauthorized" in [e["event"] for e in logs]
    deployed.engine.denied.clear()
    assert deployed.sync()[0].outcome == "applied"


# ------------------------------------------------------------------ invalid
def test_an_invalid_revision_is_stalled_and_touches_nothing(deployed: World) -> None:
    before = deployed.ids("web") | deployed.ids("api")
    rev = deployed.source.commit(b"version: 1\nservices: [oops\n")
    result, logs = deployed.sync()
    assert (result.outcome, result.exit_code, result.revision) == ("invalid", 2, rev)
    assert deployed.ids("web") | deployed.ids("api") == before
    assert "agent.desired.invalid" in [e["event"] for e in logs]
    assert deployed.state()["last_attempted"]["outcome"] == "invalid"


def test_a_service_missing_from_compose_is_invalid(deployed: World) -> None:
    deployed.source.commit(desired_yaml({"web": (WEB, V1), "cache": (API, V1)}))
    result, _ = deployed.sync()
    assert result.outcome == "invalid" and "cache" in (result.reason or "")


# ------------------------------------------------------------------ transient at each phase
def test_source_down_is_transient_after_retries(deployed: World) -> None:
    deployed.release(V2, V1)
    deployed.source.down = 10
    result, logs = deployed.sync()
    assert (result.outcome, result.exit_code) == ("error", 3)
    assert "agent.fetch.retry_scheduled" in [e["event"] for e in logs]
    assert deployed.running("web") == {V1}


def test_source_blip_is_retried_within_the_pass(deployed: World) -> None:
    deployed.release(V2, V1)
    deployed.source.down = 1
    assert deployed.sync()[0].outcome == "applied"


def test_engine_down_at_observe_is_transient(deployed: World) -> None:
    deployed.release(V2, V1)
    deployed.engine.down = True
    result, _ = deployed.sync()
    assert (result.outcome, result.exit_code) == ("error", 3)
    deployed.engine.down = False
    assert deployed.sync()[0].outcome == "applied"


def test_registry_down_aborts_before_touching_and_is_retried_next_pass(
        deployed: World) -> None:
    rev = deployed.release(V2, V1)
    before = deployed.ids("web")
    deployed.engine.registry_down = 100
    result, _ = deployed.sync()
    assert (result.outcome, result.exit_code) == ("error", 1)
    assert deployed.ids("web") == before and rev not in deployed.state()["failed_revisions"]
    deployed.engine.registry_down = 0
    assert deployed.sync()[0].outcome == "applied"


def test_engine_lost_during_apply_is_transient_and_keeps_the_intent(deployed: World) -> None:
    rev = deployed.release(V2, V1, stop_first=("web",))
    deployed.compose.fail_up = 1

    def fail_and_vanish(*a: Any, **k: Any) -> None:
        deployed.engine.down = True
        raise AssertionError("unreachable")

    deployed.engine.down = False
    orig_up = deployed.compose.up

    def up(services: Any, **kw: Any) -> None:
        try:
            orig_up(services, **kw)
        finally:
            deployed.engine.down = True  # the engine went away while compose ran

    deployed.compose.up = up  # type: ignore[method-assign]
    result, _ = deployed.sync()
    assert (result.outcome, result.exit_code) == ("error", 3)
    st = deployed.state()
    assert rev not in st["failed_revisions"] and st["in_flight"]["revision"] == rev
    deployed.compose.up = orig_up  # type: ignore[method-assign]
    deployed.engine.down = False
    result, logs = deployed.sync()
    assert result.outcome == "applied" and deployed.running("web") == {V2}
    assert "agent.recover.in_flight" in [e["event"] for e in logs]


def test_engine_lost_during_the_health_wait_is_not_a_failed_release(deployed: World) -> None:
    rev = deployed.release(V2, V1)
    deployed.engine.lose_engine_on_detail = True
    result, logs = deployed.sync()
    assert (result.outcome, result.exit_code) == ("error", 3)
    assert "agent.health.engine_lost" in [e["event"] for e in logs]
    st = deployed.state()
    assert rev not in st["failed_revisions"] and st["in_flight"]["phase"] == "verify"
    deployed.engine.down = False
    result, _ = deployed.sync()
    assert result.outcome == "applied" and deployed.running("web") == {V2}
    assert deployed.state()["in_flight"] is None


# ------------------------------------------------------------------ killed at a phase
@pytest.mark.parametrize("call", ["compose-up", "observe-detail"])
def test_killed_during_a_release_converges_on_the_new_release(deployed: World,
                                                              call: str) -> None:
    deployed.release(V2, V2, stop_first=("web",))
    deployed.engine.kill_on = call
    with pytest.raises(Killed):
        deployed.sync()
    st = deployed.state()
    assert st["in_flight"]["phase"] == ("apply" if call == "compose-up" else "verify")
    deployed.engine.kill_on = None
    deployed.restart()
    result, logs = deployed.sync()
    assert result.outcome == "applied", result.reason
    assert "agent.recover.in_flight" in [e["event"] for e in logs]
    assert deployed.running("web") == {V2} and deployed.running("api") == {V2}
    assert deployed.state()["in_flight"] is None
    assert deployed.sync()[0].outcome == "no-op"


def test_killed_between_two_update_groups_converges_on_the_new_release(
        deployed: World) -> None:
    """stop-first web applied, start-first api not yet: a mix never released."""
    deployed.release(V2, V2, stop_first=("web",))
    deployed.compose.kill_on_up = 3  # 1: the first release; 2: web's group; 3: api's
    with pytest.raises(Killed):
        deployed.sync()
    assert deployed.running("web") == {V2} and deployed.running("api") == {V1}
    deployed.compose.kill_on_up = None
    deployed.restart()
    result, _ = deployed.sync()
    assert result.outcome == "applied"
    assert deployed.running("web") == {V2} and deployed.running("api") == {V2}


def test_killed_during_rollback_converges_on_the_previous_release(deployed: World) -> None:
    rev = deployed.release(BAD, V2, stop_first=("web", "api"))
    deployed.compose.kill_on_up = 3  # 2: the release; 3: the rollback's recreate
    with pytest.raises(Killed):
        deployed.sync()
    st = deployed.state()
    assert st["in_flight"]["phase"] == "rollback" and rev in st["failed_revisions"]
    deployed.compose.kill_on_up = None
    deployed.restart()
    result, logs = deployed.sync()
    assert "agent.recover.in_flight" in [e["event"] for e in logs]
    assert deployed.running("web") == {V1} and deployed.running("api") == {V1}
    assert deployed.state()["in_flight"] is None
    assert deployed.sync()[0].outcome == "skipped"


# ------------------------------------------------------------------ state_dir faults
def test_a_full_state_dir_after_the_intent_never_skips_the_rollback(
        deployed: World, monkeypatch: pytest.MonkeyPatch) -> None:
    rev = deployed.release(BAD, V1, stop_first=("web",))
    store = deployed.rec.store
    real_save = store.save
    saves = {"n": 0}

    def save(state: Any) -> None:
        saves["n"] += 1
        if saves["n"] > 1:  # the intent is written; everything after hits a full disk
            raise StateWriteError("cannot write state.json: No space left on device")
        real_save(state)

    monkeypatch.setattr(store, "save", save)
    result, logs = deployed.sync()
    assert result.outcome == "rolled-back"
    assert deployed.running("web") == {V1}
    assert "agent.state.write_failed" in [e["event"] for e in logs]
    monkeypatch.setattr(store, "save", real_save)
    deployed.restart()
    result, _ = deployed.sync()  # the recorded intent: converges, then records
    assert deployed.running("web") == {V1}
    assert result.outcome in ("no-op", "applied", "rolled-back")
    assert rev in deployed.state()["failed_revisions"] or result.outcome != "applied"


def test_when_every_write_after_the_intent_fails_the_rollback_still_runs_and_says_so(
        deployed: World, monkeypatch: pytest.MonkeyPatch) -> None:
    deployed.release(BAD, V1, stop_first=("web",))
    store = deployed.rec.store
    real_save = store.save
    saves = {"n": 0}

    def save(state: Any) -> None:
        saves["n"] += 1
        if saves["n"] > 1:  # the intent is on disk; then the disk is full for good
            raise StateWriteError("cannot write state.json: No space left on device")
        real_save(state)

    monkeypatch.setattr(store, "save", save)
    result, logs = deployed.sync()
    assert result.outcome == "rolled-back" and result.exit_code != 0
    assert deployed.running("web") == {V1}
    assert "not recorded in state_dir: cannot write state.json: No space left" in (
        result.reason or "")
    assert [e["event"] for e in logs].count("agent.state.write_failed") >= 2


def test_an_unwritable_state_dir_refuses_to_act(deployed: World) -> None:
    deployed.release(V2, V1)
    state_dir = deployed.tmp / "state"
    before = deployed.ids("web")
    deployed.rec.store.probe_writable = lambda: (_ for _ in ()).throw(  # type: ignore[method-assign]
        StateWriteError(f"cannot write {state_dir}/.probe: Read-only file system"))
    result, _ = deployed.sync()
    assert (result.outcome, result.exit_code) == ("error", 4)
    assert deployed.ids("web") == before


# ------------------------------------------------------------------ degraded / unverified
def test_a_crashed_managed_service_makes_an_idle_pass_degraded(deployed: World) -> None:
    for c in deployed.engine.of("api"):
        c.health = "unhealthy"
    result, _ = deployed.sync()
    assert (result.outcome, result.exit_code) == ("degraded", 1)
    assert "api is unhealthy" in (result.reason or "")


def test_a_service_running_an_unverified_digest_is_verified_not_recreated(
        world: World) -> None:
    world.release(V1, V1)
    # containers already at the target (an earlier agent applied and died before verifying)
    for svc, image in (("web", WEB), ("api", API)):
        world.engine.local.add(f"{image}@{V1}")
        world.engine.start(svc, f"{image}@{V1}")
    ids = world.ids("web") | world.ids("api")
    result, _ = world.sync()
    assert result.outcome == "applied" and result.changes == []
    assert world.ids("web") | world.ids("api") == ids


def test_unmanaged_compose_services_start_alongside_a_release(deployed: World) -> None:
    deployed.compose.model["side"] = {"image": "side@" + V1}
    deployed.engine.local.add("side@" + V1)
    deployed.engine.publish("side", V1, NOHEALTH)
    deployed.release(V2, V1)
    result, _ = deployed.sync()
    assert result.outcome == "applied" and len(deployed.engine.of("side")) == 1


# ------------------------------------------------------------------ observers
class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail = fail

    def release_started(self, revision: str, services: Any) -> None:
        self.calls.append(("started", list(services)))
        if self.fail:
            raise RuntimeError("observer broke")

    def pass_finished(self, result: PassResult) -> None:
        self.calls.append(("finished", result.outcome))
        if self.fail:
            raise RuntimeError("observer broke")


def test_observers_hear_a_release_and_cannot_break_it(world: World) -> None:
    good, broken = Recorder(), Recorder(fail=True)
    world.rec.observers = [broken, good]
    world.release(V1, V1)
    result, logs = world.sync()
    assert result.outcome == "applied"
    assert good.calls == [("started", ["api", "web"]), ("finished", "applied")]
    assert "agent.report.observer_failed" in [e["event"] for e in logs]
    assert result.services["web"].digest == V1 and result.services["web"].health == "healthy"
    world.sync()
    assert good.calls[-1] == ("finished", "no-op") and len(good.calls) == 3


# ------------------------------------------------------------------ gates
class Gatekeeper:
    def __init__(self, answer: GateAnswer | None) -> None:
        self.answer = answer
        self.asked: list[GateQuestion] = []

    def check(self, question: GateQuestion) -> GateAnswer | None:
        self.asked.append(question)
        return self.answer


def test_a_gate_ends_the_pass_before_anything_is_pulled_or_touched(deployed: World) -> None:
    before = deployed.ids("web")
    pulls = list(deployed.engine.pulls)
    rev = deployed.release(V2, V1)
    gate = Gatekeeper(GateAnswer("held", "waiting for wave canary"))
    deployed.rec.gates = [gate]
    result, logs = deployed.sync()
    assert (result.outcome, result.exit_code, result.reason) == (
        "held", 0, "waiting for wave canary")
    assert deployed.ids("web") == before and deployed.engine.pulls == pulls
    assert gate.asked == [GateQuestion(rev, ("web",), converging=False, force=False)]
    assert "agent.gate.held" in [e["event"] for e in logs]
    assert deployed.state()["last_attempted"]["outcome"] == "held"
    deployed.sync()
    assert deployed.state()["history"][0]["repeats"] == 2  # folded like idle passes


def test_gates_that_let_the_pass_go_on_see_a_converging_failed_revision(deployed: World) -> None:
    deployed.release(BAD, V1)
    gate = Gatekeeper(None)
    deployed.rec.gates = [gate]
    assert deployed.sync()[0].outcome == "rolled-back"
    deployed.sync()
    assert [q.converging for q in gate.asked] == [False, True]
