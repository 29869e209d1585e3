"""The unit tier never waits on real time where the code lets a clock or a sleep in.

* The health wait (``agent.health.wait_healthy``, reached through every pass) runs its real
  loop on a :class:`VirtualClock`: each poll's sleep advances the clock at once, so the 3 s
  failure confirmation, a settle time or a health timeout costs no real time.
* The retry policy (``agent.retry``) records its waits instead of sleeping them
  (``retry_waits``); the attempts, the waits chosen and the logs are unchanged.

Both are per test (a fresh clock, an empty record) and undone afterwards. The end-to-end
tiers keep real time: they run against a real engine.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from agent import health, retry


class VirtualClock:
    """A monotonic clock that moves only when slept on: ``clock()`` reads it, ``sleep(s)``
    advances it by ``s`` at once. Thread-safe."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self._now += max(0.0, seconds)


@pytest.fixture(autouse=True)
def health_clock() -> Iterator[VirtualClock]:
    """The virtual clock every health wait of this test runs on."""
    clock = VirtualClock()
    health.use_clock(clock, clock.sleep)
    yield clock
    health.use_clock(None, None)


@pytest.fixture(autouse=True)
def retry_waits() -> Iterator[list[float]]:
    """The waits the retry policy chose during this test, in order (not slept)."""
    waits: list[float] = []
    retry.set_sleep(waits.append)
    yield waits
    retry.set_sleep(None)
