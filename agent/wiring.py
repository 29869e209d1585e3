"""The edges the pass runs on, built from the config: the source (git or GitHub REST), the
engine (Docker or Swarm), the compose project and compose on a set of files. The pass
(:mod:`agent.reconcile`) is handed these through the protocols of :mod:`agent.ports` and
never builds an edge itself; :func:`agent.app.build_reconciler` asks here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from agent.config import AgentConfig
from agent.ports import ComposeProject, Engine, Source
from agent.staging import StackCompose

__all__ = ["OVERRIDE_FILE", "build_compose", "build_engine", "build_source", "compose_for",
           "files_compose"]

OVERRIDE_FILE = "compose.override.gitops-agent.json"


def build_source(cfg: AgentConfig) -> Source:
    if cfg.source.kind == "github":
        from agent.edges.github import GitHubSource

        return GitHubSource.from_config(cfg)
    from agent.edges.git import GitSource
    from agent.secrets import token_from_file

    return GitSource(
        cfg.source.repo,
        cfg.source.branch,
        cfg.source.path,
        cfg.agent.state_dir / "source.git",
        ssh_key_file=cfg.source.ssh_key_file,
        token=token_from_file(cfg.source.token_file, "source.token_file"),
        timeout=cfg.source.timeout_seconds,
        allowed_signers_file=(
            cfg.trust.allowed_signers_file if cfg.trust.require_signed_commits else None
        ),
    )


def build_engine(cfg: AgentConfig) -> Engine:
    if cfg.engine.kind == "swarm":
        from agent.edges.swarm import SwarmEngine

        return SwarmEngine()
    from agent.edges.docker import DockerEngine

    return DockerEngine(pull_stall_timeout=cfg.agent.pull_stall_timeout_seconds)


def build_compose(cfg: AgentConfig) -> ComposeProject:
    from agent.edges.compose import Compose, find_compose_command

    if cfg.engine.kind == "swarm":
        from agent.edges.swarm import SwarmStack
        from agent.secrets import registry_auth

        return SwarmStack(find_compose_command(cfg.compose.command), cfg.compose.project_dir,
                          cfg.compose.files, cfg.compose.name,
                          cfg.agent.state_dir / OVERRIDE_FILE, registry_auth=registry_auth(cfg))

    return Compose(find_compose_command(cfg.compose.command), cfg.compose.project_dir,
                   cfg.compose.files, cfg.compose.name,
                   override=cfg.agent.state_dir / OVERRIDE_FILE, profiles=cfg.compose.profiles)


def files_compose(cfg: AgentConfig, files: Sequence[Path],
                  mirror: Path | None = None) -> StackCompose:
    """compose on a set of files: project_dir's, or (``mirror``) a staged revision in a
    mirror of project_dir, run there as its project directory, the model naming
    project_dir's paths. No override (hashes get the pins on stdin)."""
    from agent.edges.compose import Compose, find_compose_command

    return Compose(find_compose_command(cfg.compose.command), mirror or cfg.compose.project_dir,
                   [str(f) for f in files], cfg.compose.name, profiles=cfg.compose.profiles,
                   real_dir=cfg.compose.project_dir if mirror is not None else None)


def compose_for(cfg: AgentConfig) -> Callable[..., StackCompose]:
    """The pass's ``compose_for``: compose on ``files`` (optionally in a ``mirror``)."""
    return lambda files, mirror=None: files_compose(cfg, files, mirror)
