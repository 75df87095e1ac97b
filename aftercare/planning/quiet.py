"""Quiet hours: local times of day when no SMS is sent (default 21:00-08:00)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

_PATTERN = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


def local_instant(day: datetime, at: time, zone: ZoneInfo) -> datetime:
    """The instant of wall time ``at`` on ``day``'s date in ``zone``, in UTC.

    A wall time that does not exist (inside a spring-forward gap) is moved forward by the gap,
    as clocks do; an ambiguous one (autumn fold) takes its first occurrence.
    """
    # PEP 495: with fold=0 a time in a gap is read with the offset from before the transition,
    # which lands it gap-length later on the new clock (01:30 -> 02:30 BST); fold=1 would read it
    # with the later offset and move it backwards, before the gap.
    if at.tzinfo is not None:
        return datetime.combine(day.date(), at, tzinfo=zone).astimezone(UTC)
    return _wall_to_utc(day.date(), at, at.fold, zone)


# A session plans ~40 wall times, and the sessions treated on the same days share most of them
# (day N at 08:00, 20:00): each (date, wall time, zone) is converted once. Pure functions of
# their key, so a hit returns exactly what the conversion would. ``fold`` is part of the key
# because times that differ only in fold compare equal.
@lru_cache(maxsize=16384)
def _wall_to_utc(day: date, at: time, fold: int, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


@dataclass(frozen=True)
class QuietHours:
    """A local window [start, end) that may wrap past midnight. Empty when start == end."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> QuietHours:
        """``21:00-08:00``. The same text gives the very same (immutable) object: settings parse
        it for every enrolment, and the caches below, keyed on it, then compare it by identity
        rather than field by field."""
        return _parse(text)

    def contains(self, local: time) -> bool:
        if self.start == self.end:
            return False
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def defer(self, instant: datetime, zone: ZoneInfo) -> datetime:
        """The first allowed minute at or after ``instant`` (UTC in, UTC out)."""
        if instant.tzinfo is UTC and not instant.fold:
            return _defer_utc(self, instant, zone)
        return self._defer(instant, zone)

    def _defer(self, instant: datetime, zone: ZoneInfo) -> datetime:
        local = instant.astimezone(zone)
        if not self.contains(local.time()):
            return instant
        day = local if local.time() < self.end else local + timedelta(days=1)
        return local_instant(day, self.end, zone)


@lru_cache(maxsize=64)
def _parse(text: str) -> QuietHours:
    match = _PATTERN.match(text)
    if not match:
        raise ValueError(f"quiet hours {text!r} must look like 21:00-08:00")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise ValueError(f"quiet hours {text!r} has an impossible time")
    return QuietHours(time(h1, m1), time(h2, m2))


# The planner defers each SMS time of a session, and sessions share most of those instants;
# only UTC instants are cached, so that a hit returns the very value (and tzinfo) a call would.
@lru_cache(maxsize=16384)
def _defer_utc(quiet: QuietHours, instant: datetime, zone: ZoneInfo) -> datetime:
    return quiet._defer(instant, zone)
