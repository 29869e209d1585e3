"""Time: one timestamp format in all CLI output (ISO 8601, UTC, seconds, ``Z``), and the
monotonic clock the daemon's schedule runs on (:class:`Clock`: a virtual one in tests)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Protocol


def iso(value: object) -> str:
    if isinstance(value, str):
        text = value
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return text
    if not isinstance(value, datetime):
        return "-" if value is None else str(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Clock(Protocol):
    """Monotonic seconds, and a wait measured on them that an event cuts short."""

    def monotonic(self) -> float: ...

    def wait(self, event: threading.Event, timeout: float) -> bool:
        """Until ``event`` is set (True) or ``timeout`` seconds passed on this clock (False)."""
        ...


class SystemClock:
    """The real one: ``time.monotonic``, and ``Event.wait`` (which measures its timeout on
    the monotonic clock, so no step of the wall clock shortens or stretches it)."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, timeout: float) -> bool:
        return event.wait(timeout=timeout)


SYSTEM_CLOCK: Clock = SystemClock()
