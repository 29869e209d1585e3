"""The pass with the Swarm platform (``[engine] kind = "swarm"``) on honest fakes: the same
Reconciler, Swarm's rolling update and its own rollback as states of a service. What the
real Swarm does is proved in e2e/test_swarm.py; this is the pass-to-platform contract."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fakes import (
    HEALTHY,
    UNHEALTHY,
    FakeSource,
    FakeStackDeploy,
    FakeSwarm,
    desired_yaml,
    digest_of,
)
from structlog.testing import capture_logs

from agent.config import parse_config
from agent.reconcile import Reconciler

REG = "registry.test:5000"
WEB = f"{REG}/shop/web"
V1, V2, BAD = (digest_of(n) for n in ("v1", "v2", "bad"))


@pytest.fixture
def swarm(tmp_path: Path) -> tuple[Reconciler, FakeSwarm, FakeSource, Path]:
    engine = FakeSwarm()
    for d in (V1, V2):
        engine.publish(WEB, d, HEALTHY)
    engine.publish(WEB, BAD, UNHEALTHY)
    cfg = parse_config({
        "source": {"repo": "https://git.test/shop.git"},
        "compose": {"project_dir": str(tmp_path / "project"), "project_name": "shop"},
        "engine": {"kind": "swarm"},
        "agent": {"state_dir": str(tmp_path / "state"), "settle_seconds": 0.0,
                  "health_timeout_seconds": 2.0},
    })
    source = FakeSource()
    rec = Reconciler(cfg, source=source, engine=engine,
                     compose=FakeStackDeploy(engine, model={"web": {}}), sleep=lambda _s: None)
    return rec, engine, source, tmp_path / "state"


def history(state_dir: Path) -> list[dict[str, Any]]:
    return list(json.loads((state_dir / "state.json").read_text())["history"])


def test_a_swarm_release_is_one_stack_deploy_verified_and_its_phases_recorded(swarm) -> None:
    rec, engine, source, state_dir = swarm
    source.commit(desired_yaml({"web": (WEB, V1)}))
    assert rec.run_pass().outcome == "applied"
    source.commit(desired_yaml({"web": (WEB, V2)}))
    with capture_logs() as logs:
        r = rec.run_pass()
    assert (r.outcome, r.exit_code) == ("applied", 0)
    assert engine.specs["web"] == V2 and len(engine.deploys) == 2
    assert "agent.swarm.update_completed" in [e["event"] for e in logs]
    assert {"fetch", "validate", "observe", "pull", "apply", "health"} <= set(
        history(state_dir)[0]["phases"])
    assert rec.run_pass().outcome == "no-op" and len(engine.deploys) == 2  # idle: no deploy


def test_swarms_own_rollback_is_a_rolled_back_release_never_success(swarm) -> None:
    rec, engine, source, state_dir = swarm
    source.commit(desired_yaml({"web": (WEB, V1)}))
    rec.run_pass()
    bad = source.commit(desired_yaml({"web": (WEB, BAD)}))
    r = rec.run_pass()
    assert (r.outcome, r.exit_code) == ("rolled-back", 1)
    assert "Swarm rolled the update back" in (r.reason or "")
    assert engine.specs["web"] == V1
    last = history(state_dir)[0]
    assert last["outcome"] == "rolled-back" and "rollback" in last["phases"]
    state = json.loads((state_dir / "state.json").read_text())
    assert bad in state["failed_revisions"] and state["known_good"]["web"]["digest"] == V1
    # the failed revision is not deployed again on the next pass
    before = len(engine.deploys)
    assert rec.run_pass().outcome == "skipped" and len(engine.deploys) == before


def test_a_paused_swarm_update_is_rolled_back_by_the_agent(swarm) -> None:
    rec, engine, source, _ = swarm
    engine.own_rollback = False  # failure_action: pause
    source.commit(desired_yaml({"web": (WEB, V1)}))
    rec.run_pass()
    source.commit(desired_yaml({"web": (WEB, BAD)}))
    r = rec.run_pass()
    assert r.outcome == "rolled-back" and "paused" in (r.reason or "")
    assert engine.specs["web"] == V1  # the agent deployed the known-good pins
    assert engine.deploys[-1]["web"].endswith(V1)
