"""Properties of the planner over real time zones, DST changes, parameters and channels."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TypeVar
from zoneinfo import ZoneInfo, available_timezones

from hypothesis import example, given, settings
from hypothesis import strategies as st

from aftercare.planning.planner import PlannedReminder, plan, step_instants
from aftercare.planning.quiet import QuietHours
from aftercare.regimens.loader import load_regimen
from aftercare.regimens.model import Channel

REGIMEN = load_regimen(Path(__file__).parents[2] / "schedules" / "micro-sclerotherapy.yaml")
QUIET = QuietHours.parse("21:00-08:00")
ALWAYS_STEPS = {"welcome", "warning-signs"}
ZONES = sorted(
    name
    for name in available_timezones()
    if "/" in name and not name.startswith(("posix/", "right/"))
)


@dataclass(frozen=True)
class Session:
    zone: str
    treated_at: datetime
    daily_days: int
    checkin_week: int
    channels: tuple[Channel, ...]

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.zone)

    @property
    def parameters(self) -> dict[str, int | str]:
        return REGIMEN.resolve_parameters(
            {"daily_days": self.daily_days, "checkin_week": self.checkin_week}
        )

    @property
    def first_channel(self) -> Channel:
        return "sms" if "sms" in self.channels else "email"

    def plan(self, recorded_at: datetime | None = None) -> list[PlannedReminder]:
        return plan(
            regimen=REGIMEN,
            treated_at=self.treated_at,
            timezone=self.zone,
            parameters=self.parameters,
            channels=self.channels,
            quiet=QUIET,
            recorded_at=recorded_at,
        )

    def instants(self) -> dict[str, list[datetime]]:
        return step_instants(
            regimen=REGIMEN,
            treated_at=self.treated_at,
            zone=self.tz,
            parameters=self.parameters,
            quiet=QUIET,
        )


sessions = st.builds(
    Session,
    zone=st.sampled_from(ZONES),
    treated_at=st.datetimes(
        min_value=datetime(2026, 1, 1),
        max_value=datetime(2028, 12, 31, 23, 59, 59),
        timezones=st.just(UTC),
    ),
    daily_days=st.sampled_from([7, 14]),
    checkin_week=st.integers(min_value=8, max_value=13),
    channels=st.sampled_from([("sms",), ("email",), ("sms", "email"), ("email", "sms")]),
)


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# Treatments whose 72 hours, daily phase or quiet-hours deferral straddle a clock change.
DST_SESSIONS = [
    Session("Europe/London", _utc(2026, 3, 28, 23, 30), 14, 10, ("sms", "email")),
    Session("Europe/London", _utc(2026, 10, 24, 22, 0), 7, 8, ("sms", "email")),
    Session("America/New_York", _utc(2026, 3, 7, 15, 0), 14, 13, ("sms",)),
    Session("America/New_York", _utc(2026, 3, 8, 6, 30), 7, 10, ("email",)),
    Session("Australia/Sydney", _utc(2026, 4, 4, 14, 0), 14, 9, ("sms", "email")),
    Session("Pacific/Chatham", _utc(2026, 4, 4, 13, 0), 7, 11, ("sms", "email")),
    Session("Pacific/Chatham", _utc(2026, 9, 26, 12, 0), 14, 12, ("email", "sms")),
    Session("Australia/Lord_Howe", _utc(2026, 4, 4, 14, 45), 14, 10, ("sms",)),
    Session("Australia/Lord_Howe", _utc(2026, 10, 3, 14, 30), 7, 13, ("sms", "email")),
    Session("America/Santiago", _utc(2026, 4, 4, 2, 30), 14, 8, ("sms", "email")),
    Session("America/Santiago", _utc(2026, 9, 5, 3, 30), 7, 10, ("sms",)),
]

F = TypeVar("F", bound=Callable[..., None])


def with_dst_examples(test: F) -> F:
    """Always run ``test`` on the DST edge cases too, not only on what hypothesis draws."""
    for session in DST_SESSIONS:
        test = example(session=session)(test)
    return test


PROPERTY = settings(max_examples=300, deadline=None)


def wall_time_instant(day: date, at: time, zone: ZoneInfo) -> datetime:
    """The instant of ``at`` on ``day``; a wall time skipped by the clocks reads after the gap."""
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


def assert_at_wall_time(due: datetime, day: date, at: time, zone: ZoneInfo) -> None:
    """``due`` is ``at`` on local ``day``, or just after it if ``at`` does not exist that day."""
    wanted = datetime.combine(day, at)
    local = due.astimezone(zone).replace(tzinfo=None)
    exists = wall_time_instant(day, at, zone).astimezone(zone).replace(tzinfo=None) == wanted
    if exists:
        assert local == wanted
    else:
        assert local.date() == day
        assert local > wanted
        assert due == wall_time_instant(day, at, zone)


def reminders_of(reminders: list[PlannedReminder], step: str) -> list[PlannedReminder]:
    return sorted((r for r in reminders if r.step == step), key=lambda r: r.occurrence)


def key(reminder: PlannedReminder) -> tuple[str, int, str]:
    return reminder.step, reminder.occurrence, reminder.channel


@PROPERTY
@given(session=sessions)
@with_dst_examples
def test_continuous_end_when_planned_then_is_exactly_72_elapsed_hours_after_treatment(
    session: Session,
) -> None:
    exact = session.treated_at + timedelta(hours=72)
    assert session.instants()["continuous-end"] == [exact]
    for reminder in reminders_of(session.plan(), "continuous-end"):
        assert reminder.nominal_utc == exact
        assert reminder.critical
        if reminder.channel == "email":
            assert reminder.due_utc == exact
        else:
            assert reminder.due_utc == QUIET.defer(exact, session.tz)


@PROPERTY
@given(session=sessions)
@with_dst_examples
def test_daily_reminders_when_planned_then_on_consecutive_days_at_08_00_and_20_00_local(
    session: Session,
) -> None:
    # With the evening text every day (a clinic's choice; the default is the first and last
    # days only, checked below).
    reminders = plan(
        regimen=REGIMEN,
        treated_at=session.treated_at,
        timezone=session.zone,
        parameters={**session.parameters, "evening_reminders": "all"},
        channels=session.channels,
        quiet=QUIET,
    )
    wear = reminders_of(reminders, "daily-wear")
    off = reminders_of(reminders, "daily-off")
    assert len(wear) == len(off) == session.daily_days
    assert {r.channel for r in wear + off} == {session.first_channel}

    first_day = wear[0].due_utc.astimezone(session.tz).date()
    days = [first_day + timedelta(days=i) for i in range(session.daily_days)]
    for day, on, taken_off in zip(days, wear, off, strict=True):
        assert_at_wall_time(on.due_utc, day, time(8, 0), session.tz)
        assert_at_wall_time(taken_off.due_utc, day, time(20, 0), session.tz)
    # By default the same evenings, but only the first and the last.
    default_off = reminders_of(session.plan(), "daily-off")
    assert default_off == [off[0], off[-1]]


@PROPERTY
@given(session=sessions)
@with_dst_examples
def test_first_daily_wear_when_planned_then_is_the_next_08_00_after_continuous_end_as_heard(
    session: Session,
) -> None:
    reminders = session.plan()
    # The regimen anchors on the time the patient hears it: after quiet hours, even by email.
    heard = QUIET.defer(session.treated_at + timedelta(hours=72), session.tz)
    assert all(r.due_utc <= heard for r in reminders_of(reminders, "continuous-end"))
    first_wear = reminders_of(reminders, "daily-wear")[0].due_utc
    assert first_wear > heard
    day_before = first_wear.astimezone(session.tz).date() - timedelta(days=1)
    assert wall_time_instant(day_before, time(8, 0), session.tz) <= heard


@PROPERTY
@given(session=sessions)
@with_dst_examples
def test_sms_when_planned_then_never_due_inside_quiet_hours(session: Session) -> None:
    for reminder in session.plan():
        if reminder.channel == "sms":
            assert not QUIET.contains(reminder.due_local(session.tz).time()), reminder


@PROPERTY
@given(session=sessions)
@with_dst_examples
def test_checkin_when_planned_then_falls_on_local_day_seven_times_checkin_week(
    session: Session,
) -> None:
    (nominal,) = session.instants()["checkin"]
    treated_day = session.treated_at.astimezone(session.tz).date()
    day = treated_day + timedelta(days=7 * session.checkin_week)
    assert_at_wall_time(nominal, day, time(10, 0), session.tz)
    assert 8 * 7 <= (day - treated_day).days <= 13 * 7


@PROPERTY
@given(session=sessions)
@with_dst_examples
def test_plan_when_repeated_then_is_identical_and_sorted_by_due_time(session: Session) -> None:
    first, second = session.plan(), session.plan()
    assert first == second
    due_times = [r.due_utc for r in first]
    assert due_times == sorted(due_times)
    assert len({key(r) for r in first}) == len(first)


@PROPERTY
@given(session=sessions)
@with_dst_examples
def test_every_instant_when_planned_then_is_timezone_aware_utc(session: Session) -> None:
    for reminder in session.plan():
        for instant in (reminder.due_utc, reminder.nominal_utc, reminder.expires_utc):
            if instant is not None:
                assert instant.tzinfo is UTC


@PROPERTY
@given(session=sessions)
@with_dst_examples
def test_plan_when_recorded_at_treatment_then_nothing_is_skipped(session: Session) -> None:
    reminders = session.plan(recorded_at=session.treated_at)
    assert reminders == session.plan()
    assert all(r.state == "scheduled" for r in reminders)
    assert all(r.due_utc >= session.treated_at for r in reminders)


@PROPERTY
@given(
    session=sessions,
    delay=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=100)),
)
@example(session=DST_SESSIONS[0], delay=timedelta(hours=72))  # recorded as continuous wear ends
@example(session=DST_SESSIONS[0], delay=timedelta(days=3, hours=8, minutes=30))
@example(session=DST_SESSIONS[2], delay=timedelta(days=10, hours=3))
@example(session=DST_SESSIONS[4], delay=timedelta(days=49, hours=23))
@example(session=DST_SESSIONS[6], delay=timedelta(days=100))
def test_plan_when_recorded_late_then_catches_up_at_most_one_per_channel_and_skips_the_rest(
    session: Session, delay: timedelta
) -> None:
    recorded = session.treated_at + delay
    on_time = {key(r): r for r in session.plan()}
    late = session.plan(recorded_at=recorded)
    assert {key(r) for r in late} == set(on_time)

    caught_up: Counter[Channel] = Counter()
    for reminder in late:
        original = on_time[key(reminder)]
        if original.due_utc >= recorded:
            assert reminder == original
            continue
        if reminder.step in ALWAYS_STEPS:
            assert reminder.state == "scheduled"
        if reminder.state == "skipped":
            assert reminder.due_utc == original.due_utc
            continue
        at_once = QUIET.defer(recorded, session.tz) if reminder.channel == "sms" else recorded
        assert reminder.due_utc == at_once
        if reminder.step not in ALWAYS_STEPS:
            caught_up[reminder.channel] += 1

    assert all(count <= 1 for count in caught_up.values()), caught_up
    for reminder in late:
        if reminder.state == "scheduled":
            assert reminder.due_utc >= recorded
            if reminder.channel == "sms":
                assert not QUIET.contains(reminder.due_local(session.tz).time())
    assert [r.due_utc for r in late] == sorted(r.due_utc for r in late)
