"""The clinic's opening hours (``AFTERCARE_OPENING_HOURS``) and when it is next open.

Pure: parsed from text such as ``Mon-Fri 08:30-17:30; Sat 09:00-13:00`` and asked with an
instant and a zone. A patient told to ring the clinic is also told when someone will answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
DAYS = tuple(name[:3].lower() for name in DAY_NAMES)  # mon, tue, ...


def _day(text: str) -> int:
    key = text.strip().lower()[:3]
    if key not in DAYS or text.strip().lower() not in (key, DAY_NAMES[DAYS.index(key)].lower()):
        raise ValueError(f"{text.strip()!r} is not a day (Mon, Tue, ... Sun)")
    return DAYS.index(key)


def _time(text: str) -> time:
    try:
        hours, minutes = text.strip().split(":")
        if len(hours) != 2 or len(minutes) != 2 or not (hours + minutes).isdigit():
            raise ValueError
        return time(int(hours), int(minutes))
    except ValueError:
        raise ValueError(f"{text.strip()!r} is not a time (HH:MM, 24-hour)") from None


@dataclass(frozen=True)
class OpeningHours:
    """Opening times per weekday (0 Monday), each day one span, closing after opening."""

    spans: dict[int, tuple[time, time]]

    @classmethod
    def parse(cls, text: str) -> OpeningHours:
        """``Mon-Fri 08:30-17:30; Sat 09:00-13:00`` (days or day ranges, one span each; days
        not named are closed). Empty: hours not set. Raises ValueError naming the bad part."""
        spans: dict[int, tuple[time, time]] = {}
        for part in filter(None, (p.strip() for p in text.split(";"))):
            days_text, _, hours_text = part.partition(" ")
            if "-" not in hours_text:
                raise ValueError(f"{part!r}: write days then hours, e.g. 'Mon-Fri 08:30-17:30'")
            first, _, last = days_text.partition("-")
            start_day = _day(first)
            end_day = _day(last) if last else start_day
            if end_day < start_day:
                raise ValueError(f"{days_text!r}: the days run backwards")
            opens_text, _, closes_text = hours_text.strip().partition("-")
            opens, closes = _time(opens_text), _time(closes_text)
            if closes <= opens:
                raise ValueError(f"{part!r}: closes before it opens")
            for day in range(start_day, end_day + 1):
                if day in spans:
                    raise ValueError(f"{part!r}: {DAY_NAMES[day]} is given twice")
                spans[day] = (opens, closes)
        return cls(spans)

    def __bool__(self) -> bool:
        return bool(self.spans)

    def next_open(self, now: datetime, zone: ZoneInfo) -> tuple[datetime, bool] | None:
        """(when the clinic is next open, whether that is now); None when hours are not set.
        Open now: the closing time today."""
        if not self.spans:
            return None
        local = now.astimezone(zone)
        today = self.spans.get(local.weekday())
        if today is not None and today[0] <= local.time() < today[1]:
            return _at(local.date(), today[1], zone), True
        for ahead in range(8):
            day = local.date() + timedelta(days=ahead)
            span = self.spans.get(day.weekday())
            if span is None:
                continue
            opens = _at(day, span[0], zone)
            if opens > now:
                return opens, False
        return None  # unreachable with any span set

    def phrase(self, now: datetime, zone: ZoneInfo) -> str:
        """One sentence for a patient (GSM-7), or "" when hours are not set."""
        found = self.next_open(now, zone)
        if found is None:
            return ""
        when, open_now = found
        local, today = when.astimezone(zone), now.astimezone(zone).date()
        clock = local.strftime("%H:%M")
        if open_now:
            return f"The clinic is open until {clock} today."
        if local.date() == today:
            day = "today"
        elif local.date() == today + timedelta(days=1):
            day = "tomorrow"
        else:
            day = f"on {DAY_NAMES[local.weekday()]}"
        return f"The clinic opens again at {clock} {day}."


def _at(day: date, moment: time, zone: ZoneInfo) -> datetime:
    # A local time skipped at a DST change resolves forward (fold 0 then normalise via UTC).
    return datetime.combine(day, moment, tzinfo=zone)
