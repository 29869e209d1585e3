"""Deploy windows: ``"Mon-Fri 08:00-17:00"`` — when new revisions may be applied.

Pure: parsing and the clock arithmetic only (the clock is handed in). A window is a set of
weekdays (a day, a range such as ``Mon-Fri`` or ``Fri-Mon``, or a comma list of those) and a
time span within each of those days, in the configured IANA time zone; the span may run to
``24:00``, and the start must come before the end.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DAY = {d.lower(): i for i, d in enumerate(DAYS)}
_WINDOW = re.compile(r"^\s*(?P<days>[A-Za-z,\-\s]+?)\s+(?P<start>\d{1,2}:\d{2})\s*-\s*"
                     r"(?P<end>\d{1,2}:\d{2})\s*$")


@dataclass(frozen=True)
class Window:
    text: str
    days: frozenset[int]  # 0 = Monday
    start: int  # minutes after midnight
    end: int  # minutes after midnight, > start (1440 = 24:00)

    def contains(self, local: datetime) -> bool:
        minute = local.hour * 60 + local.minute
        return local.weekday() in self.days and self.start <= minute < self.end


def _minutes(text: str, *, end: bool) -> int:
    h, m = (int(x) for x in text.split(":"))
    if m > 59 or h > 24 or (h == 24 and (m != 0 or not end)):
        raise ValueError(f"{text!r} is not a time of day (HH:MM, 00:00-24:00)")
    return h * 60 + m


def _days(text: str) -> frozenset[int]:
    out: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        ends = [e.strip().lower()[:3] for e in part.split("-")]
        if not part or len(ends) > 2 or any(e not in _DAY for e in ends):
            raise ValueError(f"{part!r} is not a day or day range (Mon..Sun, e.g. Mon-Fri)")
        first, last = _DAY[ends[0]], _DAY[ends[-1]]
        i = first
        while True:
            out.add(i)
            if i == last:
                break
            i = (i + 1) % 7
    return frozenset(out)


def parse_window(text: str) -> Window:
    """``"Mon-Fri 08:00-17:00"`` -> Window; ValueError saying what is wrong."""
    m = _WINDOW.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a window like \"Mon-Fri 08:00-17:00\"")
    start, end = _minutes(m["start"], end=False), _minutes(m["end"], end=True)
    if end <= start:
        raise ValueError(f"{text!r}: the window must end after it starts (same day)")
    return Window(text.strip(), _days(m["days"]), start, end)


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not a known IANA time zone (e.g. \"Europe/Berlin\")"
                         ) from None


def in_any(windows: list[Window], now: datetime, tz: ZoneInfo) -> bool:
    local = now.astimezone(tz)
    return any(w.contains(local) for w in windows)


def next_opening(windows: list[Window], now: datetime, tz: ZoneInfo) -> datetime | None:
    """When the next window opens after ``now`` (in ``tz``), or None without windows."""
    local = now.astimezone(tz)
    best: datetime | None = None
    for offset in range(8):
        day = (local + timedelta(days=offset)).date()
        for w in windows:
            if day.weekday() not in w.days:
                continue
            opens = datetime.combine(day, time(w.start // 60, w.start % 60), tzinfo=tz)
            if opens > local and (best is None or opens < best):
                best = opens
        if best is not None:
            return best
    return best
