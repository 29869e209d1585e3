"""The release-hook port (agent/hooks.py): the pass and the operator rollback call every
hook at its phase — validated, hashes, labels (each pin), before_apply after the intent is
on disk, applied once the target runs healthy, undo (last hook first) when a release fails —
and never ask which features are on. Honest fakes (tests/fakes.py), no Docker."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fakes import HEALTHY, UNHEALTHY, FakeCompose, FakeEngine, FakeSource, desired_yaml, digest_of

from agent import health
from agent.config import parse_config
from agent.plan import Release
from agent.reconcile import Reconciler
from agent.retention import Retention
from agent.rollback import run_rollback
from agent.state import AgentState

REG = "registry.test:5000"
WEB = f"{REG}/shop/web"
V1, V2, BAD = (digest_of(n) for n in ("v1", "v2", "bad"))


@dataclass
class Recorder:
    """A release hook that writes down each call, and what state.json said at the time."""

    state_file: Path
    calls: list[tuple[str, Any]] = field(default_factory=list)
    fail_in: str | None = None

    def _note(self, name: str, detail: Any = None) -> None:
        self.calls.append((name, detail))
        if name == self.fail_in:
            raise RuntimeError(f"hook failed in {name}")

    def validated(self, revision: str, *, failed: bool) -> None:
        self._note("validated", (revision, failed))

    def hashes(self, staged: object, target: Mapping[str, Any]) -> None:
        self._note("hashes", sorted(target))

    def labels(self) -> None:
        self._note("labels")

    def before_apply(self, staged: object) -> bool:
        intent = json.loads(self.state_file.read_text()).get("in_flight")
        self._note("before_apply", intent is not None)
        return False

    def applied(self, state: AgentState, staged: object, services: Mapping[str, Any],
                observed: object, release: Release | None) -> None:
        self._note("applied", None if release is None else release.revision)

    def undo(self, release: Release) -> None:
        self._note("undo", release.revision)

    def names(self) -> list[str]:
        return [n for n, _ in self.calls if n != "labels"]


@pytest.fixture
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Reconciler, FakeSource,
                                                                   FakeEngine, Recorder]:
    monkeypatch.setattr(health, "CONFIRM_SECONDS", 0.05)
    engine = FakeEngine()
    for d, h in ((V1, HEALTHY), (V2, HEALTHY), (BAD, UNHEALTHY)):
        engine.publish(WEB, d, h)
    source = FakeSource()
    cfg = parse_config({
        "source": {"repo": "https://git.test/shop.git"},
        "compose": {"project_dir": str(tmp_path / "project"), "project_name": "shop"},
        "agent": {"state_dir": str(tmp_path / "state"), "settle_seconds": 0.0,
                  "handover_seconds": 0.0, "health_timeout_seconds": 2.0},
    })
    rec = Reconciler(cfg, source=source, engine=engine,
                     compose=FakeCompose(engine, model={"web": {}}), sleep=lambda _s: None)
    recorder = Recorder(tmp_path / "state" / "state.json")
    rec.releaser.hooks.append(recorder)
    return rec, source, engine, recorder


def _release(source: FakeSource, digest: str) -> str:
    return source.commit(desired_yaml({"web": (WEB, digest)}, {"web": {"update": "stop-first"}}))


def test_a_release_calls_each_hook_at_its_phase_with_the_intent_on_disk_before_apply(
        shop: tuple[Reconciler, FakeSource, FakeEngine, Recorder]) -> None:
    rec, source, _, hook = shop
    rev = _release(source, V1)
    assert rec.run_pass().outcome == "applied"
    assert hook.names() == ["validated", "hashes", "before_apply", "applied"]
    assert dict(hook.calls)["validated"] == (rev, False)
    assert dict(hook.calls)["before_apply"] is True  # the intent was recorded first
    assert dict(hook.calls)["applied"] == rev
    assert ("labels", None) in hook.calls  # every pin asks for the hooks' labels


def test_a_failed_release_undoes_its_hooks_and_never_calls_applied(
        shop: tuple[Reconciler, FakeSource, FakeEngine, Recorder]) -> None:
    rec, source, _, hook = shop
    _release(source, V1)
    rec.run_pass()
    hook.calls.clear()
    bad = _release(source, BAD)
    assert rec.run_pass().outcome == "rolled-back"
    assert hook.names() == ["validated", "hashes", "before_apply", "undo"]
    assert dict(hook.calls)["undo"] == bad
    # the failed revision converges on what was applied: the hook is told it failed
    hook.calls.clear()
    assert rec.run_pass().outcome == "skipped"
    assert dict(hook.calls)["validated"] == (bad, True)


def test_an_idle_pass_tells_the_hooks_the_target_runs_without_a_release(
        shop: tuple[Reconciler, FakeSource, FakeEngine, Recorder]) -> None:
    rec, source, engine, hook = shop
    _release(source, V1)
    rec.run_pass()
    hook.calls.clear()
    engine.calls.clear()
    assert rec.run_pass().outcome == "no-op"
    assert hook.names() == ["validated", "hashes", "before_apply", "applied"]
    assert dict(hook.calls)["applied"] is None
    assert engine.calls == ["observe"]  # retention prunes after releases only


def test_retention_as_a_hook_prunes_after_a_release_only(
        shop: tuple[Reconciler, FakeSource, FakeEngine, Recorder]) -> None:
    rec, source, engine, _ = shop
    assert any(isinstance(h, Retention) for h in rec.releaser.hooks)
    _release(source, V1)
    engine.calls.clear()
    assert rec.run_pass().outcome == "applied"
    assert "local_images" in engine.calls


def _two_releases(rec: Reconciler, source: FakeSource) -> str:
    """V1 then V2 applied; the first release's revision (the rollback target)."""
    first = _release(source, V1)
    assert rec.run_pass().outcome == "applied"
    _release(source, V2)
    assert rec.run_pass().outcome == "applied"
    return first


def _digests_of(rec: Reconciler, revision: str) -> dict[str, Any]:
    [release] = [r for r in rec.store.load().releases if r.revision == revision]
    return dict(release.digests)


def test_the_operator_rollback_runs_the_same_hooks_in_the_same_envelope(
        shop: tuple[Reconciler, FakeSource, FakeEngine, Recorder]) -> None:
    rec, source, _, hook = shop
    r1 = _two_releases(rec, source)
    hook.calls.clear()
    result = run_rollback(rec, r1, _digests_of(rec, r1))
    assert result.outcome == "applied"
    assert hook.names() == ["validated", "hashes", "before_apply", "applied"]
    assert dict(hook.calls)["validated"] == (r1, False)
    history = rec.store.load().history
    assert history[0].revision == r1 and history[0].outcome == "applied"
    assert {"observe", "apply", "health"} <= set(history[0].phases)


def test_a_crash_inside_an_operator_rollback_is_recorded_and_keeps_the_intent(
        shop: tuple[Reconciler, FakeSource, FakeEngine, Recorder]) -> None:
    rec, source, _, hook = shop
    r1 = _two_releases(rec, source)
    hook.fail_in = "before_apply"
    with pytest.raises(RuntimeError, match="hook failed in before_apply"):
        run_rollback(rec, r1, _digests_of(rec, r1))
    state = rec.store.load()
    assert state.last_attempted is not None and state.last_attempted.outcome == "error"
    assert state.in_flight is not None and state.in_flight.revision == r1
