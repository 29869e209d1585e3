"""Update orders as strategies: how a group of services changes, is undone, is committed.

* :class:`StopFirst` — compose recreates the service in place: the old container stops,
  the new one starts. Undo recreates it at the previous digest (or removes it when it had
  no previous release).
* :class:`StartFirst` — new containers start beside the old ones (``--scale`` with
  ``--no-recreate``); the old ones keep serving until the new ones are healthy. Commit
  retires the old ones after ``handover_seconds``; undo removes the new ones, and the old
  ones never stopped. Where no old container runs any more (an earlier pass was killed
  half-way), undo falls back to recreating the previous digest.

Nothing outside this module knows how either order works. A strategy talks to the engine
and compose through :class:`Toolkit`; it raises the edges' typed errors unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import structlog

from agent.desired import UpdateOrder
from agent.failpoints import failpoint
from agent.plan import ObservedContainer, Release
from agent.ports import ComposeProject, Engine
from agent.state import Change, ImageDigest

log = structlog.get_logger()


@dataclass(frozen=True)
class Toolkit:
    """What a strategy may use: the engine, compose, and the pass's own pull and pin."""

    engine: Engine
    compose: ComposeProject
    project: str
    handover_seconds: float
    pull: Callable[[Sequence[Change]], None]  # pull-by-digest with the one retry policy
    sleep: Callable[[float], None] = time.sleep

    def observe(self, services: Sequence[str]) -> dict[str, list[ObservedContainer]]:
        return self.engine.observe(self.project, set(services))


class UpdateStrategy:
    order: ClassVar[UpdateOrder]

    def __init__(self, kit: Toolkit) -> None:
        self.kit = kit

    def apply(self, services: Sequence[str], release: Release) -> None:
        raise NotImplementedError

    def undo(self, services: Sequence[str], release: Release) -> list[str]:
        """Return the release's ``services`` to where they were. Returns the services that
        were recreated at their previous digest (and so need a health check)."""
        raise NotImplementedError

    def commit(self, services: Sequence[str], release: Release) -> None:
        """The release is healthy: finish what ``apply`` left for afterwards."""


class StopFirst(UpdateStrategy):
    order = "stop-first"

    def apply(self, services: Sequence[str], release: Release) -> None:
        changed = [s for s in services if s in release.plan.changed_services]
        self.kit.compose.up(changed, pull="never")  # one compose call for the group

    def undo(self, services: Sequence[str], release: Release) -> list[str]:
        return recreate_previous(self.kit, services, release)


class StartFirst(UpdateStrategy):
    order = "start-first"

    def apply(self, services: Sequence[str], release: Release) -> None:
        changed = [s for s in services if s in release.plan.changed_services]
        if not changed:
            return
        scale = {s: start_first_scale(release.observed.get(s, ()), release.target[s].digest,
                                      release.declared.get(s, 1)) for s in changed}
        log.info("agent.apply.start_first", services=changed, scale=scale,
                 message="new containers start beside the old ones")
        self.kit.compose.up(changed, pull="never", scale=scale, no_recreate=True)

    def commit(self, services: Sequence[str], release: Release) -> None:
        """The new containers are healthy: stop the old ones gracefully and remove them."""
        if self.kit.handover_seconds > 0:
            log.info("agent.apply.handover", services=list(services),
                     seconds=self.kit.handover_seconds)
            self.kit.sleep(self.kit.handover_seconds)
        for s, containers in sorted(self.kit.observe(services).items()):
            for c in containers:
                if s in release.target and c.digest != release.target[s].digest:
                    log.info("agent.apply.retiring", service=s, container=c.name,
                             digest=c.digest)
                    self.kit.engine.stop_and_remove(c.container_id)

    def undo(self, services: Sequence[str], release: Release) -> list[str]:
        """Remove the new containers where the old ones still run; recreate the rest."""
        observed = self.kit.observe(services)
        withdrawn = []
        for s in services:
            containers = observed.get(s, ())
            new = release.target[s].digest
            old = [c for c in containers if c.digest != new and c.status == "running"]
            if not old:
                continue
            for c in containers:
                if c.digest == new:
                    self.kit.engine.stop_and_remove(c.container_id)
            log.info("agent.rollback.start_first", service=s, kept=[c.name for c in old],
                     message="new container removed; the old one never stopped")
            withdrawn.append(s)
        rest = [s for s in services if s not in withdrawn]
        return recreate_previous(self.kit, rest, release)


STRATEGIES: dict[UpdateOrder, type[UpdateStrategy]] = {
    "stop-first": StopFirst,
    "start-first": StartFirst,
}


def strategy_for(order: UpdateOrder, kit: Toolkit) -> UpdateStrategy:
    return STRATEGIES[order](kit)


def recreate_previous(kit: Toolkit, services: Sequence[str], release: Release) -> list[str]:
    """Recreate ``services`` at their previous digest (compose is pinned to it already);
    remove those that had no previous release. Returns the services recreated."""
    back = {s: p for s in services if (p := release.previous.get(s)) is not None}
    remove = sorted(s for s in services if release.previous.get(s) is None)
    if back:
        log.info("agent.rollback.started", services={n: d.digest for n, d in back.items()})
        kit.pull([Change(service=n, image=d.image, old=None, new=d.digest)
                  for n, d in sorted(back.items())])
        kit.compose.up(sorted(back), pull="never")
        failpoint("during-rollback")
    if remove:
        log.info("agent.rollback.removing", services=remove,
                 message="no earlier release of these services to return to")
        kit.compose.remove(remove)
    return sorted(back)


def start_first_scale(
    containers: Sequence[ObservedContainer], digest: str, declared: int
) -> int:
    """Total containers to ask compose for so that ``declared`` run the new digest while
    every existing one stays (``--no-recreate``)."""
    at_target = [c for c in containers if c.digest == digest and c.status == "running"]
    return len(containers) + max(0, declared - len(at_target))


def pins(images: Mapping[str, ImageDigest]) -> dict[str, str]:
    return {n: f"{d.image}@{d.digest}" for n, d in images.items()}
