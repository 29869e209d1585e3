"""SwarmUpdate with an honest fake of Swarm: deploy once, converge after a crash, undo."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from agent.errors import Unhealthy
from agent.plan import Plan, Release
from agent.state import Change, ImageDigest
from agent.strategies import Toolkit
from agent.swarm import SwarmService, SwarmTask, SwarmUpdate

OLD, NEW = "sha256:" + "a" * 64, "sha256:" + "b" * 64


class FakeSwarm:
    """Holds the services' specs; a deploy sets the spec and (``outcome``) what Swarm does."""

    def __init__(self, outcome: str = "completed") -> None:
        self.svc = {"web": self._at(OLD, "completed")}
        self.outcome = outcome
        self.deploys: list[str] = []
        self.pins: dict[str, str] = {}

    @staticmethod
    def _at(digest: str, state: str | None) -> SwarmService:
        return SwarmService("web", digest, state, None, "", 2,
                            (SwarmTask(digest, "running", "running"),) * 2)

    # SwarmView
    def swarm_services(self, stack: str, names: Sequence[str]) -> dict[str, SwarmService]:
        return {n: s for n, s in self.svc.items() if n in names}

    # ComposeProject (the part SwarmUpdate uses)
    def pin(self, images: dict[str, str]) -> None:
        self.pins = dict(images)

    def up(self, services: Sequence[str], **_: Any) -> None:
        digest = self.pins["web"].split("@")[1]
        self.deploys.append(digest)
        if self.outcome == "stuck":  # Swarm does not act on the deploy
            return
        if self.outcome == "rollback" and digest == NEW:
            self.svc["web"] = replace(self._at(OLD, "rollback_completed"))
        elif self.outcome == "pause" and digest == NEW:
            self.svc["web"] = SwarmService("web", NEW, "paused", None, "update paused", 2,
                                           (SwarmTask(OLD, "running", "running"),) * 2)
        else:
            self.svc["web"] = self._at(digest, "completed")

    def remove(self, services: Sequence[str]) -> None:
        raise AssertionError("nothing to remove")


def _release() -> Release:
    plan = Plan("r1", {"web": ImageDigest(image="reg/web", digest=NEW)},
                [Change(service="web", image="reg/web", old=OLD, new=NEW)])
    return Release(plan=plan, previous={"web": ImageDigest(image="reg/web", digest=OLD)},
                   orders={}, observed={})


def _strategy(fake: FakeSwarm) -> SwarmUpdate:
    kit = Toolkit(engine=None, compose=fake, project="st", handover_seconds=0,  # type: ignore[arg-type]
                  pull=lambda _c: None, sleep=lambda _s: None)
    return SwarmUpdate(kit, fake, timeout=5)


def test_a_release_deploys_once_and_verifies_completed() -> None:
    fake = FakeSwarm()
    fake.pin({"web": f"reg/web@{NEW}"})
    s = _strategy(fake)
    s.apply(["web"], _release())
    assert fake.deploys == [NEW]
    assert s.verify(["web"], _release()) is None


def test_after_a_crash_with_the_spec_already_updated_the_next_pass_does_not_deploy_twice() -> None:
    fake = FakeSwarm()
    fake.svc["web"] = SwarmService("web", NEW, "updating", None, "", 2,
                                   (SwarmTask(OLD, "running", "running"),
                                    SwarmTask(NEW, "running", "running")))
    s = _strategy(fake)
    s.apply(["web"], _release())
    assert fake.deploys == []
    fake.svc["web"] = fake._at(NEW, "completed")  # Swarm finishes the update it had
    assert s.verify(["web"], _release()) is None


def test_swarms_own_rollback_is_a_failed_release_and_undo_only_checks_it() -> None:
    fake = FakeSwarm("rollback")
    fake.pin({"web": f"reg/web@{NEW}"})
    s = _strategy(fake)
    s.apply(["web"], _release())
    assert "rollback_completed" in (s.verify(["web"], _release()) or "")
    fake.pin({"web": f"reg/web@{OLD}"})
    assert s.undo(["web"], _release()) == ["web"]
    assert fake.deploys == [NEW]  # Swarm rolled back: the agent deployed nothing more


def test_a_paused_update_is_rolled_back_by_the_agent() -> None:
    fake = FakeSwarm("pause")
    fake.pin({"web": f"reg/web@{NEW}"})
    s = _strategy(fake)
    s.apply(["web"], _release())
    assert "paused" in (s.verify(["web"], _release()) or "")
    fake.pin({"web": f"reg/web@{OLD}"})
    assert s.undo(["web"], _release()) == ["web"]
    assert fake.deploys == [NEW, OLD]
    assert fake.svc["web"].spec_digest == OLD


def test_a_rollback_that_does_not_complete_is_reported() -> None:
    fake = FakeSwarm("pause")
    fake.pin({"web": f"reg/web@{NEW}"})
    s = _strategy(fake)
    s.apply(["web"], _release())
    fake.svc["web"] = SwarmService("web", OLD, "rollback_paused", None, "stuck", 2, ())
    fake.outcome = "stuck"
    fake.pin({"web": f"reg/web@{OLD}"})
    with pytest.raises(Unhealthy, match="rollback_paused"):
        s.undo(["web"], _release())
