"""The release-hook port: what a feature adds to a pass, phase by phase.

The pass (:mod:`agent.reconcile`, :mod:`agent.release`) and the operator rollback
(:mod:`agent.rollback`) call every hook at the same points and never ask which features
are on. Two features implement it: the compose files from git (``compose.from_repo``,
:class:`agent.stack_files.StackFiles`) and image retention
(:class:`agent.retention.Retention`).

=============  ============================  ==========================================
hook           when                          StackFiles / Retention
=============  ============================  ==========================================
validated      validate, before the compose  the revision's files, staged and checked
               model is read                 against host policy / –
hashes         diff                          each service's configuration hash, and why
                                             it changes / –
labels         every pin                     the label of the git files each service
                                             reads / –
before_apply   after the intent is recorded  the files written into project_dir / –
applied        the target runs healthy       the files recorded, orphans removed /
                                             old images pruned (releases only)
undo           a failed release              added services removed, the applied files
                                             back / –
=============  ============================  ==========================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.desired import DesiredState, UpdateOrder
from agent.plan import ObservedContainer, Release
from agent.ports import Fetched
from agent.staging import StackHashes, StagedStack
from agent.state import AgentState, ImageDigest


@dataclass(frozen=True)
class Loaded:
    """A fetched revision that passed validation: safe to act on."""

    fetched: Fetched
    desired: DesiredState
    compose_services: dict[str, Any]
    orders: dict[str, UpdateOrder]
    stack: StagedStack | None = None  # a hook's files for the revision (compose.from_repo)

    @property
    def revision(self) -> str:
        return self.fetched.revision


class ReleaseHook(Protocol):
    def validated(self, revision: str, *, failed: bool) -> StagedStack | None:
        """The files the revision runs with (a revision that failed before: the last
        applied ones), staged and checked; None when the hook brings none."""
        ...

    def hashes(self, staged: StagedStack | None,
               target: Mapping[str, ImageDigest]) -> StackHashes | None:
        """Per service, the configuration hash it must run with, and why it changes."""
        ...

    def labels(self) -> dict[str, dict[str, str]] | None:
        """Per service, labels every pin adds (what project_dir holds now); None: the
        hook labels nothing."""
        ...

    def before_apply(self, staged: StagedStack | None) -> bool:
        """After the intent is recorded: put on disk what the release needs. True when
        something changed (unmanaged services may then need bringing up)."""
        ...

    def applied(self, state: AgentState, staged: StagedStack | None,
                services: Mapping[str, Any],
                observed: Mapping[str, Sequence[ObservedContainer]],
                release: Release | None) -> None:
        """The target runs healthy (``release`` None: an idle pass found it so)."""
        ...

    def undo(self, release: Release) -> None:
        """A failed release: put back what before_apply changed."""
        ...
