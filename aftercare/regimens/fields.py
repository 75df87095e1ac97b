"""The building blocks of reading a regimen file: where a fault is (file, line, key path) and
the checks of single values (identifiers, text, times of day, durations, true/false)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import time, timedelta
from typing import Any

import yaml

Path = list[str | int]

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
class Ctx:
    """The file being read: names it and finds the line of a key path in a fault."""

    file: str
    root: yaml.Node | None

    def fail(self, path: Path, reason: str) -> RegimenError:
        return RegimenError(self.file, format_path(path), reason, line_of(self.root, path))


def format_path(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _child(node: yaml.Node, part: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        match = [v for k, v in node.value if getattr(k, "value", None) == part]
        return match[0] if match else None
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        child: yaml.Node = node.value[part]
        return child
    return None


def line_of(node: yaml.Node | None, path: Path) -> int | None:
    """The 1-based line of the deepest node on ``path`` that exists."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in path:
        node = _child(node, part) if node is not None else None
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


def refuse_duplicate_keys(ctx: Ctx, node: yaml.Node | None, path: Path, seen: set[int]) -> None:
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
                    ctx.file, format_path([*path, name]), "duplicate key", key.start_mark.line + 1
                )
            keys.add(name)
            refuse_duplicate_keys(ctx, value, [*path, str(name)], seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            refuse_duplicate_keys(ctx, item, [*path, index], seen)


def only(ctx: Ctx, path: Path, data: dict[str, Any], allowed: set[str]) -> None:
    for key in data:
        if key not in allowed:
            raise ctx.fail(
                [*path, str(key)], f"unknown key (allowed: {', '.join(sorted(allowed))})"
            )


def mapping(ctx: Ctx, path: Path, value: Any, allowed: set[str], shape: str) -> dict[str, Any]:
    """``value`` as a mapping with only the ``allowed`` keys (``shape`` says what it should be)."""
    if not isinstance(value, dict):
        raise ctx.fail(path, f"must be a mapping: {shape}")
    only(ctx, path, value, allowed)
    return value


def ident(ctx: Ctx, path: Path, value: Any) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise ctx.fail(path, "must be a lower-case identifier like 'my-step'")
    return value


def text(ctx: Ctx, path: Path, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ctx.fail(path, "must be non-empty text")
    if any(unicodedata.category(ch) in {"Cc", "Cf"} and ch != "\n" for ch in value):
        raise ctx.fail(path, "contains control or invisible characters")
    return value.strip()


def time_of_day(ctx: Ctx, path: Path, value: Any) -> time:
    match = _TIME.match(value) if isinstance(value, str) else None
    if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise ctx.fail(path, "must be a local time of day as HH:MM (quote it in YAML)")
    return time(int(match.group(1)), int(match.group(2)))


def duration(ctx: Ctx, path: Path, value: Any) -> timedelta:
    match = _DURATION.match(value.strip()) if isinstance(value, str) else None
    if not match:
        raise ctx.fail(path, "must be a duration such as '30m', '72h' or '3d'")
    amount, unit = int(match.group(1)), match.group(2)
    if amount > {"m": 24 * 60, "h": 24, "d": 1}[unit] * MAX_DAYS:
        raise ctx.fail(path, f"must be at most {MAX_DAYS} days")
    return {"m": timedelta(minutes=amount), "h": timedelta(hours=amount)}.get(
        unit, timedelta(days=amount)
    )


def flag(ctx: Ctx, path: Path, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ctx.fail(path, "must be true or false")
    return value


def one_of(ctx: Ctx, path: Path, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ctx.fail(path, "must be " + " or ".join(repr(a) for a in allowed))
    return str(value)


def whole(ctx: Ctx, path: Path, value: Any, *, low: int, high: int) -> int:
    """A whole number from ``low`` to ``high``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ctx.fail(
            path, "must be a positive whole number" if low > 0 else "must not be negative"
        )
    if value > high:
        raise ctx.fail(path, f"must be at most {high}")
    return value
