"""Read and validate regimen YAML files.

A bad file is refused with its file name, line, key path and the reason. The parts of a file are
read by their own modules: fields (single values), parameters, steps, extras (course, dates,
calendar).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import yaml

from aftercare.regimens.extras import parse_calendar, parse_checkin, parse_course, parse_dates
from aftercare.regimens.fields import (
    MAX_DAYS,
    MAX_DURATION,
    MAX_VERSION,
    Ctx,
    RegimenError,
    ident,
    only,
    refuse_duplicate_keys,
)
from aftercare.regimens.fields import text as text_field
from aftercare.regimens.model import Regimen
from aftercare.regimens.parameters import parse_parameters
from aftercare.regimens.steps import parse_steps

__all__ = [
    "MAX_DAYS",
    "MAX_DURATION",
    "MAX_VERSION",
    "RegimenError",
    "RegimenRegistry",
    "load_regimen",
    "parse_regimen",
]
TOP_KEYS = {
    "id",
    "name",
    "version",
    "parameters",
    "steps",
    "descriptions",
    "course",
    "dates",
    "calendar",
    "check_in",
}


def load_regimen(path: Path) -> Regimen:
    """Load one regimen file, refusing anything malformed."""
    return parse_regimen(path.read_text(encoding="utf-8"), file=str(path))


def _compose(text: str, file: str) -> tuple[yaml.Node | None, Any]:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader), yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise RegimenError(file, "", f"not valid YAML ({exc})", line) from exc
    except RecursionError:
        raise RegimenError(file, "", "not valid YAML (nested too deeply)") from None


def parse_regimen(text: str, *, file: str = "<regimen>") -> Regimen:
    root, data = _compose(text, file)
    ctx = Ctx(file, root)
    refuse_duplicate_keys(ctx, root, [], set())
    if not isinstance(data, dict):
        raise ctx.fail([], "must be a mapping with id, name, version, parameters and steps")
    only(ctx, [], data, TOP_KEYS)
    regimen_id = ident(ctx, ["id"], data.get("id"))
    name = text_field(ctx, ["name"], data.get("name"))
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ctx.fail(["version"], "must be a positive whole number")
    if version > MAX_VERSION:
        raise ctx.fail(["version"], f"must be at most {MAX_VERSION}")
    parameters = parse_parameters(ctx, data.get("parameters") or {})
    steps = parse_steps(ctx, data.get("steps"), parameters)
    calendar = parse_calendar(ctx, data["calendar"], steps) if "calendar" in data else None
    for index, step in enumerate(steps):
        if step.attach_calendar and calendar is None:
            raise ctx.fail(["steps", index, "attach_calendar"], "the regimen has no calendar")
    return Regimen(
        id=regimen_id,
        name=name,
        version=version,
        parameters=parameters,
        steps=steps,
        source=file,
        descriptions=_descriptions(ctx, data.get("descriptions") or {}),
        course=parse_course(ctx, data["course"], regimen_id, steps) if "course" in data else None,
        dates=parse_dates(ctx, data.get("dates") or {}, steps, parameters),
        calendar=calendar,
        checkin=parse_checkin(ctx, data["check_in"], steps) if "check_in" in data else None,
    )


def _descriptions(ctx: Ctx, descriptions: Any) -> dict[str, str]:
    if not isinstance(descriptions, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in descriptions.items()
    ):
        raise ctx.fail(["descriptions"], "must map names to text")
    return cast(dict[str, str], descriptions)


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
