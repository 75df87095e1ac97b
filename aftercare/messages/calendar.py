"""A regimen's calendar (.ics), attached to a patient's first email: the events its file declares
(for micro-sclerotherapy, the compression regimen and the check-in).

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
    SAMPLE_CLINIC_NAME,
    SAMPLE_CLINIC_PHONE,
    SAMPLE_TREATED_AT,
    regimen_words,
)
from aftercare.messages.render import render_inline
from aftercare.planning.planner import occurrences_of, step_instants
from aftercare.planning.quiet import QuietHours
from aftercare.regimens.model import CalendarEvent, Regimen

PRODID = "-//Aftercare//Aftercare reminders//EN"


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


class NoCalendar(ValueError):
    """The regimen declares no calendar."""


def regimen_calendar(
    *,
    regimen: Regimen,
    session_key: str,
    treated_at: datetime,
    timezone: str,
    parameters: Mapping[str, int | str],
    instants: Mapping[str, list[datetime]],
    clinic_name: str,
    clinic_phone: str,
    stamp: datetime,
) -> bytes:
    """The .ics bytes (METHOD:PUBLISH) for one session: the events the regimen's ``calendar``
    declares, each followed by the clinic's name and number for questions.

    ``session_key`` only seeds the UIDs (it is hashed, never shown); ``stamp`` is DTSTAMP.
    """
    if regimen.calendar is None:
        raise NoCalendar(f"regimen {regimen.id} declares no calendar")
    zone = ZoneInfo(timezone)
    uid = hashlib.sha256(session_key.encode("utf-8")).hexdigest()[:24]
    words = {
        **regimen_words(regimen=regimen, parameters=parameters, instants=instants, zone=zone),
        "clinic_name": clinic_name,
        "clinic_phone": clinic_phone,
    }
    questions = f"Questions about your aftercare? Call {clinic_name} on {clinic_phone}."
    start = treated_at.astimezone(zone)
    events: list[Event] = []
    last = start.date()
    for spec in regimen.calendar.events:
        where = f"{regimen.source}: calendar.events.{spec.id}"
        made = _event(
            uid=f"{uid}-{spec.id}@aftercare",
            stamp=stamp,
            summary=render_inline(spec.summary, words, where=f"{where}.summary"),
            start=_start(spec, start, instants, zone),
            end=_end(spec, start, instants, zone),
            description=(
                render_inline(spec.description, words, where=f"{where}.description")
                + f" {questions}"
            ),
        )
        if spec.repeat:
            assert spec.start_step is not None
            step = regimen.step(spec.start_step)
            count = len(occurrences_of(instants, spec.start_step))
            every = step.repeat.every_days if step.repeat else 1
            rule: dict[str, object] = {"FREQ": "DAILY", "COUNT": count}
            if every > 1:
                rule["INTERVAL"] = every
            made.add("rrule", rule)
            last = max(last, _as_date(made.start) + timedelta(days=every * (count - 1)))
        last = max(last, _as_date(made.start if spec.all_day else made.end))
        events.append(made)
    calendar = Calendar.new(
        uid=f"{uid}@aftercare",
        prodid=PRODID,
        method="PUBLISH",
        name=render_inline(regimen.calendar.name, words, where=f"{regimen.source}: calendar.name"),
        subcomponents=events,
    )
    # Only the transitions the events span, not the zone's whole history. Inserted before the
    # events, as Calendar.add_missing_timezones does (which would rebuild it every time).
    first_date, last_date = start.date() - timedelta(days=1), last + timedelta(days=2)
    for position, tzid in enumerate(sorted(calendar.get_missing_tzids())):
        try:
            vtimezone = _vtimezone(tzid, first_date, last_date)
        except ValueError:
            continue  # a zone icalendar does not know: left out, as add_missing_timezones does
        calendar.subcomponents.insert(position, copy.deepcopy(vtimezone))
    return bytes(calendar.to_ical())


def _as_date(value: date | datetime) -> date:
    return value.date() if isinstance(value, datetime) else value


def _start(
    spec: CalendarEvent, treated: datetime, instants: Mapping[str, list[datetime]], zone: ZoneInfo
) -> date | datetime:
    if spec.start_step is None:
        moment = treated
    else:
        moment = occurrences_of(instants, spec.start_step)[0].astimezone(zone)
    return moment.date() if spec.all_day else moment


def _end(
    spec: CalendarEvent, treated: datetime, instants: Mapping[str, list[datetime]], zone: ZoneInfo
) -> date | datetime:
    begins = _start(spec, treated, instants, zone)
    if spec.all_day:
        return _as_date(begins) + timedelta(days=1)
    if spec.end_step is not None:
        return occurrences_of(instants, spec.end_step)[0].astimezone(zone)
    assert spec.end_after is not None
    assert isinstance(begins, datetime)
    return (begins.astimezone(UTC) + spec.end_after).astimezone(zone)


def sample_calendar(regimen: Regimen) -> bytes:
    """The calendar of a sample session of ``regimen`` with its default parameters (for
    ``aftercare check``: a fault in an event's text is a TemplateError naming its key)."""
    parameters = regimen.resolve_parameters(None)
    instants = step_instants(
        regimen=regimen,
        treated_at=SAMPLE_TREATED_AT,
        zone=ZoneInfo("Europe/London"),
        parameters=parameters,
        quiet=QuietHours.parse("21:00-08:00"),
    )
    return regimen_calendar(
        regimen=regimen,
        session_key="sample",
        treated_at=SAMPLE_TREATED_AT,
        timezone="Europe/London",
        parameters=parameters,
        instants=instants,
        clinic_name=SAMPLE_CLINIC_NAME,
        clinic_phone=SAMPLE_CLINIC_PHONE,
        stamp=SAMPLE_TREATED_AT,
    )
