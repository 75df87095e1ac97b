"""Read and validate regimen YAML files.

A bad file is refused with its file name, line, key path and the reason.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import time, timedelta
from pathlib import Path
from typing import Any, cast

import yaml

from aftercare.regimens.model import (
    CHANNELS,
    Channel,
    Checkin,
    Course,
    DayTime,
    Elapsed,
    IntRef,
    NextTime,
    Parameter,
    Regimen,
    Repeat,
    SameDay,
    Step,
    When,
)

_ID = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
_TIME = re.compile(r"^(\d{2}):(\d{2})$")
_DURATION = re.compile(r"^(\d+)\s*([mhd])$")
# Bounds that keep planning inside the calendar: a regimen lasts months, not centuries, and an
# absurd number in a file is a typo to report, not an OverflowError in the planner.
MAX_DAYS = 366
MAX_DURATION = timedelta(days=MAX_DAYS)
MAX_VERSION = 2**31 - 1  # stored in an INTEGER column with each session


class RegimenError(ValueError):
    """A regimen file that cannot be used, with where and why."""

    def __init__(self, file: str, key: str, reason: str, line: int | None = None) -> None:
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {key or '<root>'}: {reason}")
        self.file = file
        self.key = key
        self.reason = reason
        self.line = line


@dataclass
class _Ctx:
    file: str
    root: yaml.Node | None

    def fail(self, path: list[str | int], reason: str) -> RegimenError:
        return RegimenError(self.file, _format_path(path), reason, _line_of(self.root, path))


def _format_path(path: list[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _line_of(node: yaml.Node | None, path: list[str | int]) -> int | None:
    """The 1-based line of the deepest node on ``path`` that exists."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in path:
        if isinstance(node, yaml.MappingNode):
            match = [v for k, v in node.value if getattr(k, "value", None) == part]
            if not match:
                break
            node = match[0]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
        else:
            break
        line = node.start_mark.line + 1
    return line


def load_regimen(path: Path) -> Regimen:
    """Load one regimen file, refusing anything malformed."""
    text = path.read_text(encoding="utf-8")
    return parse_regimen(text, file=str(path))


def parse_regimen(text: str, *, file: str = "<regimen>") -> Regimen:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise RegimenError(file, "", f"not valid YAML ({exc})", line) from exc
    except RecursionError:
        raise RegimenError(file, "", "not valid YAML (nested too deeply)") from None
    ctx = _Ctx(file, root)
    _refuse_duplicate_keys(ctx, root, [], set())
    if not isinstance(data, dict):
        raise ctx.fail([], "must be a mapping with id, name, version, parameters and steps")
    _only(
        ctx,
        [],
        data,
        {"id", "name", "version", "parameters", "steps", "descriptions", "course", "checkin"},
    )
    regimen_id = _ident(ctx, ["id"], data.get("id"))
    name = _text(ctx, ["name"], data.get("name"))
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ctx.fail(["version"], "must be a positive whole number")
    if version > MAX_VERSION:
        raise ctx.fail(["version"], f"must be at most {MAX_VERSION}")
    parameters = _parameters(ctx, data.get("parameters") or {})
    steps = _steps(ctx, data.get("steps"), parameters)
    descriptions = data.get("descriptions") or {}
    if not isinstance(descriptions, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in descriptions.items()
    ):
        raise ctx.fail(["descriptions"], "must map names to text")
    course = _course(ctx, data["course"], regimen_id, steps) if "course" in data else None
    checkin = _checkin(ctx, data["checkin"], steps) if "checkin" in data else None
    return Regimen(
        id=regimen_id,
        name=name,
        version=version,
        parameters=parameters,
        steps=steps,
        source=file,
        descriptions=cast(dict[str, str], descriptions),
        course=course,
        checkin=checkin,
    )


def _checkin(ctx: _Ctx, data: Any, steps: tuple[Step, ...]) -> Checkin:
    """``checkin: {step: S, unanswered_after_days: N}``: the step that asks the check-in
    question, and after how many days without an answer staff are told."""
    path: list[str | int] = ["checkin"]
    if not isinstance(data, dict):
        raise ctx.fail(path, "must be a mapping with step and unanswered_after_days")
    _only(ctx, path, data, {"step", "unanswered_after_days"})
    step_id = data.get("step")
    if not isinstance(step_id, str) or step_id not in {step.id for step in steps}:
        raise ctx.fail([*path, "step"], f"{step_id!r} is not a step of this regimen")
    days = data.get("unanswered_after_days")
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ctx.fail([*path, "unanswered_after_days"], "must be a positive whole number")
    if days > MAX_DAYS:
        raise ctx.fail([*path, "unanswered_after_days"], f"must be at most {MAX_DAYS}")
    return Checkin(step=step_id, unanswered_after_days=days)


def _course(ctx: _Ctx, data: Any, regimen_id: str, steps: tuple[Step, ...]) -> Course:
    """``course: {same_as: [ids], supersede: [step ids]}``: what a later session replaces."""
    path: list[str | int] = ["course"]
    if not isinstance(data, dict):
        raise ctx.fail(path, "must be a mapping with same_as and supersede")
    _only(ctx, path, data, {"same_as", "supersede"})
    same_as = data.get("same_as", [regimen_id])
    if not isinstance(same_as, list) or not same_as:
        raise ctx.fail([*path, "same_as"], "must be a non-empty list of regimen ids")
    for index, other in enumerate(same_as):
        _ident(ctx, [*path, "same_as", index], other)
    supersede = data.get("supersede")
    if not isinstance(supersede, list) or not supersede:
        raise ctx.fail([*path, "supersede"], "must be a non-empty list of this regimen's steps")
    known = {step.id for step in steps}
    for index, step_id in enumerate(supersede):
        if step_id not in known:
            raise ctx.fail(
                [*path, "supersede", index], f"{step_id!r} is not a step of this regimen"
            )
    if len(set(supersede)) != len(supersede):
        raise ctx.fail([*path, "supersede"], "lists a step twice")
    return Course(same_as=frozenset([regimen_id, *same_as]), supersede=frozenset(supersede))


def _refuse_duplicate_keys(
    ctx: _Ctx, node: yaml.Node | None, path: list[str | int], seen: set[int]
) -> None:
    """YAML keeps the last of two equal keys without a word: ``version: 1`` then ``version: 2``
    is a mistake to report, not a choice to make silently."""
    if node is None or id(node) in seen:  # an alias to a node already checked (or recursive)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: set[object] = set()
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            if name is not None and name in keys:
                raise RegimenError(
                    ctx.file, _format_path([*path, name]), "duplicate key", key.start_mark.line + 1
                )
            keys.add(name)
            _refuse_duplicate_keys(ctx, value, [*path, str(name)], seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_duplicate_keys(ctx, item, [*path, index], seen)


def _only(ctx: _Ctx, path: list[str | int], data: dict[str, Any], allowed: set[str]) -> None:
    for key in data:
        if key not in allowed:
            raise ctx.fail(
                [*path, str(key)], f"unknown key (allowed: {', '.join(sorted(allowed))})"
            )


def _ident(ctx: _Ctx, path: list[str | int], value: Any) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise ctx.fail(path, "must be a lower-case identifier like 'daily-wear'")
    return value


def _text(ctx: _Ctx, path: list[str | int], value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ctx.fail(path, "must be non-empty text")
    if any(unicodedata.category(ch) in {"Cc", "Cf"} and ch != "\n" for ch in value):
        raise ctx.fail(path, "contains control or invisible characters")
    return value.strip()


def _time(ctx: _Ctx, path: list[str | int], value: Any) -> time:
    match = _TIME.match(value) if isinstance(value, str) else None
    if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise ctx.fail(path, "must be a local time of day as HH:MM (quote it in YAML)")
    return time(int(match.group(1)), int(match.group(2)))


def _duration(ctx: _Ctx, path: list[str | int], value: Any) -> timedelta:
    match = _DURATION.match(value.strip()) if isinstance(value, str) else None
    if not match:
        raise ctx.fail(path, "must be a duration such as '30m', '72h' or '3d'")
    amount, unit = int(match.group(1)), match.group(2)
    if amount > {"m": 24 * 60, "h": 24, "d": 1}[unit] * MAX_DAYS:
        raise ctx.fail(path, f"must be at most {MAX_DAYS} days")
    return {"m": timedelta(minutes=amount), "h": timedelta(hours=amount)}.get(
        unit, timedelta(days=amount)
    )


def _parameters(ctx: _Ctx, data: Any) -> dict[str, Parameter]:
    if not isinstance(data, dict):
        raise ctx.fail(["parameters"], "must map parameter names to their declarations")
    out: dict[str, Parameter] = {}
    for name, spec in data.items():
        path: list[str | int] = ["parameters", str(name)]
        if not isinstance(name, str) or not re.match(r"^[a-z][a-z0-9_]*$", name):
            raise ctx.fail(path, "parameter names are snake_case identifiers")
        if not isinstance(spec, dict):
            raise ctx.fail(path, "must be a mapping with type and default")
        _only(ctx, path, spec, {"type", "label", "default", "choices", "min", "max"})
        kind = spec.get("type")
        if kind not in ("int", "str"):
            raise ctx.fail([*path, "type"], "must be 'int' or 'str'")
        choices = spec.get("choices") or []
        if not isinstance(choices, list):
            raise ctx.fail([*path, "choices"], "must be a list")
        minimum, maximum = spec.get("min"), spec.get("max")
        if kind == "int":
            for key, bound in (("min", minimum), ("max", maximum)):
                if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int)):
                    raise ctx.fail([*path, key], "must be a whole number")
            if not choices and (minimum is None or maximum is None):
                raise ctx.fail(path, "an int parameter needs choices or both min and max")
            if minimum is not None and maximum is not None and minimum > maximum:
                raise ctx.fail([*path, "min"], "is greater than max")
        elif not choices:
            raise ctx.fail([*path, "choices"], "a str parameter needs its allowed choices")
        parameter = Parameter(
            name=name,
            label=str(spec.get("label") or name),
            kind=kind,
            default=spec.get("default"),  # type: ignore[arg-type]
            choices=tuple(choices),
            minimum=minimum,
            maximum=maximum,
        )
        for index, choice in enumerate(choices):
            try:
                parameter.validate(choice)
            except ValueError as exc:
                raise ctx.fail([*path, "choices", index], f"is not a valid {kind}") from exc
        if "default" not in spec:
            raise ctx.fail(path, "needs a default")
        try:
            parameter.validate(spec["default"])
        except ValueError as exc:
            raise ctx.fail([*path, "default"], str(exc).split(": ", 1)[-1]) from exc
        out[name] = parameter
    return out


def _intref(
    ctx: _Ctx, path: list[str | int], value: Any, parameters: dict[str, Parameter]
) -> IntRef:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ctx.fail(path, "must not be negative")
        if value > MAX_DAYS:
            raise ctx.fail(path, f"must be at most {MAX_DAYS}")
        return IntRef(constant=value)
    if isinstance(value, dict):
        _only(ctx, path, value, {"param", "times", "plus"})
        param = value.get("param")
        if param not in parameters or parameters[param].kind != "int":
            raise ctx.fail([*path, "param"], "must name an int parameter of this regimen")
        times, plus = value.get("times", 1), value.get("plus", 0)
        if any(isinstance(n, bool) or not isinstance(n, int) for n in (times, plus)) or times < 1:
            raise ctx.fail(path, "times must be a positive whole number and plus a whole number")
        ref = IntRef(param=param, times=times, plus=plus)
        # Linear in the parameter, so its smallest and largest values bound the result.
        declared = parameters[param]
        bounds = [
            int(v) for v in (*declared.choices, declared.minimum, declared.maximum) if v is not None
        ]
        lowest, highest = (ref.resolve({param: bound}) for bound in (min(bounds), max(bounds)))
        if lowest < 0 or highest > MAX_DAYS:
            raise ctx.fail(
                path, f"must stay between 0 and {MAX_DAYS} (it ranges {lowest}..{highest})"
            )
        return ref
    raise ctx.fail(path, "must be a whole number or {param: NAME, times: N, plus: N}")


def _when(
    ctx: _Ctx,
    path: list[str | int],
    data: Any,
    parameters: dict[str, Parameter],
    earlier: dict[str, Step],
) -> When:
    if not isinstance(data, dict):
        raise ctx.fail(
            path,
            "must be a mapping: {elapsed}, {day, time}, {next, after_step} or {same_day_as, time}",
        )
    if "elapsed" in data:
        _only(ctx, path, data, {"elapsed"})
        return Elapsed(_duration(ctx, [*path, "elapsed"], data["elapsed"]))
    if "same_day_as" in data:
        _only(ctx, path, data, {"same_day_as", "time"})
        anchor = data["same_day_as"]
        if anchor not in earlier:
            raise ctx.fail([*path, "same_day_as"], "must name an earlier step")
        return SameDay(anchor, _time(ctx, [*path, "time"], data.get("time")))
    if "after_step" in data:
        _only(ctx, path, data, {"after_step", "next"})
        anchor = data["after_step"]
        if anchor not in earlier:
            raise ctx.fail([*path, "after_step"], "must name an earlier step")
        return NextTime(anchor, _time(ctx, [*path, "next"], data.get("next")))
    if "day" in data:
        _only(ctx, path, data, {"day", "time"})
        day = _intref(ctx, [*path, "day"], data["day"], parameters)
        return DayTime(day, _time(ctx, [*path, "time"], data.get("time")))
    raise ctx.fail(path, "needs one of elapsed, day, after_step or same_day_as")


def _steps(ctx: _Ctx, data: Any, parameters: dict[str, Parameter]) -> tuple[Step, ...]:
    if not isinstance(data, list) or not data:
        raise ctx.fail(["steps"], "must be a non-empty list")
    steps: dict[str, Step] = {}
    allowed = {
        "id",
        "title",
        "template",
        "at",
        "channels",
        "channel_mode",
        "repeat",
        "valid_for",
        "critical",
        "catch_up",
        "attach_calendar",
    }
    for index, spec in enumerate(data):
        path: list[str | int] = ["steps", index]
        if not isinstance(spec, dict):
            raise ctx.fail(path, "must be a mapping")
        _only(ctx, path, spec, allowed)
        step_id = _ident(ctx, [*path, "id"], spec.get("id"))
        if step_id in steps:
            raise ctx.fail([*path, "id"], f"duplicate step id {step_id!r}")
        channels = spec.get("channels")
        if (
            not isinstance(channels, list)
            or not channels
            or any(c not in CHANNELS for c in channels)
            or len(set(channels)) != len(channels)
        ):
            raise ctx.fail([*path, "channels"], "must list distinct channels from: sms, email")
        mode = spec.get("channel_mode", "each")
        if mode not in ("each", "first"):
            raise ctx.fail([*path, "channel_mode"], "must be 'each' or 'first'")
        catch_up = spec.get("catch_up", "latest")
        if catch_up not in ("always", "latest"):
            raise ctx.fail([*path, "catch_up"], "must be 'always' or 'latest'")
        critical = spec.get("critical", False)
        if not isinstance(critical, bool):
            raise ctx.fail([*path, "critical"], "must be true or false")
        attach_calendar = spec.get("attach_calendar", False)
        if not isinstance(attach_calendar, bool):
            raise ctx.fail([*path, "attach_calendar"], "must be true or false")
        when = _when(ctx, [*path, "at"], spec.get("at"), parameters, steps)
        repeat = None
        if "repeat" in spec:
            rpath: list[str | int] = [*path, "repeat"]
            rspec = spec["repeat"]
            if not isinstance(rspec, dict):
                raise ctx.fail(rpath, "must be {count, every_days}")
            _only(ctx, rpath, rspec, {"count", "every_days"})
            every = rspec.get("every_days", 1)
            if isinstance(every, bool) or not isinstance(every, int) or every < 1:
                raise ctx.fail([*rpath, "every_days"], "must be a positive whole number")
            if every > MAX_DAYS:
                raise ctx.fail([*rpath, "every_days"], f"must be at most {MAX_DAYS}")
            if isinstance(when, Elapsed | SameDay):
                raise ctx.fail(rpath, "only day/time and after_step steps can repeat")
            repeat = Repeat(_intref(ctx, [*rpath, "count"], rspec.get("count"), parameters), every)
        valid_for = None
        if spec.get("valid_for") is not None:
            valid_for = _duration(ctx, [*path, "valid_for"], spec["valid_for"])
            if critical:
                raise ctx.fail([*path, "valid_for"], "a critical step never expires")
        template = spec.get("template", step_id)
        steps[step_id] = Step(
            id=step_id,
            title=_text(ctx, [*path, "title"], spec.get("title")),
            template=_ident(ctx, [*path, "template"], template),
            when=when,
            channels=cast(tuple[Channel, ...], tuple(channels)),
            channel_mode=mode,
            repeat=repeat,
            valid_for=valid_for,
            critical=critical,
            catch_up=catch_up,
            attach_calendar=attach_calendar,
        )
    return tuple(steps.values())


class RegimenRegistry:
    """All regimens in a folder, by id."""

    def __init__(self, regimens: dict[str, Regimen]) -> None:
        self._regimens = regimens

    @classmethod
    def load(cls, folder: Path) -> RegimenRegistry:
        regimens: dict[str, Regimen] = {}
        for path in sorted(folder.glob("*.yaml")):
            regimen = load_regimen(path)
            if regimen.id != path.stem:
                raise RegimenError(str(path), "id", f"must match the file name ({path.stem!r})")
            regimens[regimen.id] = regimen
        for regimen in regimens.values():
            unknown = sorted((regimen.course.same_as if regimen.course else set()) - set(regimens))
            if unknown:
                raise RegimenError(
                    regimen.source, "course.same_as", f"{unknown[0]!r} is not a loaded regimen"
                )
        return cls(regimens)

    def get(self, regimen_id: str) -> Regimen:
        try:
            return self._regimens[regimen_id]
        except KeyError:
            known = ", ".join(sorted(self._regimens)) or "none"
            raise KeyError(f"unknown regimen {regimen_id!r} (known: {known})") from None

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._regimens.values())

    def ids(self) -> list[str]:
        return sorted(self._regimens)
