"""Results: medians with min-max, one row per measure next to its baseline, as markdown and JSON."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Summary:
    """The repetitions of one measure."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return float(statistics.median(self.values))

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def as_dict(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "values": list(self.values),
        }


def summary(values: Sequence[float]) -> Summary | None:
    kept = tuple(float(v) for v in values if v is not None)
    return Summary(kept) if kept else None


@dataclass
class Row:
    """One line of the table: a measure of Aftercare next to its baseline from the same run."""

    scenario: str
    measure: str
    unit: str
    value: Summary | None
    baseline_name: str = ""
    baseline: Summary | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""
    # Lower is better (lateness, memory): the ratio is still value / baseline.
    lower_is_better: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.value is None or self.baseline is None or self.baseline.median == 0:
            return None
        return self.value.median / self.baseline.median

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["value"] = self.value.as_dict() if self.value else None
        out["baseline"] = self.baseline.as_dict() if self.baseline else None
        out["ratio"] = self.ratio
        return out


def _number(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def cell(value: Summary | None, unit: str) -> str:
    if value is None:
        return "n/a"
    text = _number(value.median)
    if len(value.values) > 1:
        text += f" ({_number(value.low)}–{_number(value.high)})"
    return f"{text} {unit}".strip()


def _met(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: ""}[met]


def markdown(rows: Sequence[Row]) -> str:
    """The table: medians with min-max, each next to its baseline and the ratio."""
    lines = [
        "| scenario | Aftercare | median (min–max) | baseline | median (min–max) | ratio "
        "| target | |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}×"
        lines.append(
            "| "
            + " | ".join(
                [
                    row.scenario,
                    row.measure + (f" — {row.note}" if row.note else ""),
                    cell(row.value, row.unit),
                    row.baseline_name,
                    cell(row.baseline, row.unit) if row.baseline_name else "",
                    ratio,
                    row.target,
                    _met(row.met),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def write_json(path: Path, *, meta: dict[str, Any], rows: Sequence[Row], raw: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"meta": meta, "rows": [row.as_dict() for row in rows], "scenarios": raw}
    path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
