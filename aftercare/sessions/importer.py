"""Bulk enrolment from a CSV file: read it, validate every row as enrolment does, then store.

Every row goes through :func:`~aftercare.sessions.service.validate_request` (the validation of
the API and of ``aftercare enrol``) and so through the pure planner. Nothing from a bad row is
stored; the good rows are stored in chunks of a thousand sessions, one transaction per chunk,
so a session is never half stored. Storing writes patients, sessions, reminders and audit events
with Core multi-row INSERTs, or binary COPY on PostgreSQL: one ORM object per reminder would cost
more than planning it.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Json, Jsonb
from sqlalchemy import Connection, func, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from aftercare.planning.quiet import QuietHours
from aftercare.regimens.loader import RegimenRegistry
from aftercare.sessions import course
from aftercare.sessions.pgcopy import (
    column_types,
    copy_reminders,
    copy_sql,
    reminder_types,
    sent_as,
)
from aftercare.sessions.service import (
    SessionRequest,
    ValidSession,
    patient_values,
    reminder_rows,
    session_values,
    validate_request,
)
from aftercare.sessions.validation import FieldError, ValidationFailed
from aftercare.storage.db import Database
from aftercare.storage.models import AuditEvent, Patient, Reminder, TreatmentSession

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
CHUNK_SIZE = 1000
# Spreadsheets run a cell that starts with one of these as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

Progress = Callable[[int], None]
ContactKey = tuple[str, str, datetime]


class ImportFileError(ValueError):
    """The file as a whole cannot be imported (encoding, CSV structure, header); nothing stored."""


class ImportInterrupted(RuntimeError):
    """The database failed while storing; the chunks before ``stored`` sessions are committed."""

    def __init__(self, stored: int, reason: str) -> None:
        super().__init__(reason)
        self.stored = stored
        self.reason = reason


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


@dataclass(frozen=True)
class GoodRow:
    row: int
    valid: ValidSession


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


# Storing -------------------------------------------------------------------------------------


def store(
    good: Sequence[GoodRow],
    *,
    db: Database,
    now: datetime,
    chunk_size: int = CHUNK_SIZE,
    progress: Progress | None = None,
    registry: RegimenRegistry | None = None,
) -> int:
    """Store every good row (patient, session, reminders, audit event), one transaction per
    chunk; the number of sessions stored. Raises ImportInterrupted if the database fails.

    A row for a patient already known (stored before, or in an earlier row: same phone, or
    email when there is none, and name) adds its session to that patient, whose course is then
    settled (a later session supersedes what an earlier one has not sent). ``registry`` names
    the regimens of sessions already stored; by default only the file's own are known."""
    if registry is None:
        registry = RegimenRegistry({g.valid.regimen.id: g.valid.regimen for g in good})
    stored = 0
    for start in range(0, len(good), chunk_size):
        chunk = good[start : start + chunk_size]
        try:
            with db.engine.begin() as connection:
                owners = _owners(connection, chunk)
                if db.is_postgres:
                    _copy_chunk(connection, chunk, owners, now=now)
                else:
                    _insert_chunk(connection, chunk, owners, now=now)
                _settle(connection, chunk, owners, registry=registry, now=now)
        except (SQLAlchemyError, psycopg.Error) as exc:
            # The driver's first line only: SQLAlchemy's own text repeats the parameters, which
            # are patient data.
            cause = getattr(exc, "orig", None) or exc
            first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
            raise ImportInterrupted(stored, f"{type(cause).__name__}: {first}") from exc
        stored += len(chunk)
        if progress is not None:
            progress(len(chunk))
    return stored


@dataclass
class _Owners:
    """Whose each row of a chunk is: a known patient's id, or the index of a new patient (the
    first row of the chunk for that person creates them)."""

    known: list[int | None]
    new_of: list[int | None]
    new_rows: list[GoodRow]
    # Filled in once the new patients are stored: each row's patient id.
    patient_ids: list[int] = field(default_factory=list)

    def resolve(self, new_ids: Sequence[int]) -> list[int]:
        ids: list[int] = []
        for known, index in zip(self.known, self.new_of, strict=True):
            if known is not None:
                ids.append(known)
            else:
                assert index is not None
                ids.append(new_ids[index])
        self.patient_ids = ids
        return ids


def _person(valid: ValidSession) -> tuple[str, str, str] | None:
    if valid.phone:
        return ("phone", valid.phone, course.name_key(valid.name))
    if valid.email:
        return ("email", valid.email.casefold(), course.name_key(valid.name))
    return None


def _owners(connection: Connection, chunk: Sequence[GoodRow]) -> _Owners:
    """Match each row to a known patient (one query for the chunk), or to the new patient an
    earlier row of the chunk creates."""
    phones = {g.valid.phone for g in chunk if g.valid.phone}
    emails = {g.valid.email.casefold() for g in chunk if not g.valid.phone and g.valid.email}
    stored: dict[tuple[str, str, str], int] = {}
    if phones or emails:
        rows = connection.execute(
            select(Patient.id, Patient.name, Patient.phone, Patient.email)
            .where(
                or_(Patient.phone.in_(phones), func.lower(Patient.email).in_(emails)),
                Patient.erased_at.is_(None),
            )
            .order_by(Patient.id.desc())
        )
        for pid, name, phone, email in rows:
            if phone:
                stored[("phone", phone, course.name_key(name))] = pid
            elif email:
                stored[("email", email.casefold(), course.name_key(name))] = pid
    owners = _Owners(known=[], new_of=[], new_rows=[])
    created: dict[tuple[str, str, str], int] = {}
    for good in chunk:
        person = _person(good.valid)
        if person is not None and person in stored:
            owners.known.append(stored[person])
            owners.new_of.append(None)
        elif person is not None and person in created:
            owners.known.append(None)
            owners.new_of.append(created[person])
        else:
            if person is not None:
                created[person] = len(owners.new_rows)
            owners.known.append(None)
            owners.new_of.append(len(owners.new_rows))
            owners.new_rows.append(good)
    return owners


def _settle(
    connection: Connection,
    chunk: Sequence[GoodRow],
    owners: _Owners,
    *,
    registry: RegimenRegistry,
    now: datetime,
) -> None:
    """Settle the course of every patient with more than one session after this chunk."""
    counts = Counter(owners.patient_ids)
    known = {pid for pid in owners.known if pid is not None}
    for patient_id in sorted(pid for pid, n in counts.items() if n > 1 or pid in known):
        rows = [g for g, pid in zip(chunk, owners.patient_ids, strict=True) if pid == patient_id]
        if patient_id in known:
            _complete_contact(connection, patient_id, rows)
        course.settle_course(connection, patient_id=patient_id, registry=registry, now=now)


def _complete_contact(connection: Connection, patient_id: int, rows: Sequence[GoodRow]) -> None:
    """A known patient gains a contact detail or channel their new sessions need."""
    patient = connection.execute(
        select(Patient.phone, Patient.email, Patient.channels).where(Patient.id == patient_id)
    ).one()
    chosen = [c for c in patient.channels.split(",") if c]
    for good in rows:
        chosen += [c for c in good.valid.channels if c not in chosen]
    values: dict[str, Any] = {"channels": ",".join(chosen)}
    if patient.phone is None:
        values["phone"] = next((g.valid.phone for g in rows if g.valid.phone), None)
    if patient.email is None:
        values["email"] = next((g.valid.email for g in rows if g.valid.email), None)
    connection.execute(update(Patient).where(Patient.id == patient_id).values(**values))


def _audit_values(
    good: GoodRow, patient_id: int, session_id: int, now: datetime, *, matched: bool
) -> dict[str, Any]:
    return {
        "at": now,
        "actor_id": None,
        "action": "import",
        "patient_id": patient_id,
        "session_id": session_id,
        "detail": {
            "regimen": good.valid.regimen.id,
            "channels": list(good.valid.channels),
            "row": good.row,
            "matched_existing": matched,
        },
    }


def _insert_chunk(
    connection: Connection, chunk: Sequence[GoodRow], owners: _Owners, *, now: datetime
) -> None:
    """Any backend: multi-row INSERTs, RETURNING the new ids in the rows' order."""
    new_ids = (
        connection.scalars(
            insert(Patient).returning(Patient.id, sort_by_parameter_order=True),
            [patient_values(good.valid, now) for good in owners.new_rows],
        ).all()
        if owners.new_rows
        else []
    )
    patient_ids = owners.resolve(new_ids)
    session_ids = connection.scalars(
        insert(TreatmentSession).returning(TreatmentSession.id, sort_by_parameter_order=True),
        [
            session_values(good.valid, patient_id, now)
            for good, patient_id in zip(chunk, patient_ids, strict=True)
        ],
    ).all()
    connection.execute(
        insert(Reminder),
        [
            row
            for session_id, good in zip(session_ids, chunk, strict=True)
            for row in reminder_rows(session_id, good.valid.plan, now)
        ],
    )
    connection.execute(
        insert(AuditEvent),
        [
            _audit_values(good, patient_id, session_id, now, matched=known is not None)
            for good, patient_id, session_id, known in zip(
                chunk, patient_ids, session_ids, owners.known, strict=True
            )
        ],
    )


# PostgreSQL: binary COPY of every table. A multi-row INSERT of a thousand rows is a statement
# of ten thousand placeholders that the driver parses in Python; COPY sends the rows as they are,
# each encoded in C, and takes the new ids from the sequences beforehand.


def _copy_chunk(
    connection: Connection, chunk: Sequence[GoodRow], owners: _Owners, *, now: datetime
) -> None:
    driver = connection.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    with driver.cursor() as cursor:
        new_ids = _next_ids(cursor, "patients", len(owners.new_rows)) if owners.new_rows else []
        patient_ids = owners.resolve(new_ids)
        session_ids = _next_ids(cursor, "treatment_sessions", len(chunk))
        if owners.new_rows:
            _copy_values(
                cursor,
                "patients",
                [
                    {"id": patient_id, **patient_values(good.valid, now)}
                    for good, patient_id in zip(owners.new_rows, new_ids, strict=True)
                ],
            )
        _copy_values(
            cursor,
            "treatment_sessions",
            [
                {"id": session_id, **session_values(good.valid, patient_id, now)}
                for good, patient_id, session_id in zip(
                    chunk, patient_ids, session_ids, strict=True
                )
            ],
        )
        _copy_reminders(cursor, zip(session_ids, chunk, strict=True), now)
        _copy_values(
            cursor,
            "audit_log",
            [
                _audit_values(good, patient_id, session_id, now, matched=known is not None)
                for good, patient_id, session_id, known in zip(
                    chunk, patient_ids, session_ids, owners.known, strict=True
                )
            ],
        )


def _next_ids(cursor: psycopg.Cursor[Any], table: str, count: int) -> list[int]:
    cursor.execute(
        "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
        (table, count),
    )
    return [row[0] for row in cursor.fetchall()]


_JSON: dict[str, type[Json] | type[Jsonb]] = {"json": Json, "jsonb": Jsonb}


def _copy_values(cursor: psycopg.Cursor[Any], table: str, rows: list[dict[str, Any]]) -> None:
    """COPY rows given as the dicts the INSERT path uses, so both paths store the same values."""
    columns = list(rows[0])
    types = column_types(cursor, table)
    kinds = [types[column] for column in columns]
    with cursor.copy(copy_sql(table, columns)) as copy:
        copy.set_types([sent_as(kind) for kind in kinds])
        for row in rows:
            copy.write_row(
                [
                    _JSON[kind](value) if kind in _JSON and value is not None else value
                    for value, kind in zip(row.values(), kinds, strict=True)
                ]
            )


def _copy_reminders(
    cursor: psycopg.Cursor[Any], pairs: Iterable[tuple[int, GoodRow]], now: datetime
) -> None:
    """The bulk of the rows (about 40 a session), written as tuples rather than dicts; the
    test comparing import with enrolment on PostgreSQL pins them to ``reminder_rows``."""
    types = reminder_types(column_types(cursor, "reminders"))
    copy_reminders(
        cursor, ((session_id, good.valid.plan) for session_id, good in pairs), now, types
    )
