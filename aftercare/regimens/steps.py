"""Reading a regimen file's ``steps``: when each happens, on which channels, and its roles."""

from __future__ import annotations

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
    only,
    text,
    time_of_day,
    whole,
)
from aftercare.regimens.model import (
    CHANNELS,
    SELECTIONS,
    Channel,
    DayTime,
    Elapsed,
    NextTime,
    Occurrences,
    Parameter,
    Repeat,
    SameDay,
    Selection,
    Step,
    When,
)
from aftercare.regimens.parameters import parse_intref

STEP_KEYS = {
    "id",
    "title",
    "template",
    "at",
    "channels",
    "channel_mode",
    "repeat",
    "occurrences",
    "valid_for",
    "critical",
    "catch_up",
    "attach_calendar",
    "check_in",
}
_WHEN_SHAPES = "{elapsed}, {day, time}, {next, after_step} or {same_day_as, time}"


def parse_steps(ctx: Ctx, data: Any, parameters: dict[str, Parameter]) -> tuple[Step, ...]:
    if not isinstance(data, list) or not data:
        raise ctx.fail(["steps"], "must be a non-empty list")
    steps: dict[str, Step] = {}
    for index, spec in enumerate(data):
        step = _step(ctx, ["steps", index], spec, parameters, steps)
        steps[step.id] = step
    return tuple(steps.values())


def _step(
    ctx: Ctx, path: Path, spec: Any, parameters: dict[str, Parameter], earlier: dict[str, Step]
) -> Step:
    if not isinstance(spec, dict):
        raise ctx.fail(path, "must be a mapping")
    only(ctx, path, spec, STEP_KEYS)
    step_id = ident(ctx, [*path, "id"], spec.get("id"))
    if step_id in earlier:
        raise ctx.fail([*path, "id"], f"duplicate step id {step_id!r}")
    critical = flag(ctx, [*path, "critical"], spec.get("critical", False))
    when = _when(ctx, [*path, "at"], spec.get("at"), parameters, earlier)
    valid_for = None
    if spec.get("valid_for") is not None:
        valid_for = duration(ctx, [*path, "valid_for"], spec["valid_for"])
        if critical:
            raise ctx.fail([*path, "valid_for"], "a critical step never expires")
    return Step(
        id=step_id,
        title=text(ctx, [*path, "title"], spec.get("title")),
        template=ident(ctx, [*path, "template"], spec.get("template", step_id)),
        when=when,
        channels=_channels(ctx, [*path, "channels"], spec.get("channels")),
        channel_mode=cast(
            Any,
            one_of(
                ctx, [*path, "channel_mode"], spec.get("channel_mode", "each"), ("each", "first")
            ),
        ),
        repeat=_repeat(ctx, [*path, "repeat"], spec["repeat"], when, parameters)
        if "repeat" in spec
        else None,
        valid_for=valid_for,
        critical=critical,
        catch_up=cast(
            Any,
            one_of(ctx, [*path, "catch_up"], spec.get("catch_up", "latest"), ("always", "latest")),
        ),
        attach_calendar=flag(ctx, [*path, "attach_calendar"], spec.get("attach_calendar", False)),
        occurrences=_occurrences(ctx, [*path, "occurrences"], spec.get("occurrences"), parameters),
        check_in=flag(ctx, [*path, "check_in"], spec.get("check_in", False)),
    )


def _channels(ctx: Ctx, path: Path, channels: Any) -> tuple[Channel, ...]:
    if (
        not isinstance(channels, list)
        or not channels
        or any(c not in CHANNELS for c in channels)
        or len(set(channels)) != len(channels)
    ):
        raise ctx.fail(path, "must list distinct channels from: sms, email")
    return cast(tuple[Channel, ...], tuple(channels))


def _repeat(
    ctx: Ctx, path: Path, spec: Any, when: When, parameters: dict[str, Parameter]
) -> Repeat:
    spec = mapping(ctx, path, spec, {"count", "every_days"}, "{count, every_days}")
    every = whole(ctx, [*path, "every_days"], spec.get("every_days", 1), low=1, high=MAX_DAYS)
    if isinstance(when, Elapsed | SameDay):
        raise ctx.fail(path, "only day/time and after_step steps can repeat")
    return Repeat(parse_intref(ctx, [*path, "count"], spec.get("count"), parameters), every)


def _occurrences(ctx: Ctx, path: Path, value: Any, parameters: dict[str, Parameter]) -> Occurrences:
    """``occurrences: all|first|last|first_and_last`` or ``{param: NAME}``, a str parameter
    whose every choice is one of those."""
    allowed = ", ".join(SELECTIONS)
    if value is None:
        return Occurrences()
    if isinstance(value, str):
        if value not in SELECTIONS:
            raise ctx.fail(path, f"must be one of {allowed}, or {{param: NAME}}")
        return Occurrences(constant=cast(Selection, value))
    spec = mapping(ctx, path, value, {"param"}, f"one of {allowed}, or {{param: NAME}}")
    name = spec.get("param")
    parameter = parameters.get(name) if isinstance(name, str) else None
    if parameter is None or parameter.kind != "str":
        raise ctx.fail([*path, "param"], "must name a str parameter of this regimen")
    wrong = [c for c in parameter.choices if c not in SELECTIONS]
    if wrong:
        raise ctx.fail(
            [*path, "param"],
            f"parameter {name!r} has choice {wrong[0]!r}; its choices must be from {allowed}",
        )
    return Occurrences(param=name)


def _when(
    ctx: Ctx, path: Path, data: Any, parameters: dict[str, Parameter], earlier: dict[str, Step]
) -> When:
    if not isinstance(data, dict):
        raise ctx.fail(path, f"must be a mapping: {_WHEN_SHAPES}")
    if "elapsed" in data:
        only(ctx, path, data, {"elapsed"})
        return Elapsed(duration(ctx, [*path, "elapsed"], data["elapsed"]))
    if "same_day_as" in data:
        only(ctx, path, data, {"same_day_as", "time"})
        anchor = _earlier(ctx, [*path, "same_day_as"], data["same_day_as"], earlier)
        return SameDay(anchor, time_of_day(ctx, [*path, "time"], data.get("time")))
    if "after_step" in data:
        only(ctx, path, data, {"after_step", "next"})
        anchor = _earlier(ctx, [*path, "after_step"], data["after_step"], earlier)
        return NextTime(anchor, time_of_day(ctx, [*path, "next"], data.get("next")))
    if "day" in data:
        only(ctx, path, data, {"day", "time"})
        day = parse_intref(ctx, [*path, "day"], data["day"], parameters)
        return DayTime(day, time_of_day(ctx, [*path, "time"], data.get("time")))
    raise ctx.fail(path, "needs one of elapsed, day, after_step or same_day_as")


def _earlier(ctx: Ctx, path: Path, anchor: Any, earlier: dict[str, Step]) -> str:
    if anchor not in earlier:
        raise ctx.fail(path, "must name an earlier step")
    return str(anchor)
