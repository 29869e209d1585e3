"""Compose as a platform (:class:`agent.strategies.Platform`): the touched services grouped
by update order, each group through its strategy, and the health wait on the engine's
containers. Its strategies act on single containers, so it holds a
:class:`agent.strategies.ContainerToolkit` (the engine a :class:`agent.ports.ContainerEngine`);
Swarm's platform is :class:`agent.swarm.SwarmPlatform`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from agent import health
from agent.plan import ObservedContainer, Release
from agent.state import ImageDigest
from agent.strategies import ContainerToolkit, Toolkit, UpdateStrategy, strategy_for

if TYPE_CHECKING:
    from agent.config import AgentConfig

__all__ = ["ComposePlatform", "compose_platform", "wait_healthy"]


class ComposePlatform:
    def __init__(self, kit: ContainerToolkit, *, timeout: float, settle: float) -> None:
        self.kit, self.timeout, self.settle = kit, timeout, settle

    def strategies(self, release: Release,
                   services: Sequence[str]) -> list[tuple[UpdateStrategy, list[str]]]:
        return [(strategy_for(order, self.kit), group)
                for order, group in release.by_order(services)]

    def verify(self, services: Sequence[str], release: Release) -> str | None:
        return self.wait_healthy(services, release.target, release.hashes)

    def wait_healthy(self, services: Sequence[str], target: Mapping[str, ImageDigest],
                     hashes: Mapping[str, str] | None = None) -> str | None:
        return wait_healthy(self.kit, services, target, hashes,
                            timeout=self.timeout, settle=self.settle)


def compose_platform(cfg: AgentConfig, kit: Toolkit) -> ComposePlatform:
    """``[engine] kind = "compose"``: compose's platform on ``kit``'s engine, which must
    have container operations (TypeError for Swarm's: see strategies.container_engine)."""
    return ComposePlatform(ContainerToolkit.of(kit), timeout=cfg.agent.health_timeout_seconds,
                           settle=cfg.agent.settle_seconds)


def wait_healthy(kit: Toolkit, services: Sequence[str], target: Mapping[str, ImageDigest],
                 hashes: Mapping[str, str] | None = None, *, timeout: float,
                 settle: float) -> str | None:
    """Every service's containers at its target digest healthy (None), else why not. Reads
    only what every engine offers (``observe``)."""
    def observe() -> dict[str, list[ObservedContainer]]:
        seen = kit.engine.observe(kit.project, set(services), detail=True)
        if not hashes:
            return seen
        # compose.from_repo: the release's containers carry its configuration hash
        # (another container at the same digest is an older configuration, retired)
        return {s: [c for c in cs if s not in hashes or c.config_hash == hashes[s]]
                for s, cs in seen.items()}

    return health.wait_healthy(
        observe=observe,
        services=services,
        digests={s: target[s].digest for s in services},
        timeout=timeout,
        settle=settle,
    )
