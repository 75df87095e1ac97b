"""The regimen loader: the shipped regimen encodes PROTOCOL.md; bad files say where and why."""

from __future__ import annotations

from datetime import time, timedelta
from pathlib import Path

import pytest

from aftercare.regimens.loader import RegimenError, RegimenRegistry, load_regimen, parse_regimen
from aftercare.regimens.model import (
    DayTime,
    Elapsed,
    IntRef,
    NextTime,
    ParameterError,
    Regimen,
    SameDay,
)

SCHEDULES = Path(__file__).parents[2] / "schedules"


@pytest.fixture(scope="module")
def regimen() -> Regimen:
    return load_regimen(SCHEDULES / "micro-sclerotherapy.yaml")


# --- the shipped regimen ---------------------------------------------------------------------


def test_shipped_regimens_when_loaded_as_a_folder_then_ids_match_file_names() -> None:
    registry = RegimenRegistry.load(SCHEDULES)
    assert "micro-sclerotherapy" in registry.ids()
    assert registry.get("micro-sclerotherapy").version >= 1


def test_shipped_regimen_when_loaded_then_has_every_protocol_step_in_order(
    regimen: Regimen,
) -> None:
    assert [step.id for step in regimen.steps] == [
        "welcome",
        "warning-signs",
        "keep-moving",
        "continuous-end",
        "daily-wear",
        "daily-off",
        "completion",
        "sun",
        "checkin",
    ]


def test_shipped_regimen_when_recorded_late_then_welcome_and_warning_signs_still_go_out(
    regimen: Regimen,
) -> None:
    for step_id in ("welcome", "warning-signs"):
        step = regimen.step(step_id)
        assert step.catch_up == "always"
        assert isinstance(step.when, Elapsed)
        assert step.when.after <= timedelta(hours=2)
        assert set(step.channels) == {"sms", "email"}


def test_shipped_regimen_when_loaded_then_continuous_wear_ends_at_exactly_72_hours_and_is_critical(
    regimen: Regimen,
) -> None:
    step = regimen.step("continuous-end")
    assert step.when == Elapsed(timedelta(hours=72))
    assert step.critical
    assert step.valid_for is None


def test_shipped_regimen_when_loaded_then_daily_wear_repeats_for_the_chosen_days(
    regimen: Regimen,
) -> None:
    wear = regimen.step("daily-wear")
    assert wear.when == NextTime("continuous-end", time(8, 0))
    assert wear.repeat is not None
    assert wear.repeat.count == IntRef(param="daily_days")
    assert wear.repeat.every_days == 1
    off = regimen.step("daily-off")
    assert off.when == SameDay("daily-wear", time(20, 0))
    assert regimen.step("completion").when == NextTime("daily-off", time(10, 0))


def test_shipped_regimen_when_loaded_then_reminds_to_keep_moving_and_avoid_sun(
    regimen: Regimen,
) -> None:
    assert isinstance(regimen.step("keep-moving").when, DayTime)
    sun = regimen.step("sun")
    assert sun.repeat is not None
    assert sun.repeat.count.resolve({}) > 1


def test_shipped_regimen_when_loaded_then_checkin_is_in_the_chosen_week(
    regimen: Regimen,
) -> None:
    when = regimen.step("checkin").when
    assert isinstance(when, DayTime)
    assert when.day == IntRef(param="checkin_week", times=7)


def test_shipped_regimen_when_loaded_then_declares_protocol_parameter_ranges(
    regimen: Regimen,
) -> None:
    daily_days = regimen.parameters["daily_days"]
    assert daily_days.kind == "int"
    assert daily_days.choices == (7, 14)
    checkin_week = regimen.parameters["checkin_week"]
    assert (checkin_week.minimum, checkin_week.maximum, checkin_week.default) == (8, 13, 10)


# --- session parameters ----------------------------------------------------------------------


def test_resolve_parameters_when_none_given_then_fills_defaults(regimen: Regimen) -> None:
    resolved = regimen.resolve_parameters(None)
    assert resolved["daily_days"] == 14
    assert resolved["checkin_week"] == 10
    assert set(resolved) == set(regimen.parameters)


def test_resolve_parameters_when_some_given_then_keeps_them_and_fills_the_rest(
    regimen: Regimen,
) -> None:
    resolved = regimen.resolve_parameters({"daily_days": 7, "checkin_week": "12"})
    assert resolved["daily_days"] == 7
    assert resolved["checkin_week"] == 12


@pytest.mark.parametrize(
    ("given", "name", "reason"),
    [
        ({"colour": "blue"}, "colour", "is not a parameter"),
        ({"daily_days": 10}, "daily_days", "must be one of 7, 14"),
        ({"checkin_week": 7}, "checkin_week", "at least 8"),
        ({"checkin_week": 14}, "checkin_week", "at most 13"),
        ({"checkin_week": "ten"}, "checkin_week", "whole number"),
        ({"checkin_week": True}, "checkin_week", "whole number"),
        ({"garment": "thigh-high"}, "garment", "must be one of"),
    ],
)
def test_resolve_parameters_when_unknown_or_out_of_range_then_raises_naming_the_parameter(
    regimen: Regimen, given: dict[str, object], name: str, reason: str
) -> None:
    with pytest.raises(ParameterError, match=reason) as caught:
        regimen.resolve_parameters(given)
    assert caught.value.name == name
    assert str(caught.value).startswith(f"{name}: ")


# --- malformed regimen files -----------------------------------------------------------------

VALID = """\
id: sample
name: A sample regimen
version: 1
parameters:
  days:
    type: int
    default: 7
    choices: [7, 14]
  week:
    type: int
    default: 10
    min: 8
    max: 13
steps:
  - id: start
    title: Start
    at:
      elapsed: 72h
    channels: [sms, email]
    critical: true
  - id: morning
    title: Morning
    at:
      after_step: start
      next: "08:00"
    repeat:
      count: {param: days}
    channels: [sms, email]
    valid_for: 4h
  - id: checkin
    title: Check-in
    at:
      day: {param: week, times: 7}
      time: "10:00"
    channels: [email]
"""


def test_parse_regimen_when_valid_then_loads_every_step() -> None:
    regimen = parse_regimen(VALID, file="good.yaml")
    assert [step.id for step in regimen.steps] == ["start", "morning", "checkin"]
    assert regimen.source == "good.yaml"


def _broken(old: str, new: str) -> str:
    assert VALID.count(old) == 1, old
    return VALID.replace(old, new)


# Each case: the broken text, the key path named, a reason fragment, and a line the error must
# point at (given as text found on exactly that line, so the table survives edits to VALID).
MALFORMED = {
    "not YAML at all": (
        _broken("name: A sample regimen", "name: [A sample regimen"),
        "<root>",
        "not valid YAML",
        "version: 1",
    ),
    "a list at the root": ("- id: sample\n- name: x\n", "<root>", "must be a mapping", "- id"),
    "missing id": (_broken("id: sample\n", ""), "id", "lower-case identifier", "name:"),
    "bad id": (_broken("id: sample", "id: Sample Regimen"), "id", "identifier", "id: Sample"),
    "unknown top-level key": (
        _broken("version: 1", "version: 1\ncolour: blue"),
        "colour",
        "unknown key",
        "colour: blue",
    ),
    "bad time": (
        _broken('next: "08:00"', "next: 8am"),
        "steps[1].at.next",
        "HH:MM",
        "next: 8am",
    ),
    "bad day time": (
        _broken('time: "10:00"', 'time: "8am"'),
        "steps[2].at.time",
        "HH:MM",
        'time: "8am"',
    ),
    "bad duration": (
        _broken("elapsed: 72h", "elapsed: 72 hours"),
        "steps[0].at.elapsed",
        "duration",
        "elapsed: 72 hours",
    ),
    "unknown channel": (
        _broken("channels: [email]", "channels: [email, fax]"),
        "steps[2].channels",
        "distinct channels",
        "channels: [email, fax]",
    ),
    "duplicate step id": (
        _broken("- id: checkin", "- id: morning"),
        "steps[2].id",
        "duplicate step id",
        "- id: morning\n    title: Check-in",
    ),
    "after_step naming a later step": (
        _broken("after_step: start", "after_step: checkin"),
        "steps[1].at.after_step",
        "earlier step",
        "after_step: checkin",
    ),
    "after_step naming an unknown step": (
        _broken("after_step: start", "after_step: nowhere"),
        "steps[1].at.after_step",
        "earlier step",
        "after_step: nowhere",
    ),
    "parameter default out of range": (
        _broken("default: 10", "default: 20"),
        "parameters.week.default",
        "at most 13",
        "default: 20",
    ),
    "critical step with valid_for": (
        _broken("critical: true", "critical: true\n    valid_for: 1d"),
        "steps[0].valid_for",
        "never expires",
        "valid_for: 1d",
    ),
    "repeat on an elapsed step": (
        _broken("critical: true", "critical: true\n    repeat: {count: 3}"),
        "steps[0].repeat",
        "can repeat",
        "repeat: {count: 3}",
    ),
    "int param without range": (
        _broken("    min: 8\n    max: 13\n", ""),
        "parameters.week",
        "needs choices or both min and max",
        "type: int\n    default: 10",  # the first line of week's declaration
    ),
}


def _line_containing(text: str, marker: str) -> int:
    """The 1-based line where ``marker`` starts; it must occur exactly once."""
    assert text.count(marker) == 1, marker
    return text[: text.index(marker)].count("\n") + 1


@pytest.mark.parametrize(("text", "key", "reason", "marker"), MALFORMED.values(), ids=MALFORMED)
def test_parse_regimen_when_malformed_then_error_names_file_key_line_and_reason(
    text: str, key: str, reason: str, marker: str
) -> None:
    line = _line_containing(text, marker)
    with pytest.raises(RegimenError) as caught:
        parse_regimen(text, file="bad.yaml")
    error = caught.value
    assert (error.file, error.key or "<root>", error.line) == ("bad.yaml", key, line)
    assert reason in error.reason
    assert str(error).startswith(f"bad.yaml:{line}: {key}: ")


COURSE_BASE = """
id: demo
name: Demo
version: 1
steps:
  - id: hello
    title: Hello
    at: {elapsed: 0h}
    channels: [sms]
"""


def test_course_when_declared_then_names_the_steps_a_later_session_supersedes() -> None:
    regimen = parse_regimen(COURSE_BASE + "course: {same_as: [demo], supersede: [hello]}\n")

    assert regimen.superseded_by("demo") == frozenset({"hello"})
    assert regimen.superseded_by("other") == frozenset()
    assert parse_regimen(COURSE_BASE).superseded_by("demo") == frozenset()


@pytest.mark.parametrize(
    ("course", "key", "reason"),
    [
        ("course: [hello]", "course", "must be a mapping"),
        ("course: {supersede: [nope]}", "course.supersede[0]", "'nope' is not a step"),
        ("course: {supersede: []}", "course.supersede", "non-empty list"),
        ("course: {supersede: [hello, hello]}", "course.supersede", "lists a step twice"),
        ("course: {same_as: [Bad Id], supersede: [hello]}", "course.same_as[0]", "identifier"),
        ("course: {supersede: [hello], extra: 1}", "course.extra", "unknown key"),
    ],
)
def test_course_when_malformed_then_refused_naming_the_key(
    course: str, key: str, reason: str
) -> None:
    with pytest.raises(RegimenError) as caught:
        parse_regimen(COURSE_BASE + course + "\n", file="demo.yaml")

    assert caught.value.key == key
    assert reason in caught.value.reason
    assert caught.value.line is not None


def test_course_same_as_an_unknown_regimen_is_refused_when_the_folder_is_loaded(
    tmp_path: Path,
) -> None:
    (tmp_path / "demo.yaml").write_text(
        COURSE_BASE + "course: {same_as: [elsewhere], supersede: [hello]}\n"
    )

    with pytest.raises(RegimenError, match="'elsewhere' is not a loaded regimen"):
        RegimenRegistry.load(tmp_path)
