"""Quiet hours: parsing, the local window, and deferring an SMS to the next allowed minute."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest

from aftercare.planning.quiet import QuietHours, local_instant

LONDON = ZoneInfo("Europe/London")
DEFAULT = QuietHours(time(21, 0), time(8, 0))


def london(*args: int) -> datetime:
    """A London wall time, as the UTC instant the planner works with."""
    return datetime(*args, tzinfo=LONDON).astimezone(UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("21:00-08:00", DEFAULT),
        (" 22:30 - 7:15 ", QuietHours(time(22, 30), time(7, 15))),
        ("13:00-14:00", QuietHours(time(13, 0), time(14, 0))),
    ],
)
def test_parse_when_window_is_well_formed_then_returns_start_and_end(
    text: str, expected: QuietHours
) -> None:
    assert QuietHours.parse(text) == expected


@pytest.mark.parametrize("text", ["25:00-08:00", "21:60-08:00", "abc", "21:00", "", "21:00-"])
def test_parse_when_window_is_malformed_then_raises_naming_the_input(text: str) -> None:
    with pytest.raises(ValueError, match="quiet hours"):
        QuietHours.parse(text)


@pytest.mark.parametrize(
    ("local", "quiet"),
    [
        (time(21, 0), True),
        (time(23, 59), True),
        (time(0, 0), True),
        (time(7, 59), True),
        (time(8, 0), False),
        (time(12, 0), False),
        (time(20, 59), False),
    ],
)
def test_contains_when_window_wraps_midnight_then_covers_night_only(
    local: time, quiet: bool
) -> None:
    assert DEFAULT.contains(local) is quiet


@pytest.mark.parametrize(
    ("local", "quiet"),
    [
        (time(12, 59), False),
        (time(13, 0), True),
        (time(13, 59), True),
        (time(14, 0), False),
        (time(23, 0), False),
    ],
)
def test_contains_when_window_does_not_wrap_then_is_start_inclusive_end_exclusive(
    local: time, quiet: bool
) -> None:
    assert QuietHours(time(13, 0), time(14, 0)).contains(local) is quiet


def test_contains_when_start_equals_end_then_nothing_is_quiet() -> None:
    empty = QuietHours(time(8, 0), time(8, 0))
    assert not any(empty.contains(time(hour, 30)) for hour in range(24))


def test_defer_when_late_evening_then_moves_to_next_morning() -> None:
    assert DEFAULT.defer(london(2026, 6, 10, 23, 0), LONDON) == london(2026, 6, 11, 8, 0)


def test_defer_when_small_hours_then_moves_to_same_morning() -> None:
    assert DEFAULT.defer(london(2026, 6, 10, 3, 0), LONDON) == london(2026, 6, 10, 8, 0)


def test_defer_when_outside_quiet_hours_then_leaves_instant_alone() -> None:
    noon = london(2026, 6, 10, 12, 0)
    assert DEFAULT.defer(noon, LONDON) == noon


@pytest.mark.parametrize(
    ("night", "morning"),
    [
        # Clocks go forward at 01:00 GMT on 29 March 2026 and back at 01:00 GMT on 25 October.
        (datetime(2026, 3, 28, 22, 0, tzinfo=UTC), datetime(2026, 3, 29, 7, 0, tzinfo=UTC)),
        (datetime(2026, 10, 24, 22, 0, tzinfo=UTC), datetime(2026, 10, 25, 8, 0, tzinfo=UTC)),
    ],
)
def test_defer_when_night_spans_a_dst_change_then_lands_at_08_00_local(
    night: datetime, morning: datetime
) -> None:
    deferred = DEFAULT.defer(night, LONDON)
    assert deferred == morning
    assert deferred.astimezone(LONDON).time() == time(8, 0)


def test_defer_when_window_ends_inside_a_dst_gap_then_moves_forward_never_back() -> None:
    # 01:30 does not exist in London on 29 March 2026 (01:00 GMT jumps to 02:00 BST).
    quiet = QuietHours(time(0, 0), time(1, 30))
    instant = datetime(2026, 3, 29, 0, 45, tzinfo=UTC)
    deferred = quiet.defer(instant, LONDON)
    assert deferred >= instant
    assert not quiet.contains(deferred.astimezone(LONDON).time())
    assert deferred.astimezone(LONDON).time() == time(2, 30)


def test_local_instant_when_wall_time_is_in_a_gap_then_shifts_it_forward_by_the_gap() -> None:
    lord_howe = ZoneInfo("Australia/Lord_Howe")  # 02:00 jumps to 02:30 on 4 October 2026
    instant = local_instant(datetime(2026, 10, 4), time(2, 15), lord_howe)
    assert instant.astimezone(lord_howe).replace(tzinfo=None) == datetime(2026, 10, 4, 2, 45)


def test_local_instant_when_wall_time_is_ambiguous_then_takes_first_occurrence() -> None:
    instant = local_instant(datetime(2026, 10, 25), time(1, 30), LONDON)
    assert instant == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)


def test_local_instant_when_only_fold_differs_then_each_occurrence_of_the_wall_time_is_kept() -> (
    None
):
    # 01:30 happens twice in London on 25 October 2026 (BST, then GMT). Conversions are cached
    # per wall time: times equal but for their fold must still give their own instants.
    day = datetime(2026, 10, 25)
    first = local_instant(day, time(1, 30), LONDON)
    second = local_instant(day, time(1, 30, fold=1), LONDON)
    assert first == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert second == datetime(2026, 10, 25, 1, 30, tzinfo=UTC)
    assert local_instant(day, time(1, 30), LONDON) == first


def test_defer_when_given_the_same_instant_in_utc_and_in_local_time_then_both_agree() -> None:
    night = london(2026, 6, 10, 23, 0)
    noon = london(2026, 6, 10, 12, 0)
    for instant in (night, noon, night.astimezone(LONDON), noon.astimezone(LONDON)):
        DEFAULT.defer(instant, LONDON)
    assert DEFAULT.defer(night.astimezone(LONDON), LONDON) == london(2026, 6, 11, 8, 0)
    assert DEFAULT.defer(night, LONDON) == london(2026, 6, 11, 8, 0)
    # Outside quiet hours the instant comes back as given, its own time zone included.
    assert DEFAULT.defer(noon.astimezone(LONDON), LONDON).tzinfo is LONDON
    assert DEFAULT.defer(noon, LONDON).tzinfo is UTC
