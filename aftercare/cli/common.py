"""What the ``aftercare`` commands share: their common options, reading times and zones, and
failing with one line that names the field (exit code 2, nothing changed)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, NoReturn

import typer

from aftercare.cli.typed import Refused, has_offset, read_instant, read_zone
from aftercare.regimens.loader import RegimenError, RegimenRegistry
from aftercare.runtime import Runtime, get_runtime
from aftercare.validation import ValidationFailed, clean_instant

RegimenOpt = Annotated[str, typer.Option("--regimen", metavar="ID", help="Regimen id.")]
TreatedOpt = Annotated[
    str | None,
    typer.Option(
        "--treated-at",
        metavar="TIME",
        help="Treatment time: 'now' (the default), a local time in --timezone "
        "('2026-03-27 15:00' or '27/03/2026 15:00'), or with an offset "
        "(2026-03-27T15:00+00:00).",
    ),
]
ZoneOpt = Annotated[
    str | None,
    typer.Option(
        "--timezone", metavar="ZONE", help="Patient's IANA time zone, e.g. Europe/London."
    ),
]
DailyOpt = Annotated[
    int | None,
    typer.Option("--daily-days", metavar="7|14", help="Daytime wear phase in days (7 or 14)."),
]
CheckinOpt = Annotated[
    int | None, typer.Option("--checkin-week", metavar="N", help="Check-in week (8-13).")
]
ChannelsOpt = Annotated[
    str, typer.Option("--channels", metavar="LIST", help="Comma-separated, any case: sms,email.")
]


def fail(message: str) -> NoReturn:
    """Bad input: one line on stderr, exit code 2, nothing changed."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def fail_validation(exc: ValidationFailed) -> NoReturn:
    """Report the first bad field by its flag's name (``patient.channels.0`` -> ``channels``)."""
    if not exc.errors:
        fail(str(exc))
    first = exc.errors[0]
    names = [part for part in first.loc if isinstance(part, str)]
    field = names[-1].replace("_", "-") if names else "input"
    fail(f"{field}: {first.msg}")


def chosen_zone(timezone: str | None, rt: Runtime) -> str:
    """``--timezone``, else the default zone, as an IANA name (exit 2 when unknown)."""
    try:
        return read_zone(timezone or rt.settings.default_timezone)
    except Refused as exc:
        fail(str(exc))


def instant(text: str, *, zone: str, rt: Runtime, flag: str = "treated-at") -> datetime:
    """``text`` read as an instant: ``now``, a local time in ``zone`` or ISO-8601 with an offset."""
    try:
        value = read_instant(text, zone=zone, now=rt.clock.now(), flag=flag)
        return clean_instant(value, (flag,))
    except Refused as exc:
        fail(str(exc))
    except ValidationFailed as exc:
        fail_validation(exc)


def read_back(text: str | None, value: datetime, *, zone: str, flag: str = "treated-at") -> None:
    """A time typed without an offset, shown back as the ISO-8601 instant it was read as."""
    if text is not None and text.strip() != value.isoformat() and not has_offset(text):
        typer.echo(f"{flag}: {text.strip()} read as {value.isoformat()} ({zone})", err=True)


def load_runtime() -> Runtime:
    """The process's runtime; a bad setting exits 2 naming it."""
    try:
        return get_runtime()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        fail(f"configuration: {' '.join(str(exc).split())}")


def load_registry(rt: Runtime) -> RegimenRegistry:
    """The regimens; a bad regimen file exits 2 naming it."""
    try:
        return rt.registry
    except RegimenError as exc:
        fail(str(exc))


def regimen_parameters(daily_days: int | None, checkin_week: int | None) -> dict[str, object]:
    """The regimen parameters given on the command line."""
    params: dict[str, object] = {}
    if daily_days is not None:
        params["daily_days"] = daily_days
    if checkin_week is not None:
        params["checkin_week"] = checkin_week
    return params


def ensure_schema(rt: Runtime) -> None:
    """Create or check the schema before a command writes (exit 1 when it is outdated)."""
    from aftercare.storage.migrate import SchemaOutdated
    from aftercare.storage.migrate import ensure_schema as ensure

    try:
        ensure(rt.db, auto=rt.settings.embedded)
    except SchemaOutdated as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
