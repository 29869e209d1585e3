"""What a source returns, whatever its kind (git, GitHub REST): see :mod:`agent.ports`."""

from __future__ import annotations

from agent.ports import Fetched, Source

__all__ = ["Fetched", "Source"]
