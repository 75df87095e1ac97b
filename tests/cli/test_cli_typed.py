"""The ``aftercare`` command takes what people type: ``now``, a local time in ``--timezone``, a
day-first date, channels in capitals, a zone with a typo (answered with "did you mean"); it
refuses a DST-ambiguous or skipped local time naming both candidates; ``enrol`` needs the
staff's two confirmations; ``--version`` and help that reads in 80 columns."""

# The ``aftercare`` fixture is imported from test_cli and taken by name as an argument.
# ruff: noqa: F811

from __future__ import annotations

import json
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from tests.cli.test_cli import (  # noqa: F401 - the fixture is used by name
    ENROL_FLAGS,
    NOW,
    Aftercare,
    aftercare,
    enrol_args,
    one_error_line,
    preview_json,
    stored,
    succeeded,
)


def welcome_due(aftercare: Aftercare, *args: str) -> datetime:
    rows = preview_json(aftercare, *args)
    return min(datetime.fromisoformat(row["due_utc"]) for row in rows if row["step"] == "welcome")


@pytest.mark.parametrize(
    ("typed", "zone", "utc"),
    [
        ("2026-03-27 15:00", "Europe/London", "2026-03-27T15:00:00+00:00"),
        ("2026-03-27T15:00", "Europe/London", "2026-03-27T15:00:00+00:00"),
        ("2026-04-27 15:00", "Europe/London", "2026-04-27T14:00:00+00:00"),
        ("2026-03-27T15:00", "America/New_York", "2026-03-27T19:00:00+00:00"),
        ("27/03/2026 15:00", "Europe/London", "2026-03-27T15:00:00+00:00"),
        ("27.03.2026 15:00", "Europe/London", "2026-03-27T15:00:00+00:00"),
        ("2026-03-27T15:00+02:00", "Europe/London", "2026-03-27T13:00:00+00:00"),
    ],
)
def test_preview_when_treated_at_is_a_local_time_then_it_is_read_in_the_zone_and_shown_in_iso(
    aftercare: Aftercare, typed: str, zone: str, utc: str
) -> None:
    result = succeeded(
        aftercare("preview", "--json", "--treated-at", typed, "--timezone", zone, "--now", utc)
    )

    rows = [r for r in json.loads(result.stdout) if r["step"] == "welcome"]
    assert {datetime.fromisoformat(r["due_utc"]) for r in rows} == {datetime.fromisoformat(utc)}
    if "+" not in typed:
        local = datetime.fromisoformat(utc).astimezone(ZoneInfo(zone))
        assert f"read as {local.isoformat()} ({zone})" in result.stderr


def test_preview_when_treated_at_is_now_then_the_clock_is_used(aftercare: Aftercare) -> None:
    for typed in ("now", "NOW"):
        assert welcome_due(aftercare, "--treated-at", typed) == NOW


def test_preview_when_channels_are_in_capitals_then_they_are_accepted(
    aftercare: Aftercare,
) -> None:
    rows = preview_json(aftercare, "--channels", "SMS")
    assert {row["channel"] for row in rows} == {"sms"}
    rows = preview_json(aftercare, "--channels", "Email, SMS")
    assert {row["channel"] for row in rows} == {"sms", "email"}


# Europe/London: clocks go forward at 01:00 on 29 March 2026 and back at 02:00 on 25 October.
REFUSED = [
    pytest.param(
        ["--treated-at", "2026-10-25 01:30", "--timezone", "Europe/London"],
        "error: treated-at: 2026-10-25 01:30 happens twice in Europe/London (the clocks go "
        "back); give 2026-10-25T01:30+01:00 or 2026-10-25T01:30+00:00",
        id="ambiguous",
    ),
    pytest.param(
        ["--treated-at", "2026-03-29 01:30", "--timezone", "Europe/London"],
        "error: treated-at: 2026-03-29 01:30 does not exist in Europe/London (the clocks go "
        "forward); give 2026-03-29T00:30+00:00 or 2026-03-29T02:30+01:00",
        id="nonexistent",
    ),
    pytest.param(
        ["--treated-at", "27/03/2026"],
        "error: treated-at: 27/03/2026 (read day first as 2026-03-27) has no time of day; "
        "add one, e.g. '27/03/2026 15:00'",
        id="day-first-date-only",
    ),
    pytest.param(
        ["--treated-at", "2026-03-27"],
        "error: treated-at: 2026-03-27 has no time of day; add one, e.g. '2026-03-27 15:00'",
        id="iso-date-only",
    ),
    pytest.param(
        ["--treated-at", "03/27/2026 15:00"],
        "error: treated-at: 03/27/2026 15:00 is not a date read day first (DD/MM/YYYY HH:MM): "
        "month must be in 1..12",
        id="month-first",
    ),
    pytest.param(
        ["--treated-at", "yesterday"],
        "error: treated-at: 'yesterday' is not a date and time; use 'now', 2026-03-27T15:00, "
        "'2026-03-27 15:00', '27/03/2026 15:00' or 2026-03-27T15:00+00:00",
        id="words",
    ),
    pytest.param(
        ["--timezone", "Europe/Londn"],
        "error: timezone: 'Europe/Londn' is not an IANA time zone; "
        "did you mean Europe/London or Europe/Lisbon?",
        id="zone-typo",
    ),
    pytest.param(
        ["--timezone", "London"],
        "error: timezone: 'London' is not an IANA time zone; did you mean Europe/London?",
        id="zone-city",
    ),
    pytest.param(
        ["--timezone", "new york"],
        "error: timezone: 'new york' is not an IANA time zone; did you mean America/New_York?",
        id="zone-city-lowercase",
    ),
    pytest.param(
        ["--channels", "SMS,fax"],
        "error: channels: must be 'sms' or 'email'",
        id="channel-unknown",
    ),
    pytest.param(
        ["--now", "2026-10-25 01:15", "--timezone", "Europe/London"],
        "error: now: 2026-10-25 01:15 happens twice in Europe/London (the clocks go back); "
        "give 2026-10-25T01:15+01:00 or 2026-10-25T01:15+00:00",
        id="now-flag-ambiguous",
    ),
]


@pytest.mark.parametrize(("args", "line"), REFUSED)
def test_preview_when_input_cannot_be_read_then_exits_2_with_its_one_line(
    aftercare: Aftercare, args: list[str], line: str
) -> None:
    assert one_error_line(aftercare("preview", *args)) == line
    assert not aftercare.db_path.exists()


@pytest.mark.parametrize(("args", "line"), REFUSED)
def test_enrol_when_input_cannot_be_read_then_exits_2_with_its_one_line_and_stores_nothing(
    aftercare: Aftercare, args: list[str], line: str
) -> None:
    if "--now" in args:
        pytest.skip("enrol has no --now")
    succeeded(aftercare("migrate"))
    changes: dict[str, str | None] = dict(zip(args[::2], args[1::2], strict=True))

    assert one_error_line(aftercare(*enrol_args(changes))) == line
    assert stored(aftercare.database_url) == ([], [])


@pytest.mark.parametrize(
    ("confirm", "line"),
    [
        (
            ("--contraindications-checked",),
            "error: consent: confirm the patient agrees to aftercare messages with --consent",
        ),
        (
            ("--consent",),
            "error: contraindications-checked: confirm the contraindication checklist with "
            "--contraindications-checked",
        ),
        ((), "error: consent: confirm the patient agrees to aftercare messages with --consent"),
    ],
    ids=["no-consent", "no-checklist", "neither"],
)
def test_enrol_without_the_staff_confirmations_then_exits_2_and_stores_nothing(
    aftercare: Aftercare, confirm: tuple[str, ...], line: str
) -> None:
    succeeded(aftercare("migrate"))

    assert one_error_line(aftercare(*enrol_args(confirm=confirm))) == line
    assert stored(aftercare.database_url) == ([], [])


def test_enrol_when_given_a_local_time_and_capitals_then_stores_the_session(
    aftercare: Aftercare,
) -> None:
    succeeded(aftercare("migrate"))

    succeeded(
        aftercare(*enrol_args({"--treated-at": "02/03/2026 10:00", "--channels": "SMS,EMAIL"}))
    )

    sessions, reminders = stored(aftercare.database_url)
    assert [s.treated_at.isoformat()[:16] for s in sessions] == ["2026-03-02T10:00"]
    assert {r.channel for r in reminders} == {"sms", "email"}
    assert ENROL_FLAGS["--timezone"] == "Europe/London"


def test_version_when_asked_then_prints_the_installed_version(aftercare: Aftercare) -> None:
    from importlib.metadata import version

    result = succeeded(aftercare("--version"))
    assert result.stdout == f"aftercare {version('aftercare')}\n"


COMMANDS = [
    [],
    ["preview"],
    ["enrol"],
    ["check"],
    ["migrate"],
    ["worker"],
    ["dispatch"],
    ["beat"],
    ["run"],
    ["demo"],
    ["status"],
    ["import"],
    ["staff"],
    ["staff", "add"],
    ["staff", "token"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "aftercare")
def test_help_when_read_in_80_columns_then_no_line_is_cut_or_placeholder_shown(
    aftercare: Aftercare, command: list[str]
) -> None:
    result = succeeded(aftercare(*command, "--help", COLUMNS="80"))

    for line in result.stdout.splitlines():
        assert len(line) <= 80, line
        if not line.startswith("Usage:"):
            assert not line.rstrip().endswith("..."), line  # a summary cut mid-sentence
        assert "<bool>" not in line
        # Options show a named value (ZONE, TIME), not a Python type.
        if line.lstrip().startswith("--"):
            assert "<str>" not in line, line
            assert "<int>" not in line, line
