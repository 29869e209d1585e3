"""Image retention: after a successful release, images of the managed services'
repositories that no container uses and that are not among the last ``keep_releases``
known-good digests of their service (besides the one running) are removed: that
repository's references to them (``repo@digest``, ``repo:tag``) are removed, and the engine
deletes an image with its last reference. Another repository's references (a mirror, the
same content pushed elsewhere) and images of any other repository are never touched, nor
images the repository knows only by tag; nothing is forced (the engine refuses to remove an
image a container uses)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from agent.errors import ImageRemovalRefused
from agent.plan import Release, repository_of
from agent.ports import Engine
from agent.state import AgentState

log = structlog.get_logger()


def kept_digests(state: AgentState, keep: int) -> dict[str, list[str]]:
    """Per service: the digest it runs now (its known-good one) plus the digests of its
    last ``keep`` earlier known-good releases (newest first): the rollback targets."""
    out: dict[str, list[str]] = {s: [d.digest] for s, d in state.known_good.items()}
    for rel in state.releases:
        for service, d in rel.digests.items():
            mine = out.setdefault(service, [])
            current = service in state.known_good
            if d.digest not in mine and len(mine) < keep + (1 if current else 0):
                mine.append(d.digest)
    return out


def managed_repositories(state: AgentState) -> dict[str, set[str]]:
    """Repository of each managed service -> the services that use it (current releases)."""
    repos: dict[str, set[str]] = {}
    for service, d in state.known_good.items():
        repos.setdefault(repository_of(d.image), set()).add(service)
    return repos


def prune(engine: Engine, state: AgentState, keep: int) -> list[str]:
    """Remove what retention lets go; returns the ids removed. Raises only what the engine
    raises when it cannot be reached; a refusal to remove one image is logged and skipped."""
    kept = kept_digests(state, keep)
    removed: list[str] = []
    for repo, services in sorted(managed_repositories(state).items()):
        keep_here = {dg for s in services for dg in kept.get(s, [])}
        for img in engine.local_images(repo):
            if img.in_use or not img.digests or keep_here.intersection(img.digests):
                continue
            try:
                for ref in img.references:  # this repository's only: others keep theirs
                    engine.remove_reference(ref)
            except ImageRemovalRefused as e:
                log.warning("agent.retention.refused", repository=repo, image=img.id[:19],
                            error=str(e))
                continue
            removed.append(img.id)
            log.info("agent.retention.removed", repository=repo, image=img.id[:19],
                     digests=list(img.digests))
    return removed


def prune_best_effort(engine: Engine, state: AgentState, keep: int) -> None:
    """After a successful release: a failure is logged, never fails the release."""
    try:
        prune(engine, state, keep)
    except Exception as e:  # noqa: BLE001 - retention never affects a release
        log.warning("agent.retention.failed", error=str(e) or repr(e))


def targets_on_disk(engine: Engine, state: AgentState) -> list[dict[str, object]]:
    """The recorded releases (other than the one running) whose images are all local: what
    ``rollback`` can return to without the registry."""
    out: list[dict[str, object]] = []
    current = {s: d.digest for s, d in state.known_good.items()}
    for rel in state.releases:
        digests: Mapping[str, str] = {s: d.digest for s, d in rel.digests.items()}
        if digests == current:
            continue
        if all(engine.has_image(d.image, d.digest) for d in rel.digests.values()):
            out.append({"revision": rel.revision, "at": rel.at.isoformat(),
                        "digests": dict(digests)})
    return out


class Retention:
    """Retention as a release hook (:class:`agent.hooks.ReleaseHook`): after a release
    that ends healthy, prune; every other phase is nothing to it."""

    def __init__(self, engine: Engine, keep: int) -> None:
        self.engine, self.keep = engine, keep

    def validated(self, revision: str, *, failed: bool) -> None:
        return None

    def hashes(self, staged: object, target: object) -> None:
        return None

    def labels(self) -> None:
        return None

    def before_apply(self, staged: object) -> bool:
        return False

    def applied(self, state: AgentState, staged: object, services: Mapping[str, Any],
                observed: object, release: Release | None) -> None:
        if release is not None:  # an idle pass found the target running: nothing new
            prune_best_effort(self.engine, state, self.keep)

    def undo(self, release: Release) -> None:
        return None
