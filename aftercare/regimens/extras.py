"""Reading a regimen file's ``course``, ``dates`` and ``calendar``: what refers to its steps."""

from __future__ import annotations

import re
from typing import Any, cast

from aftercare.regimens.fields import (
    MAX_DAYS,
    Ctx,
    Path,
    duration,
    flag,
    ident,
    mapping,
    one_of,
    text,
)
from aftercare.regimens.model import (
    CalendarEvent,
    CalendarSpec,
    Checkin,
    Course,
    DateRef,
    Parameter,
    Step,
)

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# The template variables every message has, whatever the regimen (messages/context.py).
BASE_VARIABLES = frozenset(
    {"first_name", "clinic_name", "clinic_phone", "day_number", "day_count", "unsubscribe_url"}
)


def parse_course(ctx: Ctx, data: Any, regimen_id: str, steps: tuple[Step, ...]) -> Course:
    """``course: {same_as: [ids], supersede: [step ids]}``: what a later session replaces."""
    path: Path = ["course"]
    data = mapping(ctx, path, data, {"same_as", "supersede"}, "with same_as and supersede")
    same_as = data.get("same_as", [regimen_id])
    if not isinstance(same_as, list) or not same_as:
        raise ctx.fail([*path, "same_as"], "must be a non-empty list of regimen ids")
    for index, other in enumerate(same_as):
        ident(ctx, [*path, "same_as", index], other)
    supersede = data.get("supersede")
    if not isinstance(supersede, list) or not supersede:
        raise ctx.fail([*path, "supersede"], "must be a non-empty list of this regimen's steps")
    for index, step_id in enumerate(supersede):
        _step_of(ctx, [*path, "supersede", index], step_id, steps)
    if len(set(supersede)) != len(supersede):
        raise ctx.fail([*path, "supersede"], "lists a step twice")
    return Course(same_as=frozenset([regimen_id, *same_as]), supersede=frozenset(supersede))


def parse_checkin(ctx: Ctx, data: Any, steps: tuple[Step, ...]) -> Checkin:
    """``check_in: {unanswered_after_days: N}``: after how many days without an answer to the
    steps marked ``check_in: true`` staff are told (aftercare/silence)."""
    path: Path = ["check_in"]
    data = mapping(ctx, path, data, {"unanswered_after_days"}, "with unanswered_after_days")
    asking = frozenset(step.id for step in steps if step.check_in)
    if not asking:
        raise ctx.fail(path, "no step is marked check_in: true")
    days = data.get("unanswered_after_days")
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ctx.fail([*path, "unanswered_after_days"], "must be a positive whole number")
    if days > MAX_DAYS:
        raise ctx.fail([*path, "unanswered_after_days"], f"must be at most {MAX_DAYS}")
    return Checkin(steps=asking, unanswered_after_days=days)


def _step_of(ctx: Ctx, path: Path, step_id: Any, steps: tuple[Step, ...]) -> str:
    if step_id not in {step.id for step in steps}:
        raise ctx.fail(path, f"{step_id!r} is not a step of this regimen")
    return str(step_id)


def parse_dates(
    ctx: Ctx, data: Any, steps: tuple[Step, ...], parameters: dict[str, Parameter]
) -> dict[str, DateRef]:
    """``dates: {name: {step, which: first|last, show: date|date_time}}``: template variables
    naming when a step happens."""
    if not isinstance(data, dict):
        raise ctx.fail(["dates"], "must map variable names to {step, which, show}")
    out: dict[str, DateRef] = {}
    for name, spec in data.items():
        path: Path = ["dates", str(name)]
        if not isinstance(name, str) or not _NAME.match(name):
            raise ctx.fail(path, "variable names are snake_case identifiers")
        if name in BASE_VARIABLES or name in parameters:
            raise ctx.fail(path, "is already a template variable (a parameter or a built-in)")
        ref = mapping(ctx, path, spec, {"step", "which", "show"}, "{step, which, show}")
        out[name] = DateRef(
            step=_step_of(ctx, [*path, "step"], ref.get("step"), steps),
            which=cast(
                Any, one_of(ctx, [*path, "which"], ref.get("which", "first"), ("first", "last"))
            ),
            show=cast(
                Any, one_of(ctx, [*path, "show"], ref.get("show", "date"), ("date", "date_time"))
            ),
        )
    return out


def parse_calendar(ctx: Ctx, data: Any, steps: tuple[Step, ...]) -> CalendarSpec:
    """``calendar: {name, events: [...]}``: the .ics attached to attach_calendar steps."""
    path: Path = ["calendar"]
    data = mapping(ctx, path, data, {"name", "events"}, "{name, events}")
    events = data.get("events")
    if not isinstance(events, list) or not events:
        raise ctx.fail([*path, "events"], "must be a non-empty list")
    parsed = tuple(
        _event(ctx, [*path, "events", index], spec, steps) for index, spec in enumerate(events)
    )
    if len({event.id for event in parsed}) != len(parsed):
        raise ctx.fail([*path, "events"], "two events have the same id")
    return CalendarSpec(name=text(ctx, [*path, "name"], data.get("name")), events=parsed)


_EVENT_KEYS = {"id", "summary", "description", "start", "end", "repeat", "all_day"}


def _event(ctx: Ctx, path: Path, spec: Any, steps: tuple[Step, ...]) -> CalendarEvent:
    spec = mapping(ctx, path, spec, _EVENT_KEYS, "{id, summary, description, start, end}")
    start = spec.get("start")
    start_step = None
    if start != "treatment":
        start = mapping(ctx, [*path, "start"], start, {"step"}, "treatment or {step: ID}")
        start_step = _step_of(ctx, [*path, "start", "step"], start.get("step"), steps)
    all_day = flag(ctx, [*path, "all_day"], spec.get("all_day", False))
    end_step, end_after = None, None
    if not all_day:
        end = mapping(ctx, [*path, "end"], spec.get("end"), {"step", "after"}, "{step} or {after}")
        if ("step" in end) == ("after" in end):
            raise ctx.fail([*path, "end"], "needs one of step or after")
        if "step" in end:
            end_step = _step_of(ctx, [*path, "end", "step"], end["step"], steps)
        else:
            end_after = duration(ctx, [*path, "end", "after"], end["after"])
    repeat = flag(ctx, [*path, "repeat"], spec.get("repeat", False))
    if repeat and start_step is None:
        raise ctx.fail([*path, "repeat"], "only an event that starts at a step can repeat")
    return CalendarEvent(
        id=ident(ctx, [*path, "id"], spec.get("id")),
        summary=text(ctx, [*path, "summary"], spec.get("summary")),
        description=text(ctx, [*path, "description"], spec.get("description")),
        start_step=start_step,
        end_step=end_step,
        end_after=end_after,
        repeat=repeat,
        all_day=all_day,
    )
