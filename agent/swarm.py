"""Docker Swarm as the engine: the verdict on a service update, and the update strategy.

Swarm already schedules replicas and knows rolling updates and rollback; the agent drives it
rather than growing a scheduler of its own. What the agent must get right is the *verdict*:
``docker stack deploy`` returns as soon as the specs are written, and a Swarm rollback is a
state of the service, not an error (doco-cd #1616, docker/cli #6752). :func:`swarm_verdict`
reads it: success only when the update completed and the running tasks are the new digest;
``rollback_*`` and ``paused`` (and tasks that keep failing) are a failed release.

:class:`SwarmUpdate` is the strategy the pass uses for every service of a stack: apply
deploys (``SwarmStack.up``), verify polls the verdict, undo checks Swarm's own rollback
(``failure_action: rollback``) or deploys the known-good pins itself (``pause``/``continue``).
It works through the plain :class:`agent.strategies.Toolkit`: its engine is an
:class:`agent.ports.Engine`, which has no container operation, so nothing here can stop,
start or re-alias a container (Swarm replaces its tasks itself) — mypy holds it to that.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import structlog

from agent import health
from agent.errors import Unhealthy
from agent.health import Verdict
from agent.plan import ObservedContainer, Release
from agent.state import ImageDigest, short_digest
from agent.strategies import Toolkit, UpdateStrategy

if TYPE_CHECKING:
    from agent.config import AgentConfig

log = structlog.get_logger()

ROLLBACK_STATES = ("rollback_started", "rollback_completed", "rollback_paused")
# task states after which a task will not run again
FAILED_TASK_STATES = ("failed", "rejected", "orphaned")
# this many tasks of the new digest failing (since the deploy) is "keeps failing"
MAX_TASK_FAILURES = 3
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class SwarmTask:
    digest: str | None  # the manifest digest the task's spec names
    state: str  # Status.State: new … starting, running, complete, failed, shutdown, rejected
    desired: str  # DesiredState: running, shutdown, ready
    error: str = ""  # Status.Err
    at: datetime | None = None  # Status.Timestamp


@dataclass(frozen=True)
class SwarmService:
    """One service of the stack as Swarm reports it."""

    name: str  # the compose service name (without the ``<stack>_`` prefix)
    spec_digest: str | None  # the digest Spec.TaskTemplate.ContainerSpec.Image names
    update_state: str | None  # UpdateStatus.State; None: never updated
    update_started: datetime | None = None
    update_message: str = ""
    replicas: int | None = None  # None: global mode
    tasks: tuple[SwarmTask, ...] = ()

    @property
    def running(self) -> int:
        return sum(1 for t in self.tasks if t.desired == "running" and t.state == "running")


def swarm_verdict(
    svc: SwarmService | None,
    digest: str,
    *,
    since: datetime | None = None,
    rolling_back: bool = False,
    max_failures: int = MAX_TASK_FAILURES,
) -> Verdict:
    """The verdict on one service that should run ``digest``, from one observation.

    ``since``: when the agent deployed; an UpdateStatus older than that is an earlier
    update's and says nothing about this one. ``rolling_back``: the agent is checking a
    rollback, so ``rollback_completed`` (Swarm's own) is where it should end up.
    """
    if svc is None:
        return Verdict("wait", "the service does not exist yet")
    state = svc.update_state
    if since is not None and svc.update_started is not None and svc.update_started < since:
        state = None  # an earlier update's status
    why = f" ({svc.update_message})" if svc.update_message else ""
    if rolling_back:
        if state in ("rollback_paused", "paused"):
            return Verdict("fail", f"Swarm's update state is {state}{why}")
        if state in ("rollback_started", "updating"):
            return Verdict("wait", f"Swarm's update state is {state}")
    else:
        if state in ROLLBACK_STATES:
            return Verdict("fail", f"Swarm rolled the update back: update state {state}{why}")
        if state == "paused":
            return Verdict("fail", f"Swarm paused the update: update state paused{why}")
    if svc.spec_digest != digest:
        return Verdict("fail", f"the service's spec names {short_digest(svc.spec_digest)}, "
                               f"not {short_digest(digest)}")
    failed = [t for t in svc.tasks if t.digest == digest and t.state in FAILED_TASK_STATES
              and (since is None or t.at is None or t.at >= since)]
    if len(failed) >= max_failures:
        last = failed[-1].error or failed[-1].state
        return Verdict("fail", f"{len(failed)} tasks at {short_digest(digest)} failed: {last}")
    if state == "updating":
        return Verdict("wait", "Swarm is updating the service")
    live = [t for t in svc.tasks if t.desired == "running"]
    at = [t for t in live if t.digest == digest and t.state == "running"]
    others = [t for t in svc.tasks if t.digest != digest and t.state in ("running", "starting")]
    want = svc.replicas if svc.replicas is not None else max(1, len(live))
    if len(at) >= want and not others:
        return Verdict("ok")
    return Verdict("wait", f"{len(at)}/{want} tasks running at {short_digest(digest)}"
                           + (f", {len(others)} at another digest" if others else ""))


@runtime_checkable
class SwarmView(Protocol):
    """What the strategy reads from the engine (``agent.edges.swarm.SwarmEngine``)."""

    def swarm_services(self, stack: str, names: Sequence[str]) -> dict[str, SwarmService]: ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


class SwarmUpdate(UpdateStrategy):
    """Every service of a stack changes through Swarm's own rolling update
    (``deploy.update_config`` / ``rollback_config`` from the compose files)."""

    order = "start-first"  # nominal: Swarm's update_config.order decides

    def __init__(self, kit: Toolkit, view: SwarmView, timeout: float,
                 clock: Callable[[], datetime] = _utcnow,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(kit)
        self.view = view
        self.timeout = timeout
        self.clock = clock
        self.monotonic = monotonic
        self.since: datetime | None = None  # when this pass deployed

    def _deploy(self, services: Sequence[str]) -> None:
        # Swarm's timestamps come from the manager the agent runs on; a second's slack
        self.since = self.clock() - timedelta(seconds=1)
        self.kit.compose.up(list(services), pull="never")

    def apply(self, services: Sequence[str], release: Release) -> None:
        changed = [s for s in services if s in release.plan.changed_services]
        self.since = None
        if not changed:
            return
        now = self.view.swarm_services(self.kit.project, changed)
        if all((svc := now.get(s)) is not None and svc.spec_digest == release.target[s].digest
               and svc.update_state in ("updating", "completed", None) for s in changed):
            # a pass killed after its deploy: Swarm has the specs; follow its update
            log.info("agent.swarm.converging", services=changed,
                     message="the specs already name the new digests; not deploying twice")
            return
        log.info("agent.swarm.deploy", stack=self.kit.project, services=changed,
                 digests={s: release.target[s].digest for s in changed})
        self._deploy(changed)

    def verify(self, services: Sequence[str], release: Release) -> str | None:
        """Poll Swarm until every service's update completed at its target digest (None),
        or fails (the reason)."""
        return self._wait({s: release.target[s].digest for s in services}, rolling_back=False)

    def _wait(self, digests: Mapping[str, str], *, rolling_back: bool) -> str | None:
        deadline = self.monotonic() + self.timeout
        last: dict[str, Verdict] = {}
        while True:
            now = self.view.swarm_services(self.kit.project, list(digests))
            pending = []
            for s, d in sorted(digests.items()):
                v = swarm_verdict(now.get(s), d, since=self.since, rolling_back=rolling_back)
                if v.state == "fail":
                    log.error("agent.swarm.update_failed", service=s, reason=v.detail)
                    return f"{s}: {v.detail}"
                if v.state == "wait":
                    pending.append(s)
                    if last.get(s) != v:
                        log.info("agent.swarm.waiting", service=s, detail=v.detail)
                last[s] = v
            if not pending:
                log.info("agent.swarm.update_completed", services=sorted(digests),
                         rolling_back=rolling_back)
                return None
            if self.monotonic() >= deadline:
                return "; ".join(f"{s}: not done after {self.timeout:g}s ({last[s].detail})"
                                 for s in pending)
            self.kit.sleep(POLL_SECONDS)

    def undo(self, services: Sequence[str], release: Release) -> list[str]:
        """Swarm rolled back on its own: wait for it to finish and check it. Otherwise
        (``pause``/``continue``) deploy the known-good pins (the pass has pinned them)."""
        back = {s: p for s in services if (p := release.previous.get(s)) is not None}
        remove = sorted(s for s in services if release.previous.get(s) is None)
        if back:
            deadline = self.monotonic() + self.timeout
            now = self.view.swarm_services(self.kit.project, sorted(back))
            while any(v.update_state == "rollback_started" for v in now.values()) \
                    and self.monotonic() < deadline:
                self.kit.sleep(POLL_SECONDS)
                now = self.view.swarm_services(self.kit.project, sorted(back))
            own = sorted(s for s in back if (v := now.get(s)) is not None
                         and v.update_state == "rollback_completed"
                         and v.spec_digest == back[s].digest)
            mine = sorted(s for s in back if s not in own)
            self.since = None
            if own:
                log.info("agent.rollback.swarm_rolled_back", services=own,
                         message="Swarm rolled back on its own; checking the old digest runs")
            if mine:
                log.info("agent.rollback.started", services={s: back[s].digest for s in mine},
                         message="deploying the known-good digests")
                self._deploy(mine)
            bad = self._wait({s: p.digest for s, p in back.items()}, rolling_back=True)
            if bad is not None:
                raise Unhealthy(f"rollback: {bad}")
        if remove:
            log.info("agent.rollback.removing", services=remove,
                     message="no earlier release of these services to return to")
            self.kit.compose.remove(remove)
        return sorted(back)


def swarm_update(cfg: AgentConfig, kit: Toolkit) -> SwarmUpdate | None:
    """The pass's strategy for ``[engine] kind = "swarm"`` (None for compose)."""
    if cfg.engine.kind != "swarm":
        return None
    view = kit.engine
    if not isinstance(view, SwarmView):
        raise TypeError("[engine] kind = \"swarm\" needs an engine that reads Swarm services")
    return SwarmUpdate(kit, view, cfg.agent.health_timeout_seconds)


class SwarmPlatform:
    """Swarm as a platform (:class:`agent.strategies.Platform`): one stack deploy for every
    touched service, verified by Swarm's own task states."""

    def __init__(self, update: SwarmUpdate, *, settle: float = 0.0) -> None:
        self.update = update
        self.settle = settle

    def strategies(self, release: Release,
                   services: Sequence[str]) -> list[tuple[UpdateStrategy, list[str]]]:
        return [(self.update, list(services))] if services else []

    def verify(self, services: Sequence[str], release: Release) -> str | None:
        return self.update.verify(services, release)

    def wait_healthy(self, services: Sequence[str], target: Mapping[str, ImageDigest],
                     hashes: Mapping[str, str] | None = None) -> str | None:
        """After an undo: the restored services' running tasks healthy at ``target`` (the
        engine's ``observe``, as the health wait reads containers). ``hashes`` is
        compose.from_repo's, which a stack never has."""
        kit = self.update.kit

        def observe() -> dict[str, list[ObservedContainer]]:
            return kit.engine.observe(kit.project, set(services), detail=True)

        return health.wait_healthy(observe=observe, services=services,
                                   digests={s: target[s].digest for s in services},
                                   timeout=self.update.timeout, settle=self.settle)


def swarm_platform(cfg: AgentConfig, kit: Toolkit) -> SwarmPlatform | None:
    """``[engine] kind = "swarm"``: Swarm's platform (None for compose)."""
    update = swarm_update(cfg, kit)
    return (SwarmPlatform(update, settle=cfg.agent.settle_seconds) if update is not None
            else None)
