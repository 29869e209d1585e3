"""Update orders as strategies: how a group of services changes, is undone, is committed.

* :class:`StopFirst` — compose recreates the service in place: the old container stops,
  the new one starts. Undo recreates it at the previous digest (or removes it when it had
  no previous release).
* :class:`StartFirst` — new containers start beside the old ones (``--scale`` with
  ``--no-recreate``), out of rotation: not resolvable by the service's name until healthy;
  the old ones keep serving. Commit admits the new ones, takes the old ones out of the
  name, waits ``handover_seconds`` and stops them; undo removes the new ones, and the old
  ones never stopped. Where no old container runs any more (an earlier pass was killed
  half-way), undo falls back to recreating the previous digest.

Nothing outside this module knows how either order works. A strategy talks to the engine
and compose through a :class:`Toolkit`; it raises the edges' typed errors unchanged. Both
orders work on single containers, so they take a :class:`ContainerToolkit` (its engine a
:class:`agent.ports.ContainerEngine`); Swarm's strategy (:mod:`agent.swarm`) gets the plain
:class:`Toolkit`, whose engine offers no container operation at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import structlog

from agent.desired import UpdateOrder
from agent.failpoints import failpoint
from agent.plan import ObservedContainer, Release
from agent.ports import ComposeProject, ContainerEngine, Engine
from agent.state import Change, ImageDigest

log = structlog.get_logger()


def container_engine(engine: Engine) -> ContainerEngine:
    """``engine`` as the compose platform's engine (with container operations); TypeError
    for one without them (Swarm's), which nothing on the compose path may be handed."""
    if not isinstance(engine, ContainerEngine):
        raise TypeError(f"{type(engine).__name__} has no container operations: the compose "
                        "platform needs a container engine ([engine] kind = \"compose\")")
    return engine


@dataclass(frozen=True)
class Toolkit:
    """What a strategy may use on any platform: the engine (:class:`agent.ports.Engine`,
    no container operations), compose, and the pass's own pull and sleep."""

    engine: Engine
    compose: ComposeProject
    project: str
    handover_seconds: float
    pull: Callable[[Sequence[Change]], None]  # pull-by-digest with the one retry policy
    sleep: Callable[[float], None] = time.sleep

    def observe(self, services: Sequence[str]) -> dict[str, list[ObservedContainer]]:
        return self.engine.observe(self.project, set(services))


@dataclass(frozen=True)
class ContainerToolkit(Toolkit):
    """The compose platform's toolkit: the engine with container operations."""

    engine: ContainerEngine

    @classmethod
    def of(cls, kit: Toolkit) -> ContainerToolkit:
        """``kit`` on a container engine (TypeError for Swarm's, see container_engine)."""
        if isinstance(kit, ContainerToolkit):
            return kit
        return cls(container_engine(kit.engine), kit.compose, kit.project,
                   kit.handover_seconds, kit.pull, kit.sleep)


class UpdateStrategy:
    """How a group of services changes on a platform; reads and acts through ``kit``."""

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


class ContainerStrategy(UpdateStrategy):
    """A compose update order: acts on the project's containers (a container engine)."""

    kit: ContainerToolkit

    def __init__(self, kit: ContainerToolkit) -> None:
        super().__init__(kit)
        self.kit = kit


class StopFirst(ContainerStrategy):
    order = "stop-first"

    def apply(self, services: Sequence[str], release: Release) -> None:
        changed = [s for s in services if s in release.plan.changed_services]
        self.kit.compose.up(changed, pull="never")  # one compose call for the group

    def undo(self, services: Sequence[str], release: Release) -> list[str]:
        return recreate_previous(self.kit, services, release)


class StartFirst(ContainerStrategy):
    """Start-first, with rotation by name: a container is reachable under its service's
    name on the project's networks (Docker's DNS, what a DNS-only proxy follows) only while
    it should take traffic.

    * apply: compose *creates* the new containers (``--no-start``); each is connected to
      its networks without the service's name (its other aliases kept), then started. A
      proxy that discovers backends by that name does not see it.
    * verify (the pass): the new containers become healthy; the health check runs inside
      the container and needs no DNS.
    * commit: admit the new containers (the service's name back on every network), take
      the old ones out of the name, wait ``handover_seconds`` (proxies re-resolve, requests
      in flight finish), stop the old ones gracefully.
    * undo: remove the new containers — never resolvable by the service's name.

    Crash-safe without any record: "withheld" is read from the engine (the service's name
    missing from a container's aliases). A killed pass leaves a mix of digests, so the next
    pass changes the service again: apply starts what was only created, commit admits what
    was withheld and retires the rest.
    """

    order = "start-first"
    # Take the old containers out of the service's name before the handover (True), or
    # only stop them after it (False: what BENCHMARKS.md compares against).
    withhold_old: ClassVar[bool] = True

    def apply(self, services: Sequence[str], release: Release) -> None:
        changed = [s for s in services if s in release.plan.changed_services]
        if not changed:
            return
        scale = {s: start_first_scale(release.observed.get(s, ()), release.target[s].digest,
                                      release.declared.get(s, 1), release.hashes.get(s))
                 for s in changed}
        log.info("agent.apply.start_first", services=changed, scale=scale,
                 message="new containers start beside the old ones, out of rotation")
        self.kit.compose.up(changed, pull="never", scale=scale, no_recreate=True, start=False)
        engine = self.kit.engine
        observed = self.kit.observe(changed)
        for s in changed:
            for c in observed.get(s, ()):
                if release.at_target(s, c) and c.status == "created":
                    self._reconnect_lost(s, c, None)
                    engine.set_alias(c.container_id, s, present=False)  # withheld
                    engine.start_container(c.container_id)
                    log.info("agent.apply.started_withheld", service=s, container=c.name,
                             message="running, not yet resolvable by the service's name")

    def commit(self, services: Sequence[str], release: Release) -> None:
        """The new containers are healthy: put them into rotation, take the old ones out,
        wait the handover, stop the old ones gracefully and remove them."""
        engine = self.kit.engine
        observed = self.kit.observe(services)
        retiring = []
        for s in services:
            if s not in release.target:
                continue
            containers = observed.get(s, ())
            for c in containers:
                if release.at_target(s, c) and c.status == "running":
                    self._reconnect_lost(s, c, s)
                    if engine.set_alias(c.container_id, s, present=True):
                        log.info("agent.apply.admitted", service=s, container=c.name)
            retiring += [(s, c) for c in containers if not release.at_target(s, c)]
        for s, c in retiring:
            if c.status == "running" and self.withhold_old:
                engine.set_alias(c.container_id, s, present=False)
        if retiring and self.kit.handover_seconds > 0:
            log.info("agent.apply.handover", services=sorted({s for s, _ in retiring}),
                     seconds=self.kit.handover_seconds)
            self.kit.sleep(self.kit.handover_seconds)
        for s, c in retiring:
            log.info("agent.apply.retiring", service=s, container=c.name, digest=c.digest)
            engine.stop_and_remove(c.container_id)

    def undo(self, services: Sequence[str], release: Release) -> list[str]:
        """Remove the new containers where the old ones still run (and make sure those are
        in rotation); recreate the rest."""
        observed = self.kit.observe(services)
        withdrawn = []
        for s in services:
            containers = observed.get(s, ())
            old = [c for c in containers
                   if not release.at_target(s, c) and c.status == "running"]
            if not old:
                continue
            for c in containers:
                if release.at_target(s, c):
                    self.kit.engine.stop_and_remove(c.container_id)
            for c in old:
                self._reconnect_lost(s, c, s)
                self.kit.engine.set_alias(c.container_id, s, present=True)
            log.info("agent.rollback.start_first", service=s, kept=[c.name for c in old],
                     message="new container removed; the old one never stopped")
            withdrawn.append(s)
        rest = [s for s in services if s not in withdrawn]
        return recreate_previous(self.kit, rest, release)

    def _reconnect_lost(self, service: str, c: ObservedContainer, alias: str | None) -> None:
        """A pass killed between a network disconnect and its connect leaves the container
        off that network: connect it again (the networks the compose model gives it)."""
        spec = self.kit.compose.services().get(service) or {}
        if spec.get("network_mode"):
            return  # host, none, another container's: no networks of its own
        nets = {k: list((v or {}).get("aliases") or [])
                for k, v in (spec.get("networks") or {}).items()}
        if nets:
            self.kit.engine.ensure_connected(c.container_id, self.kit.project, nets, alias)


STRATEGIES: dict[UpdateOrder, type[ContainerStrategy]] = {
    "stop-first": StopFirst,
    "start-first": StartFirst,
}


def strategy_for(order: UpdateOrder, kit: ContainerToolkit) -> ContainerStrategy:
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
    containers: Sequence[ObservedContainer], digest: str, declared: int,
    config_hash: str | None = None,
) -> int:
    """Total containers to ask compose for so that ``declared`` run the new digest while
    every existing one stays (``--no-recreate``). A container at the digest that a killed
    pass created but never started counts: this pass starts it."""
    at_target = [c for c in containers
                 if c.digest == digest and c.status in ("running", "created")
                 and (config_hash is None or c.config_hash == config_hash)]
    return len(containers) + max(0, declared - len(at_target))


def pins(images: Mapping[str, ImageDigest]) -> dict[str, str]:
    return {n: f"{d.image}@{d.digest}" for n, d in images.items()}


class Platform(Protocol):
    """Where the release runs (compose on one engine, or a Swarm stack): which strategy
    updates which touched services, and whether they came up. The pass asks only this."""

    def strategies(self, release: Release,
                   services: Sequence[str]) -> list[tuple[UpdateStrategy, list[str]]]: ...

    def verify(self, services: Sequence[str], release: Release) -> str | None:
        """None when every service runs healthy at its target, else why not."""
        ...

    def wait_healthy(self, services: Sequence[str], target: Mapping[str, ImageDigest],
                     hashes: Mapping[str, str] | None = None) -> str | None:
        """A rollback's check: ``services`` (the ones the strategies restored) run healthy
        at ``target`` (None), else why not."""
        ...

