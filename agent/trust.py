"""The source-trust policy that spans revisions: no replay, no sideways move.

A signature proves who made a commit, not that it is the *next* commit. With signed commits
required, someone who can move the branch (a compromised git host, a leaked push token)
could otherwise point it back at an older signed commit (replaying a release with a known
hole) or at a signed commit that was never merged (a review-rejected branch). So the new
head must descend from the last applied revision. ``sync --force`` or
``[trust] allow_rewind = true`` accepts a head that does not, and says so in the log.

Pure: the ancestry question is asked of the source (git: ``merge-base --is-ancestor``,
GitHub: the compare API).
"""

from __future__ import annotations

from typing import Protocol

import structlog

from agent.errors import UntrustedRevision

log = structlog.get_logger()


class AncestryOracle(Protocol):
    def is_ancestor(self, ancestor: str, descendant: str) -> bool: ...

    def describe(self) -> str: ...


def check_ancestry(
    source: AncestryOracle,
    last_applied: str | None,
    revision: str,
    *,
    require_signed: bool,
    allow_rewind: bool,
    force: bool,
    path: str = "desired-state.yml",
) -> None:
    """Refuse (:class:`UntrustedRevision`) a ``revision`` that does not descend from
    ``last_applied`` when signed commits are required, unless rewinding is allowed or forced.

    Without signed commits a force-push is followed (and logged by the pass, as before):
    nothing is asked. The first revision (nothing applied yet) and the same revision pass.
    """
    if not require_signed or last_applied is None or last_applied == revision:
        return
    if source.is_ancestor(last_applied, revision):
        return
    backwards = source.is_ancestor(revision, last_applied)
    how = ("an older commit (the branch moved back)" if backwards
           else "a commit that does not descend from it (the branch moved sideways)")
    if force or allow_rewind:
        log.warning(
            "agent.trust.rewind_accepted",
            revision=revision,
            last_applied=last_applied,
            backwards=backwards,
            why="sync --force" if force else "trust.allow_rewind",
            source=source.describe(),
        )
        return
    raise UntrustedRevision(
        f"{path}@{revision[:12]}",
        [f"revision {revision} is {how}, not a descendant of the last applied revision "
         f"{last_applied}; refusing a replay or a sideways move of the branch "
         "(run 'sync --force' or set trust.allow_rewind = true to accept it)"],
    )


__all__ = ["AncestryOracle", "check_ancestry"]
