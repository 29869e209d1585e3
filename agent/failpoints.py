"""Failpoints for fault-injection tests: ``GITOPS_AGENT_FAILPOINTS=after-pull`` makes the
process SIGKILL itself when it reaches that point, exactly as an OOM kill or power cut would.

Names: after-fetch, after-pull, during-apply, after-apply, during-health, during-rollback;
with compose.from_repo also during-files (after the first file written), after-files,
after-rollback-files.
Unset in production (the default) it costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

_ENV = "GITOPS_AGENT_FAILPOINTS"


def armed(name: str) -> bool:
    active = os.environ.get(_ENV) or ""
    return name in active.split(",")


def failpoint(name: str) -> None:
    if armed(name):
        os.kill(os.getpid(), signal.SIGKILL)
