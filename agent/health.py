"""Health verdicts. ``judge`` is pure; ``wait_healthy`` polls an injected ``observe``.

A container with a HEALTHCHECK is healthy when Docker says so and fails at once when Docker
says ``unhealthy``. One without is healthy after running ``settle`` seconds without a
restart. Exiting (even with code 0) or restarting is a failure.

The wait runs on the monotonic clock and really sleeps between polls, unless a caller passes
its own ``clock``/``sleep``. ``use_clock`` (tests only) swaps that default for a whole process:
the unit tier runs the real wait loop on a virtual clock (sleeping advances it;
tests/unit/conftest.py), so a 3 s failure confirmation or a 30 s timeout costs no real time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import structlog

from agent.errors import DockerUnavailable, TransientError
from agent.failpoints import failpoint
from agent.plan import ObservedContainer

log = structlog.get_logger()

# One observe is one container list (~10 ms): polled at 0.1 s, a container is seen healthy
# within 0.1 s of Docker's verdict (at 0.25 s the release paid ~0.15 s more on average)
POLL_SECONDS = 0.1
# A failure is confirmed for this long before it is the verdict: a daemon shutting down stops
# the containers (they exit, often with code 0) a moment before its socket goes away, and
# that must read as the engine going away, not as a bad release.
CONFIRM_SECONDS = 3.0


@dataclass(frozen=True)
class Verdict:
    state: str  # "ok", "wait", "fail"
    detail: str = ""


# the default clock and sleep of wait_healthy (use_clock)
_clock: Callable[[], float] = time.monotonic
_sleep: Callable[[float], None] = time.sleep


def use_clock(clock: Callable[[], float] | None = None,
              sleep: Callable[[float], None] | None = None) -> None:
    """Tests only: the clock and sleep every ``wait_healthy`` without its own uses from now
    on (both None: the real ``time.monotonic`` and ``time.sleep`` again)."""
    global _clock, _sleep
    _clock = clock if clock is not None else time.monotonic
    _sleep = sleep if sleep is not None else time.sleep


def judge(
    containers: Sequence[ObservedContainer],
    digest: str,
    first_seen: Mapping[str, tuple[float, int]],
    now: float,
    settle: float,
) -> Verdict:
    """Verdict for one service from one observation."""
    mine = [c for c in containers if c.digest == digest]
    if not mine:
        return Verdict("wait", "no container at the new digest yet")
    for c in mine:
        if c.status in ("exited", "dead"):
            return Verdict("fail", f"container {c.name} exited with code {c.exit_code}")
        if c.status == "restarting" or (
            c.container_id in first_seen and c.restart_count > first_seen[c.container_id][1]
        ):
            return Verdict("fail", f"container {c.name} is crash-looping "
                                   f"(restarted {c.restart_count} times)")
        if c.health == "unhealthy":
            out = f": {c.health_output}" if c.health_output else ""
            return Verdict("fail", f"container {c.name} is unhealthy{out}")
    waiting = []
    for c in mine:
        if c.health == "healthy":
            continue
        if c.health == "starting":
            waiting.append(f"{c.name} health starting")
            continue
        if c.status != "running":
            waiting.append(f"{c.name} {c.status}")
            continue
        since = first_seen.get(c.container_id, (now, c.restart_count))[0]
        if now - since < settle:
            waiting.append(f"{c.name} running {now - since:.1f}s of {settle:.0f}s settle time")
    if waiting:
        return Verdict("wait", "; ".join(waiting))
    return Verdict("ok")


def wait_healthy(
    *,
    observe: Callable[[], Mapping[str, Sequence[ObservedContainer]]],
    services: Sequence[str],
    digests: Mapping[str, str],
    timeout: float,
    settle: float,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> str | None:
    """Poll until every service is healthy at its digest (None) or one fails / the
    timeout passes (the reason, naming service and health output).

    If the engine stopped answering during the wait (a daemon restart stops containers and
    resets their state), a failure seen afterwards says nothing about the release: that is
    :class:`DockerUnavailable`, transient, and the release is not judged.

    ``clock``/``sleep`` default to the process's (``use_clock``): the monotonic clock and
    ``time.sleep``."""
    clock = clock if clock is not None else _clock
    sleep = sleep if sleep is not None else _sleep
    deadline = clock() + timeout
    first_seen: dict[str, tuple[float, int]] = {}
    pending = set(services)
    last: dict[str, Verdict] = {}
    engine_lost: str | None = None
    failure: tuple[float, str, str] | None = None  # (seen at, service, reason) unconfirmed
    log.info("agent.health.waiting", services=sorted(services), timeout_seconds=timeout)
    while True:
        now = clock()
        if failure is not None and now - failure[0] >= CONFIRM_SECONDS:
            log.error("agent.health.failed", service=failure[1], digest=digests[failure[1]],
                      reason=failure[2])
            return f"{failure[1]}: {failure[2]}"
        try:
            observed = observe()
        except TransientError as e:  # e.g. the Docker daemon restarting: keep polling
            log.warning("agent.health.observe_failed", error=str(e))
            observed = None
            engine_lost = str(e)
        if failure is not None:
            if engine_lost is not None:
                raise _engine_went_away(engine_lost, f"{failure[1]}: {failure[2]}")
        elif observed is not None:
            failpoint("during-health")
            for svc in sorted(pending):
                for c in observed.get(svc, ()):
                    if c.status == "running" and c.container_id not in first_seen:
                        first_seen[c.container_id] = (now, c.restart_count)
                v = judge(observed.get(svc, ()), digests[svc], first_seen, now, settle)
                last[svc] = v
                if v.state == "fail":
                    if engine_lost is not None:
                        raise _engine_went_away(engine_lost, f"{svc}: {v.detail}")
                    log.warning("agent.health.failing", service=svc, digest=digests[svc],
                                reason=v.detail, confirm_seconds=CONFIRM_SECONDS)
                    failure = (now, svc, v.detail)
                    break
                if v.state == "ok":
                    log.info("agent.health.healthy", service=svc, digest=digests[svc])
                    pending.discard(svc)
        if not pending and failure is None:
            return None
        if now >= deadline and failure is None:
            if engine_lost is not None:
                raise _engine_went_away(engine_lost, "the health wait timed out")
            why = "; ".join(f"{s}: {last[s].detail}" for s in sorted(pending) if s in last)
            reason = f"not healthy within {timeout:.0f}s ({why or 'no container seen'})"
            log.error("agent.health.timeout", services=sorted(pending), reason=reason)
            return reason
        sleep(POLL_SECONDS if failure is not None
              else min(POLL_SECONDS, max(0.0, deadline - clock())))


def _engine_went_away(error: str, then: str) -> DockerUnavailable:
    log.error("agent.health.engine_lost", error=error, then=then,
              message="the engine went away during the health wait; the release is not judged")
    return DockerUnavailable(
        f"the Docker engine went away during the health wait ({error}); afterwards {then}. "
        "Not judged as a failed release: the next pass checks again")


def service_health(containers: Sequence[ObservedContainer]) -> str:
    """One word for status: healthy, unhealthy, starting, running, exited, restarting, missing."""
    if not containers:
        return "missing"
    words = []
    for c in containers:
        if c.status != "running":
            words.append(c.status)
        else:
            words.append(c.health or "running")
    for w in ("unhealthy", "restarting", "exited", "dead", "starting", "created", "paused"):
        if w in words:
            return w
    return words[0]


def snapshot_problems(
    target: Mapping[str, object], observed: Mapping[str, Sequence[ObservedContainer]]
) -> list[str]:
    problems = []
    for svc in sorted(target):
        h = service_health(observed.get(svc, ()))
        if h not in ("healthy", "running"):
            problems.append(f"{svc} is {h}")
    return problems
