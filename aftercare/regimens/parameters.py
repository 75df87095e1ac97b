"""Reading a regimen file's ``parameters``, and the whole numbers that may refer to them."""

from __future__ import annotations

import re
from typing import Any

from aftercare.regimens.fields import MAX_DAYS, Ctx, Path, only
from aftercare.regimens.model import IntRef, Parameter

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_KEYS = {"type", "label", "default", "choices", "min", "max", "says"}


def parse_parameters(ctx: Ctx, data: Any) -> dict[str, Parameter]:
    if not isinstance(data, dict):
        raise ctx.fail(["parameters"], "must map parameter names to their declarations")
    return {str(name): _parameter(ctx, name, spec) for name, spec in data.items()}


def _parameter(ctx: Ctx, name: Any, spec: Any) -> Parameter:
    path: Path = ["parameters", str(name)]
    if not isinstance(name, str) or not _NAME.match(name):
        raise ctx.fail(path, "parameter names are snake_case identifiers")
    if not isinstance(spec, dict):
        raise ctx.fail(path, "must be a mapping with type and default")
    only(ctx, path, spec, _KEYS)
    kind = spec.get("type")
    if kind not in ("int", "str"):
        raise ctx.fail([*path, "type"], "must be 'int' or 'str'")
    choices = spec.get("choices") or []
    if not isinstance(choices, list):
        raise ctx.fail([*path, "choices"], "must be a list")
    minimum, maximum = spec.get("min"), spec.get("max")
    if kind == "int":
        _int_bounds(ctx, path, minimum, maximum, has_choices=bool(choices))
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
        says=_says(ctx, [*path, "says"], spec.get("says") or {}, choices),
    )
    _check_values(ctx, path, parameter, spec)
    return parameter


def _check_values(ctx: Ctx, path: Path, parameter: Parameter, spec: dict[str, Any]) -> None:
    """Each choice, and the default, allowed by the parameter's own declaration."""
    for index, choice in enumerate(parameter.choices):
        try:
            parameter.validate(choice)
        except ValueError as exc:
            raise ctx.fail([*path, "choices", index], f"is not a valid {parameter.kind}") from exc
    if "default" not in spec:
        raise ctx.fail(path, "needs a default")
    try:
        parameter.validate(spec["default"])
    except ValueError as exc:
        raise ctx.fail([*path, "default"], str(exc).split(": ", 1)[-1]) from exc


def _int_bounds(ctx: Ctx, path: Path, minimum: Any, maximum: Any, *, has_choices: bool) -> None:
    for key, bound in (("min", minimum), ("max", maximum)):
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int)):
            raise ctx.fail([*path, key], "must be a whole number")
    if not has_choices and (minimum is None or maximum is None):
        raise ctx.fail(path, "an int parameter needs choices or both min and max")
    if minimum is not None and maximum is not None and minimum > maximum:
        raise ctx.fail([*path, "min"], "is greater than max")


def _says(ctx: Ctx, path: Path, data: Any, choices: list[Any]) -> dict[int | str, str]:
    """``says: {choice: words}``: what a template reads for a choice."""
    if not isinstance(data, dict):
        raise ctx.fail(path, "must map choices to the words a message uses for them")
    for choice, words in data.items():
        if choice not in choices:
            raise ctx.fail([*path, str(choice)], "is not one of the parameter's choices")
        if not isinstance(words, str) or not words.strip():
            raise ctx.fail([*path, str(choice)], "must be non-empty text")
    return {choice: " ".join(words.split()) for choice, words in data.items()}


def parse_intref(ctx: Ctx, path: Path, value: Any, parameters: dict[str, Parameter]) -> IntRef:
    """A whole number of days or times, or ``{param: NAME, times: N, plus: N}``."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ctx.fail(path, "must not be negative")
        if value > MAX_DAYS:
            raise ctx.fail(path, f"must be at most {MAX_DAYS}")
        return IntRef(constant=value)
    if not isinstance(value, dict):
        raise ctx.fail(path, "must be a whole number or {param: NAME, times: N, plus: N}")
    only(ctx, path, value, {"param", "times", "plus"})
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
        raise ctx.fail(path, f"must stay between 0 and {MAX_DAYS} (it ranges {lowest}..{highest})")
    return ref
