"""Bulk enrolment from a CSV file: read it, validate every row as enrolment does, then store.

Every row goes through :func:`~aftercare.sessions.service.validate_request` (the validation of
the API and of ``aftercare enrol``) and so through the pure planner. Nothing from a bad row is
stored; the good rows are stored in chunks of a thousand sessions, one transaction per chunk,
so a session is never half stored. Storing writes patients, sessions, reminders and audit events
through the bulk writer (:mod:`aftercare.storage.bulk`): one ORM object per reminder would cost
more than planning it.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, select

from aftercare.planning.quiet import QuietHours
from aftercare.regimens.loader import RegimenRegistry
from aftercare.sessions.import_store import GoodRow, Progress
from aftercare.sessions.service import (
    SessionRequest,
    ValidSession,
    validate_request,
)
from aftercare.storage.models import Patient, TreatmentSession
from aftercare.validation import FieldError, ValidationFailed

DEFAULT_REGIMEN = "micro-sclerotherapy"
# Both channels unless the row says otherwise, as the API and ``aftercare enrol`` do: a row with
# a missing phone number is refused rather than silently enrolled for email only.
DEFAULT_CHANNELS = ("sms", "email")
FIXED_COLUMNS = (
    "name",
    "phone",
    "email",
    "timezone",
    "channels",
    "treated_at",
    "regimen",
    "consent",
    "contraindications_checked",
)
REQUIRED_COLUMNS = ("name", "treated_at", "consent", "contraindications_checked")
CONFIRMATIONS = ("consent", "contraindications_checked")
YES = frozenset({"yes", "true", "1"})
# Spreadsheets run a cell that starts with one of these as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

ContactKey = tuple[str, str, datetime]


class ImportFileError(ValueError):
    """The file as a whole cannot be imported (encoding, CSV structure, header); nothing stored."""


@dataclass(frozen=True)
class RowError:
    """One reason a row is refused: its number in the file (the header is row 1) and field."""

    row: int
    field: str
    error: str


@dataclass(frozen=True)
class CsvRows:
    columns: tuple[str, ...]
    rows: list[tuple[int, list[str]]]


@dataclass
class CheckedImport:
    """Every row validated: the good ones (planned, ready to store) and each refusal."""

    rows: int
    good: list[GoodRow] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)

    @property
    def refused(self) -> int:
        return len({e.row for e in self.errors})

    def by_regimen(self) -> dict[str, tuple[int, int]]:
        """Regimen id -> (sessions, reminders that will be sent) among the good rows."""
        sessions: Counter[str] = Counter()
        reminders: Counter[str] = Counter()
        for good in self.good:
            sessions[good.valid.regimen.id] += 1
            reminders[good.valid.regimen.id] += sum(
                1 for r in good.valid.plan if r.state == "scheduled"
            )
        return {key: (sessions[key], reminders[key]) for key in sorted(sessions)}


# Reading -------------------------------------------------------------------------------------


def known_columns(registry: RegimenRegistry) -> tuple[str, ...]:
    """The fixed columns, then every parameter a loaded regimen declares (``daily_days``...)."""
    params = sorted({name for regimen in registry for name in regimen.parameters})
    return FIXED_COLUMNS + tuple(p for p in params if p not in FIXED_COLUMNS)


def read_csv(data: bytes, *, columns: Collection[str]) -> CsvRows:
    """Decode UTF-8 (with or without BOM), parse strictly, check the header; raise
    ImportFileError with one line naming the problem."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ImportFileError(
            f"is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
            "save it as 'CSV UTF-8'"
        ) from None
    if "\x00" in text:
        raise ImportFileError("is not a CSV file (it contains NUL bytes)")
    records = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        numbered = [(number, cells) for number, cells in enumerate(records, start=1)]
    except csv.Error as exc:
        raise ImportFileError(
            f"is not a valid CSV file (record {records.line_num}: {exc})"
        ) from None
    content = [(n, cells) for n, cells in numbered if any(cell.strip() for cell in cells)]
    if not content:
        raise ImportFileError("is empty: its first row must name the columns")
    header_number, header = content[0]
    if header_number != 1:
        raise ImportFileError("starts with a blank line: its first row must name the columns")
    return CsvRows(columns=_check_header(header, columns), rows=content[1:])


def _check_header(header: list[str], known: Collection[str]) -> tuple[str, ...]:
    names = tuple(cell.strip().lower() for cell in header)
    if len(names) == 1 and (";" in names[0] or "\t" in names[0]):
        raise ImportFileError(
            "is not comma-separated (its header has semicolons or tabs): export it as CSV "
            "with commas"
        )
    for index, name in enumerate(names, start=1):
        if not name:
            raise ImportFileError(f"header: column {index} has no name (remove empty columns)")
        if name not in known:
            raise ImportFileError(
                f"header: unknown column {_short(name)!r} (known: {', '.join(known)})"
            )
        if names.count(name) > 1:
            raise ImportFileError(f"header: column {name!r} appears twice")
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        raise ImportFileError(
            f"header: missing column {missing[0]!r} (required: {', '.join(REQUIRED_COLUMNS)})"
        )
    return names


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:40] + "..."


# Validating ----------------------------------------------------------------------------------


def check_rows(
    csv_rows: CsvRows,
    *,
    registry: RegimenRegistry,
    quiet: QuietHours,
    now: datetime,
    default_timezone: str,
    progress: Progress | None = None,
) -> CheckedImport:
    """Validate and plan every row; the second row for the same patient (same phone or email)
    and treatment time is refused as a duplicate."""
    params = [c for c in csv_rows.columns if c not in FIXED_COLUMNS]
    checked = CheckedImport(rows=len(csv_rows.rows))
    seen: dict[ContactKey, int] = {}
    width = len(csv_rows.columns)
    for done, (number, cells) in enumerate(csv_rows.rows, start=1):
        if progress is not None and done % 200 == 0:
            progress(200)
        if len(cells) != width:
            checked.errors.append(
                RowError(number, "row", f"has {len(cells)} cells; the header has {width}")
            )
            continue
        request = _request(
            dict(zip(csv_rows.columns, cells, strict=True)), params, default_timezone
        )
        try:
            valid = validate_request(request, registry=registry, quiet=quiet, now=now)
        except ValidationFailed as exc:
            checked.errors.extend(_row_error(number, e) for e in exc.errors)
            continue
        keys = contact_keys(valid)
        first = next(((key, seen[key]) for key in keys if key in seen), None)
        if first is not None:
            (kind, _, _), row = first
            checked.errors.append(
                RowError(number, kind, f"duplicate of row {row}: same patient and treatment time")
            )
            continue
        seen.update(dict.fromkeys(keys, number))
        checked.good.append(GoodRow(number, valid))
    if progress is not None:
        progress(len(csv_rows.rows) % 200)
    return checked


def _request(cells: dict[str, str], params: list[str], default_timezone: str) -> SessionRequest:
    def given(column: str) -> str | None:
        value = cells.get(column, "")
        return value if value.strip() else None

    channels = given("channels")
    return SessionRequest(
        # Raw cells: validation refuses control characters rather than trimming them away.
        name=given("name"),
        phone=given("phone"),
        email=given("email"),
        timezone=given("timezone") or default_timezone,
        channels=_split(channels) if channels else list(DEFAULT_CHANNELS),
        treated_at=given("treated_at"),
        regimen=(given("regimen") or DEFAULT_REGIMEN).strip(),
        parameters={p: value.strip() for p in params if (value := given(p)) is not None},
        consent=(given("consent") or "").strip().lower() in YES,
        contraindications_checked=(
            (given("contraindications_checked") or "").strip().lower() in YES
        ),
    )


def _split(channels: str) -> list[str]:
    """``sms,email`` (quoted in the file), ``sms;email`` or ``sms email``."""
    return [c for c in re.split(r"[,;\s]+", channels) if c]


def _row_error(number: int, error: FieldError) -> RowError:
    """``patient.phone`` -> ``phone``, ``parameters.daily_days`` -> ``daily_days``: the column."""
    names = [part for part in error.loc if isinstance(part, str)]
    column = names[-1] if names else "row"
    reason = error.msg
    if column in CONFIRMATIONS:
        reason += " (write yes, true or 1)"
    return RowError(number, column, reason)


def contact_keys(valid: ValidSession) -> list[ContactKey]:
    """What makes two rows the same patient's same treatment."""
    at = valid.treated_at.astimezone(UTC)
    keys: list[ContactKey] = []
    if valid.phone:
        keys.append(("phone", valid.phone, at))
    if valid.email:
        keys.append(("email", valid.email.casefold(), at))
    return keys


def refuse_already_stored(checked: CheckedImport, *, connection: Connection) -> None:
    """Refuse good rows whose patient already has a session at that treatment time, so running
    a file again never enrols anyone twice."""
    if not checked.good:
        return
    times = [good.valid.treated_at for good in checked.good]
    query = (
        select(Patient.phone, Patient.email, TreatmentSession.treated_at, TreatmentSession.id)
        .join(TreatmentSession, TreatmentSession.patient_id == Patient.id)
        .where(
            TreatmentSession.treated_at.between(min(times), max(times)),
            Patient.erased_at.is_(None),
        )
    )
    stored: dict[ContactKey, int] = {}
    for phone, email, treated_at, session_id in connection.execute(query):
        at = treated_at.astimezone(UTC)
        if phone:
            stored[("phone", phone, at)] = session_id
        if email:
            stored[("email", email.casefold(), at)] = session_id
    keep: list[GoodRow] = []
    for good in checked.good:
        hit = next((key for key in contact_keys(good.valid) if key in stored), None)
        if hit is None:
            keep.append(good)
            continue
        checked.errors.append(
            RowError(
                good.row,
                hit[0],
                f"already imported: this patient has a session at this treatment time "
                f"(session {stored[hit]})",
            )
        )
    checked.good = keep
    checked.errors.sort(key=lambda e: e.row)


# Reporting -----------------------------------------------------------------------------------


def neutralise(cell: str) -> str:
    """A cell a spreadsheet would run as a formula, quoted so it is shown as text."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def write_report(errors: Iterable[RowError], path: Path) -> None:
    """The per-row error report: ``row,field,error``, one line per reason (header only if none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["row", "field", "error"])
        for error in errors:
            writer.writerow([error.row, neutralise(error.field), neutralise(error.error)])
