"""compose.from_repo as a release hook (:class:`agent.hooks.ReleaseHook`): the compose
files, env files and bind-mounted config a revision carries, from git into project_dir.

validated — the revision's files staged in a mirror of project_dir and checked (references
inside project_dir, images allowed, nothing asked of the host beyond ``[compose.allow]``);
hashes — each service's configuration hash as those files give it; labels — the label of
the git files a service reads; before_apply — the files written (after the intent);
applied — recorded as what a later rollback returns to, services the files dropped removed
(named volumes kept); undo — the release's new services removed, the last applied files
back. A path taken by a local file: StackFilesError; project_dir's other files are never
touched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from agent.config import AgentConfig
from agent.errors import ComposeFileError, ConfigError
from agent.failpoints import failpoint
from agent.plan import ObservedContainer, Release
from agent.policy import check_host_policy, check_raw_references
from agent.ports import ComposeProject, ContainerEngine, Source
from agent.stack import FileSource, StackJournal, check_compose_images, orphans, sha256
from agent.staging import (
    StackCompose,
    StackHashes,
    StagedStack,
    build_mirror,
    env_files,
    file_labels,
    file_refs,
)
from agent.state import AgentState, ImageDigest, save_best_effort
from agent.strategies import pins

__all__ = ["StackFiles"]

log = structlog.get_logger()


class StackFiles:
    def __init__(self, cfg: AgentConfig, source: Source, engine: ContainerEngine,
                 compose: ComposeProject, compose_for: Callable[..., StackCompose],
                 project_compose: Callable[[], StackCompose]) -> None:
        self.cfg, self.source, self.engine, self.compose = cfg, source, engine, compose
        self.compose_for, self.project_compose = compose_for, project_compose
        self.project_dir = cfg.compose.project_dir
        self.journal = StackJournal(cfg.agent.state_dir, cfg.compose.project_dir)

    # ------------------------------------------------------------------ validated
    def validated(self, revision: str, *, failed: bool) -> StagedStack:
        """The files project_dir must hold for ``revision`` — its own, or, for a revision
        that failed before, the last applied ones — staged and checked. The applied
        revision itself (an idle pass, a rollback to it) is read from the kept copy: no
        source request."""
        if not isinstance(self.source, FileSource):
            raise ConfigError("compose.from_repo", [
                f"the {self.cfg.source.kind} source cannot read files from the repository"])
        applied = self.journal.applied()
        same = applied is not None and applied.revision == revision
        kept = self.journal.applied_files() if failed or same else None
        if kept is not None and applied is not None:
            stack = self._staged(applied.revision, kept)
        else:
            stack = self._staged(revision, self._read(revision))
        if stack.plan.touches or stack.plan.adopted:
            self._check(stack, f"compose.from_repo@{revision[:12]}")
        return stack

    def _read(self, revision: str) -> dict[str, bytes]:
        assert isinstance(self.source, FileSource)
        return self.source.read_files(revision, self.cfg.compose.from_repo or [])

    def _staged(self, rev: str | None, want: Mapping[str, bytes]) -> StagedStack:
        """Compose reading the files as they will be: from project_dir when they are its
        files already, else from a mirror of it with the revision's files."""
        plan = self.journal.plan(rev, want)
        if not plan.touches:
            return StagedStack(plan, self.project_compose())
        mirror = self.journal.dir / "staging"
        # before compose reads anything: the files the compose files name (env_file,
        # include, extends) stay inside project_dir and the repository, unless the
        # host's [compose.allow] says otherwise (agent/policy.py)
        check_raw_references(plan.files, self.project_dir, self.cfg.compose.allow,
                             compose_files=self.cfg.compose.files,
                             source=f"compose.from_repo@{(rev or '?')[:12]}")
        build_mirror(mirror, self.project_dir, plan.files, absent=plan.deletes)
        compose = self.compose_for([mirror / f for f in self.cfg.compose.files], mirror=mirror)
        return StagedStack(plan, compose, mirror=mirror)

    def _check(self, stack: StagedStack, where: str) -> None:
        """The revision's fully resolved model (every profile, every included and extended
        file): every image inside the allowlist, nothing asked of the host beyond
        [compose.allow] (privileged, host namespaces, binds outside project_dir...)."""
        model = stack.compose.config(profiles=["*"])
        check_compose_images(model.get("services") or {}, self.cfg.trust.allowed_images, where)
        check_host_policy(model, self.project_dir, self.cfg.compose.allow, source=where)

    # ------------------------------------------------------------------ hashes / labels
    def hashes(self, staged: StagedStack | None,
               target: Mapping[str, ImageDigest]) -> StackHashes | None:
        """Per service, the configuration hash it must run with, pinned to the target
        digests and labelled with the git files it reads, and why a service the
        revision's files change changes."""
        if staged is None:
            return None
        new = {p: sha256(b) for p, b in staged.plan.files.items()}
        mirrored = staged.compose if staged.mirror is not None else None
        env_new = (env_files(staged.plan.files[f] if f in staged.plan.files
                             else _read_or_empty(self.project_dir / f)
                             for f in self.cfg.compose.files) if mirrored is not None else None)
        got = StackHashes.of(self.project_compose(), mirrored, self.project_dir,
                             self.journal.current().files, new, pins(target),
                             env_now=self._project_env(), env_new=env_new)
        staged.hashes, staged.reasons = got.hashes, got.reasons
        return got

    def _project_env(self) -> dict[str, list[str]]:
        return env_files(_read_or_empty(self.project_dir / f) for f in self.cfg.compose.files)

    def labels(self) -> dict[str, dict[str, str]]:
        """Per service, the label of the git files it reads, as project_dir holds them."""
        current = self.journal.current().files
        try:
            model = self.project_compose().model()
        except ComposeFileError:
            return {}
        return file_labels(file_refs(model, self.project_dir, current, self._project_env()),
                           current)

    # ------------------------------------------------------------------ write / record
    def before_apply(self, staged: StagedStack | None) -> bool:
        """Write the validated files into project_dir (after the release's intent)."""
        if staged is None:
            return False
        plan = staged.plan
        if plan.drifted:
            log.warning("agent.drift.corrected", files=plan.drifted,
                        message="files the agent wrote were edited; git's content is back")
        if not (plan.touches or plan.adopted):
            return False
        self.journal.write(plan)
        failpoint("after-files")
        log.info("agent.stack.written", revision=plan.revision, written=plan.writes,
                 removed=plan.deletes, adopted=plan.adopted)
        return plan.touches

    def applied(self, state: AgentState, staged: StagedStack | None,
                services: Mapping[str, Any],
                observed: Mapping[str, Sequence[ObservedContainer]],
                release: Release | None) -> None:
        """The revision runs healthy: services its compose files no longer have go (their
        named volumes stay), and its files are what a later rollback returns to."""
        if staged is None:
            return
        gone = orphans(observed, {*services, *staged.compose.inactive_services()})
        if gone:
            log.info("agent.stack.removing", services=gone,
                     message="no longer in the compose files; named volumes kept")
            for s in gone:
                for c in observed.get(s, ()):
                    self.engine.stop_and_remove(c.container_id)
        journal, plan = self.journal, staged.plan
        save_best_effort(lambda: journal.record_applied(plan), what="applied files")

    def undo(self, release: Release) -> None:
        """A failed release: its new services go while compose still knows them, then the
        last applied revision's files come back (the strategies restore the rest)."""
        added = [s for s in release.touched if release.previous.get(s) is None]
        if added:
            self.compose.remove(added)
        restored = self.journal.restore_applied()
        failpoint("after-rollback-files")
        if restored is not None:
            log.info("agent.rollback.files", revision=restored.revision,
                     written=restored.writes, removed=restored.deletes)


def _read_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""

