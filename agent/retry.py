"""The one retry policy of the agent, defined once (stamina's idea).

Transient errors (source, registry, Docker engine unreachable) are retried with capped
exponential backoff and jitter. ``set_fast(True)`` — or ``GITOPS_AGENT_FAST_RETRY=1`` in the
environment — keeps the number of attempts but shrinks every wait to milliseconds, so tests
exercise the real retry path quickly. ``set_sleep`` (tests only) replaces the wait itself: the
unit tier records the waits instead of sleeping them.

tenacity is imported only once a call has failed: the first attempt runs bare, so a pass in
which nothing fails (every idle poll) does not load the retry machinery at all.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from agent.errors import TransientError

if TYPE_CHECKING:
    import tenacity

T = TypeVar("T")

ATTEMPTS = 4
WAIT_INITIAL = 1.0
WAIT_MAX = 30.0
_fast = os.environ.get("GITOPS_AGENT_FAST_RETRY", "") not in ("", "0")
# retries scheduled since the process started, by event ("agent.pull", "agent.fetch"):
# read by the metrics observer (gitops_agent_pull_retries_total)
retries_scheduled: Counter[str] = Counter()
# how a retry waits (set_sleep); None: tenacity's own sleep, really waiting
_sleep: Callable[[float], None] | None = None


def set_fast(on: bool) -> None:
    global _fast
    _fast = on


def is_fast() -> bool:
    return _fast


def set_sleep(sleep: Callable[[float], None] | None) -> None:
    """Tests only: every retry from now on waits by calling ``sleep`` with the seconds the
    policy chose (None: really sleeping again)."""
    global _sleep
    _sleep = sleep


def _wait(retry_state: tenacity.RetryCallState) -> float:
    import tenacity

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
    try:
        return fn()
    except retry_on as e:
        if attempts <= 1:
            raise
        first_failure: BaseException | None = e

    import tenacity

    def replay_then_call() -> T:
        """Attempt 1 already ran: hand its failure to tenacity, then call ``fn`` again."""
        nonlocal first_failure
        if first_failure is not None:
            err, first_failure = first_failure, None
            raise err
        return fn()

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
        sleep=_sleep if _sleep is not None else tenacity.nap.sleep,
    )
    return retrying(replay_then_call)
