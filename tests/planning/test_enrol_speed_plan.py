"""The planner builds its reminders without the dataclass constructor (for speed); what it
returns must be the very objects the constructor would build."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aftercare.planning.planner import PlannedReminder, plan
from aftercare.planning.quiet import QuietHours
from aftercare.regimens.loader import RegimenRegistry

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)


@pytest.mark.parametrize("late", [timedelta(0), timedelta(days=5)])
def test_planned_reminders_are_what_the_dataclass_constructor_builds(late: timedelta) -> None:
    regimen = RegimenRegistry.load(REPO / "schedules").get("micro-sclerotherapy")
    planned = plan(
        regimen=regimen,
        treated_at=NOW - late,
        timezone="Europe/London",
        parameters=regimen.resolve_parameters({}),
        channels=("sms", "email"),
        quiet=QuietHours.parse("21:00-08:00"),
        recorded_at=NOW,
    )
    assert {r.state for r in planned} >= {"scheduled"}
    for r in planned:
        built = PlannedReminder(**{f.name: getattr(r, f.name) for f in dataclasses.fields(r)})
        assert type(r) is PlannedReminder
        assert vars(r) == vars(built)
        assert (r, hash(r), repr(r)) == (built, hash(built), repr(built))
        assert dataclasses.replace(r, state="skipped") == dataclasses.replace(
            built, state="skipped"
        )
        with pytest.raises(dataclasses.FrozenInstanceError):
            r.state = "skipped"  # type: ignore[misc]
