"""Diff desired against observed: which services change, to what. Pure functions only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from agent.desired import DesiredState
from agent.state import Change, ImageDigest


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


def running_digest(containers: Sequence[ObservedContainer]) -> str | None:
    """The digest a service runs: the one all its running containers share, else None."""
    live = [c for c in containers if c.status in ("running", "restarting")]
    digests = {c.digest for c in live}
    if len(live) == 0 or len(digests) != 1:
        return None
    return next(iter(digests))


@dataclass(frozen=True)
class Plan:
    revision: str
    # the digest set this pass aims at, for every managed service
    target: dict[str, ImageDigest]
    changes: list[Change] = field(default_factory=list)
    # services already at target but not yet verified since a crash/earlier pass
    unverified: list[str] = field(default_factory=list)

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
) -> Plan:
    """Services whose running digest differs from the target change; services that run the
    target but were never verified healthy (e.g. the agent crashed after apply) are verified.
    """
    changes: list[Change] = []
    unverified: list[str] = []
    for name in sorted(target):
        want = target[name]
        have = running_digest(observed.get(name, ()))
        if have != want.digest:
            changes.append(Change(service=name, image=want.image, old=have, new=want.digest))
        elif name not in known_good or known_good[name].digest != want.digest:
            unverified.append(name)
    return Plan(revision=revision, target=dict(target), changes=changes, unverified=unverified)


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
        have = running_digest(observed.get(name, ()))
        if have is not None and have != plan.target[name].digest:
            out[name] = ImageDigest(image=plan.target[name].image, digest=have)
        else:
            out[name] = None
    return out
