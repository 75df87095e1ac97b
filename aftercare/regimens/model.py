"""The shape of a regimen: parameters a clinician chooses, and steps that say when and what."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import time, timedelta
from typing import Literal

from aftercare.parsing import ascii_int

Channel = Literal["sms", "email"]
CHANNELS: tuple[Channel, ...] = ("sms", "email")


class ParameterError(ValueError):
    """A session parameter is unknown or outside the range its regimen declares."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class Parameter:
    name: str
    label: str
    kind: Literal["int", "str"]
    default: int | str
    choices: tuple[int | str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    # What a template reads for each choice (``says:`` in the file); a value not listed reads as
    # itself.
    says: dict[int | str, str] = field(default_factory=dict)

    def words(self, value: int | str) -> int | str:
        """The value as a message template reads it."""
        return self.says.get(value, value)

    def validate(self, value: object) -> int | str:
        """The value, checked against the declared type and range."""
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                number = ascii_int(value) if isinstance(value, str) else None
                if number is None:
                    raise ParameterError(self.name, "must be a whole number")
                value = number
            assert isinstance(value, int)
            if self.minimum is not None and value < self.minimum:
                raise ParameterError(self.name, f"must be at least {self.minimum}")
            if self.maximum is not None and value > self.maximum:
                raise ParameterError(self.name, f"must be at most {self.maximum}")
        elif not isinstance(value, str):
            raise ParameterError(self.name, "must be text")
        if self.choices and value not in self.choices:
            allowed = ", ".join(str(c) for c in self.choices)
            raise ParameterError(self.name, f"must be one of {allowed}")
        return value

    def describe_range(self) -> str:
        if self.choices:
            return "|".join(str(c) for c in self.choices)
        return f"{self.minimum}..{self.maximum}"


@dataclass(frozen=True)
class IntRef:
    """An integer that is either a constant or ``param * times + plus``."""

    constant: int = 0
    param: str | None = None
    times: int = 1
    plus: int = 0

    def resolve(self, params: dict[str, int | str]) -> int:
        if self.param is None:
            return self.constant
        value = params[self.param]
        assert isinstance(value, int)
        return value * self.times + self.plus


@dataclass(frozen=True)
class Elapsed:
    """Exact elapsed time after treatment (``72h`` is 72 real hours, whatever the clocks do)."""

    after: timedelta


@dataclass(frozen=True)
class DayTime:
    """Local wall time on local day N, where day 0 is the local date of treatment."""

    day: IntRef
    at: time


@dataclass(frozen=True)
class NextTime:
    """The first local wall time ``at`` strictly after another step's (last) occurrence."""

    after_step: str
    at: time


@dataclass(frozen=True)
class SameDay:
    """On the local date of each occurrence of another step, at wall time ``at``."""

    step: str
    at: time


When = Elapsed | DayTime | NextTime | SameDay

# Which occurrences of a step's series are sent (``occurrences:`` in the file).
SELECTIONS = ("all", "first", "last", "first_and_last")
Selection = Literal["all", "first", "last", "first_and_last"]


@dataclass(frozen=True)
class Occurrences:
    """Which occurrences of a step's series are sent: a constant selection, or the value of a
    str parameter whose choices are all selections (so a clinic can change it per session)."""

    constant: Selection = "all"
    param: str | None = None

    def indexes(self, params: dict[str, int | str], count: int) -> range | tuple[int, ...]:
        """The occurrence numbers (0-based, of ``count``) that are sent."""
        selection = self.constant if self.param is None else params[self.param]
        if selection == "first":
            return range(min(count, 1))
        if selection == "last":
            return range(max(count - 1, 0), count)
        if selection == "first_and_last":
            return tuple(sorted({0, count - 1})) if count else ()
        return range(count)


@dataclass(frozen=True)
class Repeat:
    count: IntRef
    every_days: int = 1


@dataclass(frozen=True)
class Step:
    id: str
    title: str
    template: str
    when: When
    channels: tuple[Channel, ...]
    # "each": one reminder per chosen channel; "first": only the first chosen channel in order.
    channel_mode: Literal["each", "first"] = "each"
    repeat: Repeat | None = None
    # A reminder later than this after its due time is expired, not sent (None: never expires).
    valid_for: timedelta | None = None
    # Safety-critical: never expired or dropped, only deferred by quiet hours.
    critical: bool = False
    # "always": sent even when enrolment happens after its time; "latest": only if it is the
    # most recent past step (see planner's catch-up policy).
    catch_up: Literal["always", "latest"] = "latest"
    # Attach the compression regimen as an .ics calendar to this step's emails (the first one).
    attach_calendar: bool = False
    # Which occurrences of the series are planned (the others are not sent; numbering is kept,
    # so "day 14 of 14" still reads right).
    occurrences: Occurrences = field(default_factory=Occurrences)
    # The step that asks the patient the check-in question: a reply after it is an answer.
    check_in: bool = False


@dataclass(frozen=True)
class DateRef:
    """A template variable naming when a step happens (``dates:`` in the file)."""

    step: str
    which: Literal["first", "last"] = "first"
    # "date": "Monday 30 March"; "date_time": "Monday 30 March at 8am".
    show: Literal["date", "date_time"] = "date"


@dataclass(frozen=True)
class CalendarEvent:
    """One event of the calendar (.ics) attached to a step's email (``calendar:`` in the file).

    It starts at treatment (``start_step`` None) or at a step's first occurrence, and ends at a
    step's first occurrence or after a duration. ``repeat``: once a day for each occurrence of
    the start step. ``all_day``: the whole local date of its start. ``summary`` and
    ``description`` are templates over the parameters and the clinic's name and phone."""

    id: str
    summary: str
    description: str
    start_step: str | None = None
    end_step: str | None = None
    end_after: timedelta | None = None
    repeat: bool = False
    all_day: bool = False


@dataclass(frozen=True)
class CalendarSpec:
    name: str
    events: tuple[CalendarEvent, ...]


@dataclass(frozen=True)
class Course:
    """How this regimen's sessions make a course of treatment: a later session of one of the
    ``same_as`` regimens (this one included) supersedes an earlier session's reminders, not yet
    sent, of the ``supersede`` steps."""

    same_as: frozenset[str]
    supersede: frozenset[str]


@dataclass(frozen=True)
class Checkin:
    """Which steps ask the check-in question (those marked ``check_in: true``), and how long an
    unanswered one waits before staff are told (aftercare/silence)."""

    steps: frozenset[str]  # the steps marked check_in: true
    unanswered_after_days: int


@dataclass(frozen=True)
class Regimen:
    id: str
    name: str
    version: int
    parameters: dict[str, Parameter]
    steps: tuple[Step, ...]
    source: str = ""
    descriptions: dict[str, str] = field(default_factory=dict)
    # None: each session runs its whole plan, whatever later sessions there are.
    course: Course | None = None
    # None: this regimen asks no check-in question that staff should see go unanswered.
    checkin: Checkin | None = None
    # Template variables naming when steps happen, by variable name.
    dates: dict[str, DateRef] = field(default_factory=dict)
    # The calendar attached to the emails of steps with attach_calendar (None: no calendar).
    calendar: CalendarSpec | None = None

    @property
    def checkin_steps(self) -> frozenset[str]:
        """The steps that ask the check-in question."""
        return frozenset(step.id for step in self.steps if step.check_in)

    def superseded_by(self, later_regimen_id: str) -> frozenset[str]:
        """The steps of a session of this regimen that a later session of
        ``later_regimen_id`` supersedes (none when they are not the same regimen)."""
        if self.course is None or later_regimen_id not in self.course.same_as:
            return frozenset()
        return self.course.supersede

    def resolve_parameters(self, given: dict[str, object] | None) -> dict[str, int | str]:
        """Defaults filled in and every value checked; unknown names are refused."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.parameters))
        if unknown:
            raise ParameterError(unknown[0], f"is not a parameter of regimen {self.id}")
        resolved: dict[str, int | str] = {}
        for name, parameter in self.parameters.items():
            value = given.get(name)
            resolved[name] = parameter.default if value is None else parameter.validate(value)
        return resolved

    def step(self, step_id: str) -> Step:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)
