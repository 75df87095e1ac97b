"""The compression-regimen calendar: pure, parsed back with icalendar, in the patient's zone."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from dateutil.rrule import rrulestr
from icalendar import Calendar, Event

from aftercare.messages.calendar import regimen_calendar
from aftercare.planning.planner import step_instants
from aftercare.planning.quiet import QuietHours
from aftercare.regimens.loader import RegimenError, load_regimen, parse_regimen

ROOT = Path(__file__).resolve().parents[2]
REGIMEN = load_regimen(ROOT / "schedules" / "micro-sclerotherapy.yaml")
QUIET = QuietHours.parse("21:00-08:00")
STAMP = datetime(2026, 3, 6, 20, 5, tzinfo=UTC)


def build(
    treated_at: datetime, timezone: str, *, session_key: str = "k3Jx9QvT:42", **parameters: object
) -> bytes:
    resolved = REGIMEN.resolve_parameters(parameters)
    instants = step_instants(
        regimen=REGIMEN,
        treated_at=treated_at,
        zone=ZoneInfo(timezone),
        parameters=resolved,
        quiet=QUIET,
    )
    return regimen_calendar(
        regimen=REGIMEN,
        session_key=session_key,
        treated_at=treated_at,
        timezone=timezone,
        parameters=resolved,
        instants=instants,
        clinic_name="Riverside Vein Clinic",
        clinic_phone="020 7946 0000",
        stamp=STAMP,
    )


def events(data: bytes) -> dict[str, Event]:
    calendar = Calendar.from_ical(data)
    found = {str(e["SUMMARY"]): e for e in calendar.walk("VEVENT")}
    assert len(found) == 3
    return found


def continuous(found: dict[str, Event]) -> Event:
    return found["Compression stockings: day and night"]


def daily(found: dict[str, Event]) -> Event:
    return found["Compression stockings: wear during the day"]


def checkin(found: dict[str, Event]) -> Event:
    return next(e for s, e in found.items() if s.startswith("Aftercare check-in"))


def occurrences(event: Event) -> list[datetime]:
    rule = event["RRULE"].to_ical().decode()
    return list(rrulestr(rule, dtstart=event.start))


# New York goes forward on 8 March 2026: treated on Friday 6 March, the 72 hours span the
# change; treated on Monday 2 March, the daily phase (from Friday 6 March) spans it.
NY_TREATED = datetime(2026, 3, 6, 20, 0, tzinfo=UTC)
NY_TREATED_EARLIER = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
# The UK goes forward on 29 March 2026.
LONDON_TREATED = datetime(2026, 3, 26, 14, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("treated_at", "timezone"),
    [(LONDON_TREATED, "Europe/London"), (NY_TREATED, "America/New_York")],
    ids=["london", "new-york"],
)
def test_continuous_wear_when_clocks_change_then_ends_exactly_72_hours_after_treatment(
    treated_at: datetime, timezone: str
) -> None:
    event = continuous(events(build(treated_at, timezone)))
    assert event.start == treated_at
    # Exact elapsed time, so the local clock reading moves by the DST hour (compare in UTC:
    # Python subtracts two times in one zone by wall clock).
    assert event.end.astimezone(UTC) == treated_at + timedelta(hours=72)
    assert event.end.time() != event.start.time()
    # Written in the patient's zone, not in UTC.
    assert event["DTEND"].params["TZID"] == timezone
    assert event.end.tzinfo == ZoneInfo(timezone)


def test_daily_window_in_new_york_when_dst_starts_then_stays_8am_to_8pm_local() -> None:
    event = daily(events(build(NY_TREATED_EARLIER, "America/New_York", daily_days=14)))
    zone = ZoneInfo("America/New_York")
    assert event["DTSTART"].params["TZID"] == "America/New_York"
    assert event.start.tzinfo == zone
    assert (event.start.time(), event.end.time()) == (time(8), time(20))
    assert event["RRULE"]["FREQ"] == ["DAILY"]
    assert event["RRULE"]["COUNT"] == [14]
    days = occurrences(event)
    assert len(days) == 14
    # The first daily-wear morning is the first 08:00 after the 72 hours end (10:00 on 5 March).
    assert days[0].date() == date(2026, 3, 6)
    assert {d.astimezone(zone).time() for d in days} == {time(8)}
    # 08:00 EST is 13:00 UTC, 08:00 EDT is 12:00 UTC: the local time held across the change.
    assert [d.astimezone(UTC).hour for d in days] == [13, 13] + [12] * 12


def test_daily_window_when_patient_in_london_across_dst_then_8am_local_before_and_after() -> None:
    # Treated Monday 23 March: the daily phase starts Friday 27 March; the UK goes forward on
    # Sunday 29 March.
    treated = datetime(2026, 3, 23, 9, 0, tzinfo=UTC)
    event = daily(events(build(treated, "Europe/London", daily_days=7)))
    days = occurrences(event)
    zone = ZoneInfo("Europe/London")
    assert [d.date() for d in days] == [date(2026, 3, 27) + timedelta(days=i) for i in range(7)]
    assert {d.astimezone(zone).time() for d in days} == {time(8)}
    # 08:00 GMT is 08:00 UTC; 08:00 BST is 07:00 UTC: the local time held across the change.
    assert [d.astimezone(UTC).hour for d in days] == [8, 8, 7, 7, 7, 7, 7]


def test_daily_window_when_seven_days_chosen_then_counts_seven() -> None:
    event = daily(events(build(LONDON_TREATED, "Europe/London", daily_days=7)))
    assert event["RRULE"]["COUNT"] == [7]


def test_checkin_when_week_chosen_then_all_day_event_on_that_local_date() -> None:
    event = checkin(events(build(NY_TREATED, "America/New_York", checkin_week=9)))
    expected = NY_TREATED.astimezone(ZoneInfo("America/New_York")).date() + timedelta(weeks=9)
    assert event.start == expected
    assert event.end == expected + timedelta(days=1)


def test_calendar_when_built_then_publishes_with_zone_definition_and_no_busy_time() -> None:
    data = build(NY_TREATED, "America/New_York")
    calendar = Calendar.from_ical(data)
    assert str(calendar["METHOD"]) == "PUBLISH"
    assert str(calendar["PRODID"]).startswith("-//Aftercare//")
    assert [tz.tz_name for tz in calendar.timezones] == ["America/New_York"]
    assert not calendar.get_missing_tzids()
    for event in calendar.walk("VEVENT"):
        assert str(event["TRANSP"]) == "TRANSPARENT"
        assert event["DTSTAMP"].dt == STAMP


def test_calendar_when_built_twice_then_identical_with_stable_uids() -> None:
    first = build(LONDON_TREATED, "Europe/London")
    assert build(LONDON_TREATED, "Europe/London") == first
    uids = {str(e["UID"]) for e in Calendar.from_ical(first).walk("VEVENT")}
    assert len(uids) == 3
    other = build(LONDON_TREATED, "Europe/London", session_key="k3Jx9QvT:43")
    assert uids.isdisjoint(str(e["UID"]) for e in Calendar.from_ical(other).walk("VEVENT"))


def test_calendar_never_shows_the_session_key() -> None:
    data = build(LONDON_TREATED, "Europe/London", session_key="SecretPublicId:42")
    assert b"SecretPublicId" not in data


def test_shipped_regimen_then_only_the_welcome_step_attaches_the_calendar() -> None:
    assert [step.id for step in REGIMEN.steps if step.attach_calendar] == ["welcome"]


def test_regimen_when_attach_calendar_is_not_a_boolean_then_refused_naming_the_key() -> None:
    text = (ROOT / "schedules" / "micro-sclerotherapy.yaml").read_text(encoding="utf-8")
    assert text.count("    attach_calendar: true") == 1
    broken = text.replace("    attach_calendar: true", '    attach_calendar: "yes"')
    with pytest.raises(RegimenError) as caught:
        parse_regimen(broken, file="bad.yaml")
    assert caught.value.key == "steps[0].attach_calendar"
    assert caught.value.reason == "must be true or false"
    assert caught.value.line == broken.splitlines().index('    attach_calendar: "yes"') + 1


@pytest.mark.parametrize("zone", ["Asia/Kolkata", "Europe/London", "America/New_York"])
def test_calendar_when_built_again_from_the_cached_zone_then_byte_identical(zone: str) -> None:
    from aftercare.messages import calendar

    treated = datetime(2026, 3, 6, 14, 0, tzinfo=UTC)
    calendar._vtimezone.cache_clear()
    fresh = build(treated, zone)
    cached = build(treated, zone)
    assert calendar._vtimezone.cache_info().hits >= 1
    assert cached == fresh
    # The reference: icalendar's own add_missing_timezones over the same dates (the day before
    # treatment to two days after the check-in), rebuilt without any cache.
    reference = Calendar.from_ical(fresh)
    reference.subcomponents = [c for c in reference.subcomponents if c.name != "VTIMEZONE"]
    checkin = next(e for e in reference.walk("VEVENT") if "check-in" in str(e["SUMMARY"]))
    reference.add_missing_timezones(
        first_date=treated.astimezone(ZoneInfo(zone)).date() - timedelta(days=1),
        last_date=checkin.decoded("DTSTART") + timedelta(days=2),
    )
    assert cached == reference.to_ical()


def test_calendar_when_zone_cached_then_a_later_session_still_gets_its_own_transitions() -> None:
    early = build(datetime(2026, 3, 1, 14, 0, tzinfo=UTC), "America/New_York")
    # Treated after the March change, ending after November's: the cached early range must not
    # be reused for it.
    late = build(datetime(2026, 10, 25, 14, 0, tzinfo=UTC), "America/New_York")
    early_starts = {
        str(c.decoded("DTSTART").date())
        for c in Calendar.from_ical(early).walk()
        if c.name in ("STANDARD", "DAYLIGHT")
    }
    late_starts = {
        str(c.decoded("DTSTART").date())
        for c in Calendar.from_ical(late).walk()
        if c.name in ("STANDARD", "DAYLIGHT")
    }
    assert early_starts != late_starts
