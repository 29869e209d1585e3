"""Diff desired against observed: which services change, to what, and how. Pure functions
only: the reconcile pass hands in what it observed and gets back a :class:`Plan` (what
changes) and a :class:`Release` (the plan plus where to roll back to and in which order)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from agent.desired import DesiredState, UpdateOrder
from agent.state import Change, ImageDigest, InFlight


@dataclass(frozen=True)
class ObservedContainer:
    """One container of the compose project, as the Docker engine reports it."""

    service: str
    container_id: str
    name: str
    image_ref: str  # Config.Image: what the container was created from
    digest: str | None  # the manifest digest it was created from, when knowable
    status: str  # running, exited, restarting, created, paused, dead
    health: str | None  # healthy, unhealthy, starting; None without a HEALTHCHECK
    restart_count: int = 0
    exit_code: int = 0
    health_output: str = ""
    config_hash: str | None = None  # compose's com.docker.compose.config-hash label


def repository_of(image_ref: str) -> str:
    """``repo[:tag][@digest]`` -> ``repo`` (a registry port is not a tag)."""
    ref = image_ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        ref = ref[: len(ref) - len(last)] + last.split(":", 1)[0]
    return ref


def running_digest(containers: Sequence[ObservedContainer]) -> str | None:
    """The digest a service runs: the one all its running containers share, else None."""
    live = [c for c in containers if c.status in ("running", "restarting")]
    digests = {c.digest for c in live}
    if len(live) == 0 or len(digests) != 1:
        return None
    return next(iter(digests))


def running_config_hash(containers: Sequence[ObservedContainer]) -> str | None:
    """The compose configuration hash a service runs with: the one all its running
    containers share, else None."""
    live = [c for c in containers if c.status in ("running", "restarting")]
    hashes = {c.config_hash for c in live}
    if len(live) == 0 or len(hashes) != 1:
        return None
    return next(iter(hashes))


@dataclass(frozen=True)
class Plan:
    revision: str
    # the digest set this pass aims at, for every managed service
    target: dict[str, ImageDigest]
    changes: list[Change] = field(default_factory=list)
    # services already at target but not yet verified since a crash/earlier pass
    unverified: list[str] = field(default_factory=list)
    # of the changes, the services whose digest stays and whose compose configuration
    # changed (compose.from_repo: a new revision of the compose files)
    config_changed: list[str] = field(default_factory=list)
    # per service, the configuration hash its containers must carry (compose.from_repo)
    hashes: dict[str, str] = field(default_factory=dict)

    @property
    def changed_services(self) -> list[str]:
        return [c.service for c in self.changes]

    @property
    def is_noop(self) -> bool:
        return not self.changes and not self.unverified


def effective_target(
    desired: DesiredState,
    known_good: Mapping[str, ImageDigest],
    revision_failed: bool,
) -> dict[str, ImageDigest]:
    """What to converge on: the desired digests, or — for a revision that failed before and
    is not forced — the last known-good digests (desired where none is known)."""
    target = {n: ImageDigest(image=s.image, digest=s.digest) for n, s in desired.services.items()}
    if revision_failed:
        for name in target:
            if name in known_good:
                target[name] = known_good[name]
    return target


def make_plan(
    revision: str,
    target: Mapping[str, ImageDigest],
    observed: Mapping[str, Sequence[ObservedContainer]],
    known_good: Mapping[str, ImageDigest],
    hashes: Mapping[str, str] | None = None,
) -> Plan:
    """Services whose running digest differs from the target change; services that run the
    target but were never verified healthy (e.g. the agent crashed after apply) are verified.
    With ``hashes`` (the model's configuration hash per service, as compose computes it), a
    service whose running containers carry another hash changes too: compose would
    recreate it.
    """
    changes: list[Change] = []
    unverified: list[str] = []
    config_changed: list[str] = []
    for name in sorted(target):
        want = target[name]
        have = running_digest(observed.get(name, ()))
        if have != want.digest:
            changes.append(Change(service=name, image=want.image, old=have, new=want.digest))
        elif hashes is not None and name in hashes and \
                running_config_hash(observed.get(name, ())) != hashes[name]:
            changes.append(Change(service=name, image=want.image, old=have, new=want.digest))
            config_changed.append(name)
        elif name not in known_good or known_good[name].digest != want.digest:
            unverified.append(name)
    return Plan(revision=revision, target=dict(target), changes=changes, unverified=unverified,
                config_changed=config_changed, hashes=dict(hashes or {}))


def explain(plan: Plan, reasons: Mapping[str, list[str]]) -> Plan:
    """The changes of services whose configuration changes say why (the files that
    change, the compose keys)."""
    if not reasons:
        return plan
    return replace(plan, changes=[
        c.model_copy(update={"because": reasons[c.service]})
        if c.service in plan.config_changed and c.service in reasons else c
        for c in plan.changes])


def previous_digests(
    plan: Plan,
    observed: Mapping[str, Sequence[ObservedContainer]],
    known_good: Mapping[str, ImageDigest],
) -> dict[str, ImageDigest | None]:
    """Where to roll back to, per service this pass touches: its last known-good digest,
    else what ran before the pass, else nothing (the service did not run)."""
    out: dict[str, ImageDigest | None] = {}
    for name in plan.changed_services + plan.unverified:
        if name in known_good and known_good[name].digest != plan.target[name].digest:
            out[name] = known_good[name]
            continue
        containers = observed.get(name, ())
        have = running_digest(containers)
        if have is not None and (have != plan.target[name].digest
                                 or name in plan.config_changed):
            # the repository the running container came from, not the target's: a release
            # that moves a service to another repository rolls back to where it was
            live = next(c for c in containers if c.digest == have)
            out[name] = ImageDigest(image=repository_of(live.image_ref) or plan.target[name].image,
                                    digest=have)
        else:
            out[name] = None
    return out


def carry_over_previous(
    previous: Mapping[str, ImageDigest | None],
    in_flight: InFlight | None,
    target: Mapping[str, ImageDigest],
) -> dict[str, ImageDigest | None]:
    """An earlier pass stopped half-way: what it recorded as "previous" is where this pass
    rolls back to, since what runs now may be that pass's unverified half-release."""
    out = dict(previous)
    if in_flight is not None:
        for name, prev in in_flight.previous.items():
            if name in out and prev is not None and prev.digest != target[name].digest:
                out[name] = prev
    return out


@dataclass(frozen=True)
class Release:
    """A plan about to be acted on: where each touched service rolls back to, in which
    update order it changes, and what ran before the pass acted."""

    plan: Plan
    previous: dict[str, ImageDigest | None]
    orders: dict[str, UpdateOrder]
    observed: Mapping[str, Sequence[ObservedContainer]]
    # containers compose runs per service (``scale`` / ``deploy.replicas``)
    declared: dict[str, int] = field(default_factory=dict)
    # services compose.yml runs that desired-state does not manage, and that do not run
    unmanaged_missing: list[str] = field(default_factory=list)
    # compose.from_repo: the configuration hash each service's new containers carry
    hashes: dict[str, str] = field(default_factory=dict)

    @property
    def revision(self) -> str:
        return self.plan.revision

    @property
    def target(self) -> dict[str, ImageDigest]:
        return self.plan.target

    @property
    def touched(self) -> list[str]:
        return self.plan.changed_services + self.plan.unverified

    def at_target(self, service: str, c: ObservedContainer) -> bool:
        """A container of the release: the target digest (and, with configuration hashes,
        the target configuration)."""
        want = self.hashes.get(service)
        return c.digest == self.target[service].digest and (
            want is None or c.config_hash == want)

    def by_order(self, services: Sequence[str]) -> list[tuple[UpdateOrder, list[str]]]:
        """``services`` grouped by update order, stop-first first (one compose call each)."""
        groups: list[tuple[UpdateOrder, list[str]]] = []
        for order in ("stop-first", "start-first"):
            mine = [s for s in services if self.orders.get(s, "stop-first") == order]
            if mine:
                groups.append((order, mine))
        return groups

    def rollback_pins(self) -> dict[str, ImageDigest]:
        """The digests compose is pinned to during a rollback."""
        return {**self.target, **{n: p for n, p in self.previous.items() if p is not None}}
