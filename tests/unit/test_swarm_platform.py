"""Swarm's platform needs only the base Engine port: the pass, a release, Swarm's own
rollback and the agent's, all on a fake engine that has no container operation at all
(``FakeBaseEngine``); compose's platform refuses such an engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fakes import (
    HEALTHY,
    UNHEALTHY,
    FakeBaseEngine,
    FakeEngine,
    FakeSource,
    FakeStackDeploy,
    FakeSwarm,
    desired_yaml,
    digest_of,
)

from agent.config import parse_config
from agent.plan import Plan, Release
from agent.platform import ComposePlatform, compose_platform
from agent.ports import ContainerEngine
from agent.reconcile import Reconciler
from agent.state import Change, ImageDigest
from agent.strategies import ContainerToolkit, StartFirst, StopFirst, Toolkit, container_engine
from agent.swarm import SwarmPlatform, swarm_platform

REG = "registry.test:5000"
WEB = f"{REG}/shop/web"
V1, V2, BAD = (digest_of(n) for n in ("v1", "v2", "bad"))
CONTAINER_OPS = ("stop_and_remove", "start_container", "ensure_connected", "set_alias")


def _cfg(tmp_path: Path, kind: str = "swarm") -> Any:
    return parse_config({
        "source": {"repo": "https://git.test/shop.git"},
        "compose": {"project_dir": str(tmp_path / "project"), "project_name": "shop"},
        "engine": {"kind": kind},
        "agent": {"state_dir": str(tmp_path / "state"), "settle_seconds": 0.0,
                  "health_timeout_seconds": 2.0},
    })


def _engine() -> FakeSwarm:
    engine = FakeSwarm()
    for d in (V1, V2):
        engine.publish(WEB, d, HEALTHY)
    engine.publish(WEB, BAD, UNHEALTHY)
    return engine


@pytest.fixture
def swarm(tmp_path: Path) -> tuple[Reconciler, FakeSwarm, FakeSource]:
    engine, source = _engine(), FakeSource()
    rec = Reconciler(_cfg(tmp_path), source=source, engine=engine,
                     compose=FakeStackDeploy(engine), sleep=lambda _s: None)
    return rec, engine, source


def test_the_base_fake_has_no_container_operation():
    engine = _engine()
    assert not isinstance(engine, ContainerEngine)
    for op in CONTAINER_OPS:
        assert not hasattr(engine, op), op


def test_a_swarm_release_and_its_idle_pass_need_no_container_operation(swarm):
    rec, engine, source = swarm
    source.commit(desired_yaml({"web": (WEB, V1)}))
    assert rec.run_pass().outcome == "applied"
    source.commit(desired_yaml({"web": (WEB, V2)}))
    r = rec.run_pass()
    assert (r.outcome, r.exit_code) == ("applied", 0)
    assert engine.specs["web"] == V2 and len(engine.deploys) == 2
    assert rec.run_pass().outcome == "no-op" and len(engine.deploys) == 2


def test_swarms_own_rollback_on_the_base_engine_is_a_rolled_back_release(swarm):
    rec, engine, source = swarm
    source.commit(desired_yaml({"web": (WEB, V1)}))
    rec.run_pass()
    source.commit(desired_yaml({"web": (WEB, BAD)}))
    r = rec.run_pass()
    assert (r.outcome, r.exit_code) == ("rolled-back", 1)
    assert "Swarm rolled the update back" in (r.reason or "")
    assert engine.specs["web"] == V1


def test_a_paused_update_is_undone_by_a_deploy_of_the_known_good_pins_on_the_base_engine(swarm):
    rec, engine, source = swarm
    engine.own_rollback = False
    source.commit(desired_yaml({"web": (WEB, V1)}))
    rec.run_pass()
    source.commit(desired_yaml({"web": (WEB, BAD)}))
    r = rec.run_pass()
    assert r.outcome == "rolled-back" and "paused" in (r.reason or "")
    assert engine.specs["web"] == V1 and engine.deploys[-1]["web"].endswith(V1)
    assert [c.health for c in engine.containers.values()] == ["healthy"]


def _kit(engine: Any, compose: Any) -> Toolkit:
    return Toolkit(engine, compose, "shop", 0, lambda _c: None, lambda _s: None)


def _release(digest: str) -> Release:
    plan = Plan("r2", {"web": ImageDigest(image=WEB, digest=digest)},
                [Change(service="web", image=WEB, old=V1, new=digest)])
    return Release(plan=plan, previous={"web": ImageDigest(image=WEB, digest=V1)},
                   orders={}, observed={})


def test_swarms_platform_is_built_on_the_plain_toolkit_and_waits_on_running_tasks(tmp_path):
    engine = _engine()
    stack = FakeStackDeploy(engine)
    platform = swarm_platform(_cfg(tmp_path), _kit(engine, stack))
    assert isinstance(platform, SwarmPlatform)
    assert type(platform.update.kit) is Toolkit  # not a ContainerToolkit
    stack.pin({"web": f"{WEB}@{V2}"})
    release = _release(V2)
    [(strategy, services)] = platform.strategies(release, ["web"])
    strategy.apply(services, release)
    assert platform.verify(["web"], release) is None
    assert platform.wait_healthy(["web"], release.target) is None


def test_swarms_platform_refuses_an_engine_that_reads_no_swarm_services(tmp_path):
    with pytest.raises(TypeError, match="reads Swarm services"):
        swarm_platform(_cfg(tmp_path), _kit(FakeBaseEngine(), None))
    assert swarm_platform(_cfg(tmp_path, "compose"), _kit(_engine(), None)) is None


def test_composes_platform_refuses_an_engine_without_container_operations(tmp_path):
    engine = _engine()
    with pytest.raises(TypeError, match="no container operations"):
        compose_platform(_cfg(tmp_path, "compose"), _kit(engine, FakeStackDeploy(engine)))
    with pytest.raises(TypeError, match="no container operations"):
        ContainerToolkit.of(_kit(engine, None))
    with pytest.raises(TypeError, match="FakeSwarm has no container operations"):
        container_engine(engine)


def test_composes_platform_runs_its_orders_on_a_container_toolkit(tmp_path):
    engine = FakeEngine()
    assert container_engine(engine) is engine
    platform = compose_platform(_cfg(tmp_path, "compose"), _kit(engine, None))
    assert isinstance(platform, ComposePlatform) and isinstance(platform.kit, ContainerToolkit)
    assert platform.kit.engine is engine
    release = Release(plan=Plan("r", {}, []), previous={}, observed={},
                      orders={"a": "stop-first", "b": "start-first"})
    got = {type(s): g for s, g in platform.strategies(release, ["a", "b"])}
    assert got == {StopFirst: ["a"], StartFirst: ["b"]}
    assert all(s.kit is platform.kit for s, _ in platform.strategies(release, ["a", "b"]))
