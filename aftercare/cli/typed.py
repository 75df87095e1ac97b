"""What people type on the command line, read as the service's values: ``now``, a local time in
the patient's zone, a day-first date, a channel in capitals, a zone with a typo. Each refusal is
a :class:`Refused` carrying the one line the CLI prints."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from aftercare.sessions.zones import suggest_zones
from aftercare.validation import ValidationFailed, clean_timezone

# Day first, as in the UK: 27/03/2026 15:00 (also with '.' or '-' between the parts).
_DAY_FIRST = re.compile(
    r"^(?P<d>\d{1,2})[/.\-](?P<m>\d{1,2})[/.\-](?P<y>\d{4})"
    r"(?:[ T](?P<H>\d{1,2}):(?P<M>\d{2})(?::(?P<S>\d{2}))?)?$"
)
_ISO_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class Refused(ValueError):
    """Input the CLI refuses; ``str()`` is the line it prints (``field: reason``)."""


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="minutes" if not value.second else "seconds")


def read_zone(text: str, flag: str = "timezone") -> str:
    """An IANA zone name as typed, or :class:`Refused` with the closest names."""
    try:
        return clean_timezone(text, (flag,))
    except ValidationFailed as exc:
        hint = suggest_zones(text) if text.isprintable() else []
        line = f"{flag}: {exc.errors[0].msg}"
        if hint:
            # The suggestions say what a zone looks like better than the general example does.
            line = f"{flag}: {text!r} is not an IANA time zone; did you mean {' or '.join(hint)}?"
        raise Refused(line) from exc


def read_channels(text: str) -> str:
    """Channels in any case (``SMS,Email`` -> ``sms,email``); checked by the service."""
    return ",".join(part.strip().lower() for part in text.split(","))


def has_offset(text: str) -> bool:
    """Whether ``text`` is an ISO-8601 time with its own UTC offset."""
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00")).tzinfo is not None
    except ValueError:
        return False


def read_instant(text: str, *, zone: str, now: datetime, flag: str = "treated-at") -> datetime:
    """``now``, an ISO-8601 time with an offset, or a local time (ISO or day-first) in ``zone``.

    A local time that a DST change skips or repeats is refused, naming both instants it could be.
    """
    value = text.strip()
    if value.casefold() == "now":
        return now
    if _ISO_DATE_ONLY.match(value):
        raise Refused(f"{flag}: {value} has no time of day; add one, e.g. '{value} 15:00'")
    match = _DAY_FIRST.match(value)
    if match:
        if match["H"] is None:
            iso = f"{match['y']}-{int(match['m']):02d}-{int(match['d']):02d}"
            raise Refused(
                f"{flag}: {value} (read day first as {iso}) has no time of day; "
                f"add one, e.g. '{value} 15:00'"
            )
        try:
            parsed = datetime(  # noqa: DTZ001 - a wall time, read in the zone below
                int(match["y"]),
                int(match["m"]),
                int(match["d"]),
                int(match["H"]),
                int(match["M"]),
                int(match["S"] or 0),
            )
        except ValueError as exc:
            raise Refused(
                f"{flag}: {value} is not a date read day first (DD/MM/YYYY HH:MM): {exc}"
            ) from exc
    else:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise Refused(
                f"{flag}: {value!r} is not a date and time; use 'now', 2026-03-27T15:00, "
                "'2026-03-27 15:00', '27/03/2026 15:00' or 2026-03-27T15:00+00:00"
            ) from exc
    if parsed.tzinfo is not None:
        return parsed
    return local_instant(parsed, zone=zone, flag=flag)


def local_instant(wall: datetime, *, zone: str, flag: str = "treated-at") -> datetime:
    """The instant a wall-clock time in ``zone`` names, refused when a DST change makes it
    ambiguous (the clocks go back: it happens twice) or skips it (the clocks go forward)."""
    tz = ZoneInfo(zone)
    first, second = wall.replace(tzinfo=tz, fold=0), wall.replace(tzinfo=tz, fold=1)
    if first.utcoffset() == second.utcoffset():
        return first
    shown = f"{wall:%Y-%m-%d %H:%M}"
    # Each candidate as an absolute time in the zone's own offsets, in time order.
    candidates = sorted({c.astimezone(UTC) for c in (first, second)})
    named = " or ".join(_iso(c.astimezone(tz)) for c in candidates)
    if all(c.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == wall for c in (first, second)):
        raise Refused(f"{flag}: {shown} happens twice in {zone} (the clocks go back); give {named}")
    raise Refused(f"{flag}: {shown} does not exist in {zone} (the clocks go forward); give {named}")
