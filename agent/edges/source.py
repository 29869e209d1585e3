"""What a source returns, whatever its kind (git, GitHub REST)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Fetched:
    revision: str  # commit SHA the content was read at
    content: bytes  # desired-state.yml at exactly that revision
    path: str  # path inside the repository, for messages
    went_backwards: bool = False  # the branch head moved to an ancestor (force-push)
    trust_error: str | None = None  # set when the trust policy refuses this revision


class Source(Protocol):
    def fetch(self) -> Fetched: ...

    def describe(self) -> str: ...
