"""The one retry policy of the agent, defined once (stamina's idea).

Transient errors (source, registry, Docker engine unreachable) are retried with capped
exponential backoff and jitter. ``set_fast(True)`` — or ``GITOPS_AGENT_FAST_RETRY=1`` in the
environment — keeps the number of attempts but shrinks every wait to milliseconds, so tests
exercise the real retry path quickly.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
import tenacity

from agent.errors import TransientError

T = TypeVar("T")

ATTEMPTS = 4
WAIT_INITIAL = 1.0
WAIT_MAX = 30.0
_fast = os.environ.get("GITOPS_AGENT_FAST_RETRY", "") not in ("", "0")
# retries scheduled since the process started, by event ("agent.pull", "agent.fetch"):
# read by the metrics observer (gitops_agent_pull_retries_total)
retries_scheduled: Counter[str] = Counter()


def set_fast(on: bool) -> None:
    global _fast
    _fast = on


def is_fast() -> bool:
    return _fast


def _wait(retry_state: tenacity.RetryCallState) -> float:
    scale = 0.01 if _fast else 1.0
    policy = tenacity.wait_exponential(
        multiplier=WAIT_INITIAL * scale, max=WAIT_MAX * scale
    ) + tenacity.wait_random(0, WAIT_INITIAL * scale / 2)
    return float(policy(retry_state))


def retry_transient(
    fn: Callable[[], T],
    *,
    event: str,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = TransientError,
    attempts: int = ATTEMPTS,
    **context: Any,
) -> T:
    """Call ``fn``; on ``retry_on`` wait and try again, ``attempts`` times in all.

    Each retry is logged as ``<event>.retry_scheduled`` with the attempt, the wait and the
    error. The last error is re-raised unchanged.
    """
    log = structlog.get_logger()

    def before_sleep(rs: tenacity.RetryCallState) -> None:
        exc = rs.outcome.exception() if rs.outcome else None
        retries_scheduled[event] += 1
        log.warning(
            f"{event}.retry_scheduled",
            attempt=rs.attempt_number,
            of=attempts,
            wait_seconds=round(rs.upcoming_sleep, 3),
            error=str(exc),
            **context,
        )

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=_wait,
        retry=tenacity.retry_if_exception_type(retry_on),
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(fn)
