"""How a regimen reads on the staff pages: step titles, parameter controls and summaries, the
preview's rows, and the time zone names offered."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Final

from aftercare.planning.planner import PlannedReminder
from aftercare.regimens.model import Parameter, Regimen
from aftercare.sessions import zones


@dataclass(frozen=True)
class PreviewRow:
    due: datetime
    title: str
    channels: list[str]
    skipped: bool
    step: str = ""
    occurrence: int = 0


def preview_rows(planned: Sequence[PlannedReminder], regimen: Regimen) -> list[PreviewRow]:
    """One row per message and time; a message sent by SMS and email at once is one row."""
    counts: dict[str, int] = {}
    for item in planned:
        counts[item.step] = max(counts.get(item.step, 0), item.occurrence + 1)
    order = {step.id: index for index, step in enumerate(regimen.steps)}
    channel_order = {"sms": 0, "email": 1}
    rows: dict[tuple[str, int, datetime, str], PreviewRow] = {}
    for item in sorted(
        planned,
        key=lambda p: (p.due_utc, order.get(p.step, 0), channel_order.get(p.channel, 2)),
    ):
        key = (item.step, item.occurrence, item.due_utc, item.state)
        if key not in rows:
            title = step_title(regimen, item.step, item.occurrence, counts)
            rows[key] = PreviewRow(
                item.due_utc, title, [], item.state == "skipped", item.step, item.occurrence
            )
        rows[key].channels.append(item.channel)
    return list(rows.values())


def step_title(regimen: Regimen | None, step: str, occurrence: int, counts: dict[str, int]) -> str:
    """The step's title, with "(3 of 14)" for a repeated step."""
    try:
        title = regimen.step(step).title if regimen else step
    except KeyError:
        title = step
    total = counts.get(step, 1)
    return f"{title} ({occurrence + 1} of {total})" if total > 1 else title


@dataclass(frozen=True)
class ParamField:
    name: str
    label: str
    widget: str  # radio | select
    options: list[tuple[str, str]]
    value: str


def option_text(parameter: Parameter, value: int | str) -> str:
    if parameter.name == "daily_days" and isinstance(value, int):
        weeks = value // 7
        return f"{value} days ({weeks} week{'s' if weeks != 1 else ''})"
    if parameter.name == "checkin_week":
        return f"Week {value}"
    return str(value).replace("-", " ").replace("_", " ").capitalize()


SHORT_LABELS: Final = {
    "daily_days": "Daytime wear",
    "checkin_week": "Check-in",
    "garment": "Garment",
}


def param_summary(regimen: Regimen | None, parameters: dict[str, object]) -> list[str]:
    """``Daytime wear: 7 days (1 week)``, one string per parameter of a stored session."""
    out = []
    for name, value in sorted(parameters.items()):
        p = regimen.parameters.get(name) if regimen else None
        if p is None or not isinstance(value, int | str):
            out.append(f"{name.replace('_', ' ')}: {value}")
        else:
            out.append(f"{SHORT_LABELS.get(name, p.label)}: {option_text(p, value)}")
    return out


def param_fields(regimen: Regimen | None, chosen: dict[str, str]) -> list[ParamField]:
    """The form controls of a regimen's parameters, with the chosen (or default) values."""
    if regimen is None:
        return []
    out = []
    for p in regimen.parameters.values():
        choices: Sequence[int | str] = p.choices or (
            range(p.minimum, p.maximum + 1)
            if p.minimum is not None and p.maximum is not None
            else ()
        )
        if not choices:
            continue
        widget = "radio" if len(choices) <= 3 else "select"
        options = [(str(c), option_text(p, c)) for c in choices]
        out.append(ParamField(p.name, p.label, widget, options, chosen.get(p.name, str(p.default))))
    return out


@lru_cache(maxsize=1)
def zone_names() -> list[str]:
    """The zones the time zone field suggests (each one valid)."""
    return list(zones.zone_names())


def typed_zone(text: str) -> str:
    """The zone field as typed, a city read as its zone ("London" -> "Europe/London"); anything
    else is left for the validation to name."""
    return (zones.zone_for(text) if text else None) or text
