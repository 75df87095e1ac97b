"""Record a treatment session: validate, plan, and store the session with all its reminders."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from weakref import WeakKeyDictionary

import psycopg
from sqlalchemy import Connection, Dialect, Table, insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, make_transient_to_detached

from aftercare.planning.planner import PlannedReminder, plan
from aftercare.planning.quiet import QuietHours
from aftercare.regimens.loader import RegimenRegistry
from aftercare.regimens.model import Channel, ParameterError, Regimen
from aftercare.sessions.pgcopy import (
    REMINDER_COLUMNS,
    SKIPPED_REASON,
    column_types,
    copy_reminders,
    insert_session,
    reminder_types,
    sql_names,
)
from aftercare.sessions.validation import (
    FieldError,
    ValidationFailed,
    clean_channels,
    clean_email,
    clean_instant,
    clean_name,
    clean_phone,
    clean_timezone,
)
from aftercare.storage.models import Base, Patient, Reminder, TreatmentSession

MAX_FUTURE = timedelta(days=1)


@dataclass
class SessionRequest:
    """What staff enter for one session (raw; validated by :func:`validate_request`)."""

    name: object = None
    phone: object = None
    email: object = None
    timezone: object = None
    channels: object = ("sms", "email")
    treated_at: object = None
    regimen: object = "micro-sclerotherapy"
    parameters: Mapping[str, object] = field(default_factory=dict)
    consent: object = True
    contraindications_checked: object = True
    # Discreet messages for this patient: True, False, or None for the clinic's default.
    discreet: object = None


@dataclass(frozen=True)
class ValidSession:
    name: str
    phone: str | None
    email: str | None
    timezone: str
    channels: tuple[Channel, ...]
    treated_at: datetime
    regimen: Regimen
    parameters: dict[str, int | str]
    plan: list[PlannedReminder]
    discreet: bool | None = None


def _collect(errors: list[FieldError], func: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return func(*args, **kwargs)
    except ValidationFailed as exc:
        errors.extend(exc.errors)
        return None


def validate_request(
    request: SessionRequest,
    *,
    registry: RegimenRegistry,
    quiet: QuietHours,
    now: datetime,
    patient_loc: tuple[str, ...] = ("patient",),
) -> ValidSession:
    """Check every field and plan the regimen; raise ValidationFailed naming each bad field."""
    errors: list[FieldError] = []
    name = _collect(errors, clean_name, request.name, (*patient_loc, "name"))
    channels = _collect(errors, clean_channels, request.channels, (*patient_loc, "channels")) or ()
    phone = email = None
    if "sms" in channels or request.phone not in (None, ""):
        phone = _collect(errors, clean_phone, request.phone, (*patient_loc, "phone"))
    if "email" in channels or request.email not in (None, ""):
        email = _collect(errors, clean_email, request.email, (*patient_loc, "email"))
    zone = _collect(errors, clean_timezone, request.timezone, (*patient_loc, "timezone"))
    treated_at = _collect(errors, clean_instant, request.treated_at, ("treated_at",))
    if request.discreet is not None and not isinstance(request.discreet, bool):
        errors.append(FieldError((*patient_loc, "discreet"), "must be true, false or null"))
    if request.consent is not True:
        errors.append(
            FieldError(("consent",), "the patient's consent to messages must be confirmed")
        )
    if request.contraindications_checked is not True:
        errors.append(
            FieldError(
                ("contraindications_checked",),
                "staff must confirm the contraindication checklist before enrolment",
            )
        )
    regimen = None
    if not isinstance(request.regimen, str):
        errors.append(FieldError(("regimen",), "is required"))
    else:
        try:
            regimen = registry.get(request.regimen)
        except KeyError as exc:
            errors.append(FieldError(("regimen",), str(exc.args[0])))
    parameters: dict[str, int | str] = {}
    if regimen is not None:
        if not isinstance(request.parameters, Mapping):
            errors.append(FieldError(("parameters",), "must be an object"))
        else:
            try:
                parameters = regimen.resolve_parameters(dict(request.parameters))
            except ParameterError as exc:
                errors.append(FieldError(("parameters", exc.name), exc.reason))
    if treated_at is not None and treated_at > now + MAX_FUTURE:
        errors.append(FieldError(("treated_at",), "is more than a day in the future"))
    if errors:
        raise ValidationFailed(errors)
    assert regimen is not None
    assert treated_at is not None
    planned = plan(
        regimen=regimen,
        treated_at=treated_at,
        timezone=zone,
        parameters=parameters,
        channels=channels,
        quiet=quiet,
        recorded_at=max(now, treated_at),
    )
    if _regimen_over(planned, regimen):
        raise ValidationFailed(
            [
                FieldError(
                    ("treated_at",), "is older than the regimen: its aftercare is already over"
                )
            ]
        )
    return ValidSession(
        name=name,
        phone=phone,
        email=email,
        timezone=zone,
        channels=channels,
        treated_at=treated_at,
        regimen=regimen,
        parameters=parameters,
        plan=planned,
        discreet=request.discreet if isinstance(request.discreet, bool) else None,
    )


def _regimen_over(planned: list[PlannedReminder], regimen: Regimen) -> bool:
    """Nothing left to do but the catch-up-always steps (welcome, warnings): too late."""
    always = {s.id for s in regimen.steps if s.catch_up == "always"}
    return all(r.state == "skipped" or r.step in always for r in planned)


def patient_values(valid: ValidSession, now: datetime) -> dict[str, Any]:
    """A new patient's row, as every enrolment path inserts it."""
    return {
        "public_id": secrets.token_hex(16),
        "name": valid.name,
        "phone": valid.phone,
        "email": valid.email,
        "timezone": valid.timezone,
        "channels": ",".join(valid.channels),
        "discreet": valid.discreet,
        "created_at": now,
    }


def session_values(
    valid: ValidSession, patient_id: int | None, now: datetime, *, created_by_id: int | None = None
) -> dict[str, Any]:
    """A new session's row, as every enrolment path inserts it."""
    return {
        "patient_id": patient_id,
        "regimen_id": valid.regimen.id,
        "regimen_version": valid.regimen.version,
        "treated_at": valid.treated_at,
        "recorded_at": now,
        "timezone": valid.timezone,
        "parameters": dict(valid.parameters),
        "channels": ",".join(valid.channels),
        "status": "active",
        "consent": True,
        "contraindications_checked": True,
        "created_by_id": created_by_id,
    }


def record_session(
    *,
    db_session: Session,
    valid: ValidSession,
    now: datetime,
    patient: Patient | None = None,
    created_by_id: int | None = None,
) -> TreatmentSession:
    """Store the patient (unless given), the session and every planned reminder; no commit.

    The rows are not written through the unit of work: building the instrumented objects and
    flushing them cost most of an enrolment. On PostgreSQL the new patient and the session are
    one statement and the reminders one binary COPY, on the driver's cursor (each statement is
    a round trip); on SQLite the three INSERTs go to the driver, bound as Core binds them
    (Core's work per statement and per row was half of storing a session there); any other
    backend gets Core INSERTs. The session comes back as a persistent ORM object holding
    exactly what was inserted (no query to read it back); its ``reminders`` are loaded from
    the database if asked for.
    """
    connection = db_session.connection()
    if patient is not None:
        db_session.flush()
    new_patient = patient_values(valid, now) if patient is None else None
    values = session_values(
        valid, None if patient is None else patient.id, now, created_by_id=created_by_id
    )
    driver = connection.connection.driver_connection
    if isinstance(driver, psycopg.Connection):
        with _as_core_errors(connection), driver.cursor() as cursor:
            session_id, values["patient_id"] = insert_session(cursor, values, patient=new_patient)
            if valid.plan:
                copy_reminders(cursor, [(session_id, valid.plan)], now, _reminder_types(cursor))
    elif isinstance(driver, sqlite3.Connection):
        dialect = connection.dialect
        with _as_core_errors(connection):
            if new_patient is not None:
                values["patient_id"] = _insert_sqlite(driver, dialect, Patient, new_patient)
            session_id = _insert_sqlite(driver, dialect, TreatmentSession, values)
            if valid.plan:
                _insert_reminders_sqlite(driver, dialect, session_id, valid.plan, now)
    else:
        if new_patient is not None:
            values["patient_id"] = connection.execute(
                insert(Patient).returning(Patient.id), new_patient
            ).scalar_one()
        session_id = connection.execute(
            insert(TreatmentSession).returning(TreatmentSession.id), values
        ).scalar_one()
        if valid.plan:
            connection.execute(insert(Reminder), reminder_rows(session_id, valid.plan, now))
    # Every column set (those the INSERT left NULL too), so no attribute is expired and reading
    # one never queries; then attached as if loaded.
    session = TreatmentSession(
        id=session_id,
        **values,
        checkin_answer=None,
        checkin_answered_at=None,
        paused_at=None,
        cancelled_at=None,
    )
    make_transient_to_detached(session)
    db_session.add(session)
    return session


@contextmanager
def _as_core_errors(connection: Connection) -> Iterator[None]:
    """An error from the driver's cursor raised as Core raises it (``IntegrityError``,
    ``OperationalError``, ...), the connection invalidated if the error says it is gone."""
    dialect = connection.dialect
    dbapi_error = dialect.loaded_dbapi.Error
    try:
        yield
    except dbapi_error as exc:
        gone = dialect.is_disconnect(exc, connection.connection.dbapi_connection, None)
        if gone:
            connection.invalidate(exc)
        raise DBAPIError.instance(
            None, None, exc, dbapi_error, connection_invalidated=gone, dialect=dialect
        ) from exc


# Binary COPY needs the reminders' column types: read from the catalog once per connection.
_types_by_connection: WeakKeyDictionary[psycopg.Connection[Any], list[str]] = WeakKeyDictionary()


def _reminder_types(cursor: psycopg.Cursor[Any]) -> list[str]:
    types = _types_by_connection.get(cursor.connection)
    if types is None:
        types = reminder_types(column_types(cursor, "reminders"))
        _types_by_connection[cursor.connection] = types
    return types


def reminder_rows(
    session_id: int, plan: Iterable[PlannedReminder], now: datetime
) -> list[dict[str, Any]]:
    """The ``reminders`` rows of a planned session, every column the table has a value for
    (enrolment and CSV import both store these)."""
    return [
        {
            "session_id": session_id,
            "step": item.step,
            "occurrence": item.occurrence,
            "channel": item.channel,
            "template": item.template,
            "nominal_at": item.nominal_utc,
            "due_at": item.due_utc,
            "expires_at": item.expires_utc,
            "critical": item.critical,
            "state": item.state,
            "attempts": 0,
            "updated_at": now,
            "reason": SKIPPED_REASON if item.state == "skipped" else None,
        }
        for item in plan
    ]


# SQLite: the rows go to the driver, bound by the columns' own processors (as Core binds them)
# without Core's work per statement and per row, about half of storing a session there.

_Processor = Callable[[Any], Any] | None
_processors: WeakKeyDictionary[Dialect, dict[str, dict[str, _Processor]]] = WeakKeyDictionary()


def _bind_processors(dialect: Dialect, table: Table) -> dict[str, _Processor]:
    """Each column's bind processor on this dialect, as Core applies it to an INSERT."""
    by_table = _processors.setdefault(dialect, {})
    processors = by_table.get(table.name)
    if processors is None:
        processors = by_table[table.name] = {
            c.name: c.type.dialect_impl(dialect).bind_processor(dialect) for c in table.columns
        }
    return processors


def _table(model: type[Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


def _insert_sqlite(
    driver: sqlite3.Connection, dialect: Dialect, model: type[Base], values: dict[str, Any]
) -> int:
    """INSERT one row of ``model``'s table from ``values``; its new id."""
    table = _table(model)
    processors = _bind_processors(dialect, table)
    sql = _insert_sql(table.name, tuple(values))
    row = driver.execute(
        sql, [v if (p := processors[c]) is None else p(v) for c, v in values.items()]
    ).fetchone()
    assert row is not None
    return int(row[0])


@lru_cache(maxsize=8)
def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    # The names are a model's table and the keys of patient_values or session_values.
    return (
        f"INSERT INTO {sql_names((table,))} ({sql_names(columns)}) "  # noqa: S608  # nosec B608
        f"VALUES ({', '.join('?' * len(columns))}) RETURNING id"
    )


_SQLITE_INSERT_REMINDERS = (
    f"INSERT INTO reminders ({sql_names(tuple(REMINDER_COLUMNS))}) "  # noqa: S608  # nosec B608
    f"VALUES ({', '.join('?' * len(REMINDER_COLUMNS))})"
)


def _insert_reminders_sqlite(
    driver: sqlite3.Connection,
    dialect: Dialect,
    session_id: int,
    plan: Sequence[PlannedReminder],
    now: datetime,
) -> None:
    """``reminder_rows`` as Core would insert them. A plan repeats few distinct instants
    (~70 of ~140 a session), so each is converted once."""
    processors = _bind_processors(dialect, _table(Reminder))
    process = _utc_text(dialect)
    critical = processors["critical"] or bool
    # The planner's instants are all UTC, where equal datetimes are the same instant.
    stored: dict[datetime | None, Any] = {None: None}

    def at(instant: datetime | None) -> Any:
        value = stored.get(instant)
        if value is None and instant is not None:
            value = stored[instant] = process(instant)
        return value

    updated_at = process(now)
    driver.executemany(
        _SQLITE_INSERT_REMINDERS,
        [
            (
                session_id,
                item.step,
                item.occurrence,
                item.channel,
                item.template,
                at(item.nominal_utc),
                at(item.due_utc),
                at(item.expires_utc),
                critical(item.critical),
                item.state,
                0,
                updated_at,
                SKIPPED_REASON if item.state == "skipped" else None,
            )
            for item in plan
        ],
    )


_utc_texts: WeakKeyDictionary[Dialect, Callable[[datetime], Any]] = WeakKeyDictionary()
_PROBES = (datetime(2026, 3, 2, 10, 30, tzinfo=UTC), datetime(987, 6, 5, 4, 3, 2, 1, tzinfo=UTC))


def _utc_text(dialect: Dialect) -> Callable[[datetime], Any]:
    """How a UTCDateTime column binds a datetime on SQLite: for one in UTC (every instant the
    planner makes), its text written directly (half the time of the two processors); any
    other goes through the processors. Used only if it writes what they write."""
    known = _utc_texts.get(dialect)
    if known is not None:
        return known
    process = _bind_processors(dialect, _table(Reminder))["due_at"]
    assert process is not None

    def text(instant: datetime) -> Any:
        if instant.tzinfo is UTC:
            return instant.replace(tzinfo=None).isoformat(" ", "microseconds")
        return process(instant)

    chosen = text if all(text(p) == process(p) for p in _PROBES) else process
    _utc_texts[dialect] = chosen
    return chosen
