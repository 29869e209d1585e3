"""Start-first with rotation by name (Docker's DNS), with the honest fakes: a new container
is resolvable by its service's name only once healthy, a failing one never is, the old
one leaves the name before it stops, and a pass killed with a new container out of
rotation is converged by the next pass. The e2e test behind caddy proves it on Docker."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest
from fakes import HEALTHY, UNHEALTHY, FakeCompose, FakeEngine, FakeSource, Killed, digest_of
from fakes import desired_yaml as desired
from structlog.testing import capture_logs

from agent.config import parse_config
from agent.plan import ObservedContainer
from agent.reconcile import Reconciler

REG = "registry.test:5000"
WEB, API = f"{REG}/shop/web", f"{REG}/shop/api"
V1, V2, BAD = (digest_of(n) for n in ("v1", "v2", "bad"))


class WatchedEngine(FakeEngine):
    """Records, at every poll of the health wait, what the service's name resolves to."""

    def __init__(self) -> None:
        super().__init__()
        self.resolved_during_health: list[set[str]] = []

    def observe(self, project: str, services: Collection[str] | None = None, *,
                detail: bool = False) -> dict[str, list[ObservedContainer]]:
        out = super().observe(project, services, detail=detail)
        if detail:
            self.resolved_during_health.append(self.resolve("web"))
        return out


class Shop:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.engine = WatchedEngine()
        for image in (WEB, API):
            self.engine.publish(image, V1, HEALTHY)
            self.engine.publish(image, V2, HEALTHY)
            self.engine.publish(image, BAD, UNHEALTHY)
        # web on two networks, with a declared alias on the second (as `docker compose
        # config` gives the model)
        self.compose = FakeCompose(self.engine, model={
            "web": {"networks": {"default": None, "back": {"aliases": ["web-alt"]}}},
            "api": {"networks": {"default": None}}})
        self.source = FakeSource()
        self.restart()

    def restart(self) -> None:
        cfg = parse_config({
            "source": {"repo": "https://git.test/shop.git"},
            "compose": {"project_dir": str(self.tmp / "project"), "project_name": "shop"},
            "agent": {"state_dir": str(self.tmp / "state"), "settle_seconds": 0.0,
                      "handover_seconds": 1.5, "health_timeout_seconds": 2.0,
                      "pull_concurrency": 1},
        })
        self.rec = Reconciler(cfg, source=self.source, engine=self.engine,
                              compose=self.compose,
                              sleep=lambda s: self.engine.calls.append(f"sleep {s:g}"))

    def release(self, web: str) -> None:
        self.source.commit(desired({"web": (WEB, web), "api": (API, V1)}))

    def sync(self) -> tuple[Any, list[dict[str, Any]]]:
        with capture_logs() as logs:
            result = self.rec.run_pass()
        return result, logs

    def web(self) -> set[str]:
        return {c.id for c in self.engine.of("web")}


@pytest.fixture
def shop(tmp_path: Path) -> Shop:
    s = Shop(tmp_path)
    s.release(V1)
    assert s.sync()[0].outcome == "applied"
    s.engine.resolved_during_health.clear()
    s.engine.calls.clear()
    return s


def test_a_new_container_joins_the_service_name_only_after_it_is_healthy(shop: Shop) -> None:
    old = shop.web()
    shop.release(V2)
    result, logs = shop.sync()
    assert result.outcome == "applied"
    new = shop.web()
    assert new.isdisjoint(old) and len(new) == 1
    # during the health wait, the name resolved to the old container only
    assert shop.engine.resolved_during_health
    assert all(seen == old for seen in shop.engine.resolved_during_health)
    assert shop.engine.resolve("web") == new
    (c,) = shop.engine.of("web")
    assert c.aliases["default"][0].startswith("shop-web-")  # its own name kept
    assert set(c.aliases["back"]) == {c.aliases["default"][0], "web", "web-alt"}
    events = [e["event"] for e in logs]
    assert events.index("agent.apply.started_withheld") < events.index("agent.health.ok")
    assert "agent.apply.admitted" in events


def test_the_old_container_leaves_the_name_then_the_handover_then_it_stops(
        shop: Shop) -> None:
    (old,) = shop.web()
    shop.release(V2)
    shop.sync()
    calls = shop.engine.calls
    stop = calls.index("stop_and_remove")
    assert calls[stop - 1] == "sleep 1.5"
    assert calls[stop - 2] == "set_alias"  # the old one withheld right before the handover
    assert old in shop.engine.removed


def test_a_failing_release_is_never_resolvable_by_the_service_name(shop: Shop) -> None:
    old = shop.web()
    shop.release(BAD)
    result, logs = shop.sync()
    assert result.outcome == "rolled-back"
    assert shop.web() == old and shop.engine.resolve("web") == old
    assert shop.engine.resolved_during_health
    assert all(seen == old for seen in shop.engine.resolved_during_health)
    assert "agent.apply.admitted" not in [e["event"] for e in logs]


def test_killed_with_the_new_container_out_of_rotation_the_next_pass_admits_it(
        shop: Shop) -> None:
    old = shop.web()
    shop.release(V2)
    shop.engine.kill_on = "observe-detail"  # killed in the health wait
    with pytest.raises(Killed):
        shop.sync()
    shop.engine.kill_on = None
    assert shop.engine.resolve("web") == old  # the new one runs, withheld
    assert len(shop.web()) == 2
    shop.restart()
    result, _ = shop.sync()
    assert result.outcome == "applied", result.reason
    (new,) = shop.web()
    assert new not in old and shop.engine.resolve("web") == {new}
    assert len(shop.compose.ups) == 3  # no third container: the withheld one was kept


def test_killed_after_create_before_start_the_next_pass_starts_it_out_of_rotation(
        shop: Shop) -> None:
    old = shop.web()
    shop.release(V2)
    shop.engine.kill_on = "start_container"
    with pytest.raises(Killed):
        shop.sync()
    shop.engine.kill_on = None
    assert {c.status for c in shop.engine.of("web")} == {"running", "created"}
    shop.restart()
    result, _ = shop.sync()
    assert result.outcome == "applied", result.reason
    (new,) = shop.web()
    assert new not in old and shop.engine.resolve("web") == {new}
    assert shop.compose.ups[-1][1] == {"web": 2}  # the created one counted, not a third


def test_killed_between_a_network_disconnect_and_connect_the_next_pass_reconnects_it(
        shop: Shop) -> None:
    """The engine has no atomic alias edit: a kill between the disconnect and the connect
    leaves the container off that network. The next pass connects it again, with the
    aliases the compose model declares."""
    shop.release(V2)
    shop.engine.kill_on = "observe-detail"
    with pytest.raises(Killed):
        shop.sync()
    shop.engine.kill_on = None
    (new,) = [c for c in shop.engine.of("web") if c.digest == V2]
    del new.aliases["back"]  # what the kill mid-reconnect leaves
    shop.restart()
    result, logs = shop.sync()
    assert result.outcome == "applied", result.reason
    (c,) = shop.engine.of("web")
    assert c.id == new.id
    assert {"web", "web-alt"} <= set(c.aliases["back"]) and "web" in c.aliases["default"]
