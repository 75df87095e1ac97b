"""The compression regimen as an iCalendar (.ics) file, attached to a patient's first email.

Pure: built from a session's planned instants (``step_instants``) and an injected timestamp, so
the same session always yields the same file, and its stable UIDs let a calendar app update
events rather than duplicate them if the email is sent again. Times carry the patient's IANA
zone (TZID, with a VTIMEZONE), so the daily window stays at 08:00 local across a DST change.
No patient name or contact detail goes in: calendars get forwarded and synced to other services.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from icalendar import Calendar, Event, Timezone

from aftercare.messages.context import (
    CHECKIN_STEP,
    CONTINUOUS_END_STEP,
    DAILY_WEAR_STEP,
    GARMENTS,
)

DAILY_OFF_STEP = "daily-off"
PRODID = "-//Aftercare//Aftercare reminders//EN"
# Daytime wear is 12 hours a day (PROTOCOL.md), used when the regimen has no "off" step.
DAILY_WEAR_HOURS = timedelta(hours=12)


def _event(
    *,
    uid: str,
    stamp: datetime,
    summary: str,
    start: date,
    end: date,
    description: str,
) -> Event:
    made = Event.new(
        uid=uid,
        stamp=stamp.astimezone(UTC),
        summary=summary,
        start=start,
        end=end,
        description=description,
    )
    # TRANSPARENT: wearing stockings does not make the patient busy.
    made.add("transp", "TRANSPARENT")
    return made


@lru_cache(maxsize=512)
def _vtimezone(tzid: str, first_date: date, last_date: date) -> Timezone:
    """The VTIMEZONE of ``tzid`` over these dates. Cached: icalendar walks the zone's
    transitions to build it, ~11 ms even for a zone without DST, and every welcome email of a
    day's sessions in one zone needs the same one. Callers get a copy (components are mutable)."""
    return Timezone.from_tzid(tzid, first_date=first_date, last_date=last_date)


def _occurrences(instants: Mapping[str, list[datetime]], step: str) -> list[datetime]:
    found = instants.get(step)
    if not found:
        raise ValueError(f"no planned instants for step {step!r}")
    return found


def regimen_calendar(
    *,
    session_key: str,
    treated_at: datetime,
    timezone: str,
    parameters: Mapping[str, int | str],
    instants: Mapping[str, list[datetime]],
    clinic_name: str,
    clinic_phone: str,
    stamp: datetime,
) -> bytes:
    """The .ics bytes (METHOD:PUBLISH) for one session.

    ``session_key`` only seeds the UIDs (it is hashed, never shown); ``stamp`` is DTSTAMP.
    """
    zone = ZoneInfo(timezone)
    uid = hashlib.sha256(session_key.encode("utf-8")).hexdigest()[:24]
    garment = GARMENTS.get(str(parameters.get("garment")), "compression stockings")
    start = treated_at.astimezone(zone)
    continuous_end = _occurrences(instants, CONTINUOUS_END_STEP)[0].astimezone(zone)
    daily = [t.astimezone(zone) for t in _occurrences(instants, DAILY_WEAR_STEP)]
    off = instants.get(DAILY_OFF_STEP)
    daily_end = off[0].astimezone(zone) if off else daily[0] + DAILY_WEAR_HOURS
    checkin = _occurrences(instants, CHECKIN_STEP)[0].astimezone(zone).date()
    questions = f"Questions about your aftercare? Call {clinic_name} on {clinic_phone}."

    continuous = _event(
        uid=f"{uid}-continuous@aftercare",
        stamp=stamp,
        summary="Compression stockings: day and night",
        start=start,
        end=continuous_end,
        description=(
            f"Keep your {garment} on all the time, in bed too, for 72 hours after treatment. "
            f"{questions}"
        ),
    )
    daytime = _event(
        uid=f"{uid}-daily@aftercare",
        stamp=stamp,
        summary="Compression stockings: wear during the day",
        start=daily[0],
        end=daily_end,
        description=(
            f"Put your {garment} on in the morning and wear them through the day, about "
            f"12 hours. You can take them off in the evening and at night. {questions}"
        ),
    )
    daytime.add("rrule", {"FREQ": "DAILY", "COUNT": len(daily)})
    check = _event(
        uid=f"{uid}-checkin@aftercare",
        stamp=stamp,
        summary=f"Aftercare check-in from {clinic_name}",
        start=checkin,
        end=checkin + timedelta(days=1),
        description=(
            f"{clinic_name} will send you a message asking how the bruising and marks on your "
            f"legs are fading, and whether you would like another session. {questions}"
        ),
    )
    calendar = Calendar.new(
        uid=f"{uid}@aftercare",
        prodid=PRODID,
        method="PUBLISH",
        name="Aftercare: compression stockings",
        subcomponents=[continuous, daytime, check],
    )
    # Only the transitions the events span, not the zone's whole history. Inserted before the
    # events, as Calendar.add_missing_timezones does (which would rebuild it every time).
    first_date, last_date = start.date() - timedelta(days=1), checkin + timedelta(days=2)
    for position, tzid in enumerate(sorted(calendar.get_missing_tzids())):
        try:
            vtimezone = _vtimezone(tzid, first_date, last_date)
        except ValueError:
            continue  # a zone icalendar does not know: left out, as add_missing_timezones does
        calendar.subcomponents.insert(position, copy.deepcopy(vtimezone))
    return bytes(calendar.to_ical())
