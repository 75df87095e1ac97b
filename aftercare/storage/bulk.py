"""The one bulk writer: new patients, sessions, reminders and audit events stored without the
unit of work, each driver its fastest way.

Building instrumented objects and flushing them cost most of an enrolment, and one ORM object
per reminder more than planning it. So on PostgreSQL a new patient and its session are one
statement and rows go by binary COPY on the driver's cursor (:mod:`.pgcopy`); on SQLite the
INSERTs go to the driver, bound as Core binds them (:mod:`.sqlite_rows`); any other backend gets
Core INSERTs. Every reminder row comes from :func:`aftercare.storage.rows.reminder_values`.
Driver errors are raised as Core raises them (``IntegrityError``, ``OperationalError``...).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import Connection, insert
from sqlalchemy.exc import DBAPIError

from aftercare.planning.planner import PlannedReminder
from aftercare.storage import pgcopy, sqlite_rows
from aftercare.storage.models import Base, Patient, Reminder, TreatmentSession
from aftercare.storage.rows import REMINDER_COLUMNS, reminder_rows, reminder_values

Plans = Iterable[tuple[int, Sequence[PlannedReminder]]]


def store_session(
    connection: Connection,
    *,
    session: dict[str, Any],
    patient: dict[str, Any] | None,
    plan: Sequence[PlannedReminder],
    now: datetime,
) -> tuple[int, int]:
    """INSERT a session's row (and first its new ``patient``'s, when given) and its planned
    reminders; (session id, patient id)."""
    driver = connection.connection.driver_connection
    if isinstance(driver, psycopg.Connection):
        with _as_core_errors(connection), driver.cursor() as cursor:
            session_id, patient_id = pgcopy.insert_session(cursor, session, patient=patient)
            if plan:
                _copy_reminders(cursor, [(session_id, plan)], now)
        return session_id, patient_id
    values = dict(session)
    if isinstance(driver, sqlite3.Connection):
        dialect = connection.dialect
        with _as_core_errors(connection):
            if patient is not None:
                values["patient_id"] = sqlite_rows.insert_row(driver, dialect, Patient, patient)
            session_id = sqlite_rows.insert_row(driver, dialect, TreatmentSession, values)
            if plan:
                sqlite_rows.insert_reminders(driver, dialect, _values([(session_id, plan)], now))
        return session_id, values["patient_id"]
    if patient is not None:
        values["patient_id"] = connection.execute(
            insert(Patient).returning(Patient.id), patient
        ).scalar_one()
    session_id = connection.execute(
        insert(TreatmentSession).returning(TreatmentSession.id), values
    ).scalar_one()
    if plan:
        connection.execute(insert(Reminder), reminder_rows(session_id, plan, now))
    return session_id, values["patient_id"]


def add_reminders(
    connection: Connection,
    plans: Plans,
    now: datetime,
    *,
    state: str | None = None,
    reason: str | None = None,
) -> None:
    """INSERT every reminder of each (session id, plan), in plan order (``state`` and ``reason``
    override the plan's, see :func:`~aftercare.storage.rows.reminder_values`)."""
    driver = connection.connection.driver_connection
    if isinstance(driver, psycopg.Connection):
        with _as_core_errors(connection), driver.cursor() as cursor:
            _copy_reminders(cursor, plans, now, state=state, reason=reason)
    elif isinstance(driver, sqlite3.Connection):
        with _as_core_errors(connection):
            sqlite_rows.insert_reminders(
                driver, connection.dialect, _values(plans, now, state=state, reason=reason)
            )
    else:
        rows = [
            dict(zip(REMINDER_COLUMNS, values, strict=True))
            for values in _values(plans, now, state=state, reason=reason)
        ]
        if rows:
            connection.execute(insert(Reminder), rows)


def insert_rows(
    connection: Connection, model: type[Base], rows: Sequence[dict[str, Any]], *, ids: bool
) -> list[int]:
    """INSERT ``rows`` (dicts with the same keys) into ``model``'s table; with ``ids``, their new
    ids in the rows' order (else an empty list)."""
    if not rows:
        return []
    table = str(model.__tablename__)
    driver = connection.connection.driver_connection
    if isinstance(driver, psycopg.Connection):
        # COPY takes the ids from the sequence beforehand: a multi-row INSERT of a thousand rows
        # is a statement of ten thousand placeholders that the driver parses in Python.
        with _as_core_errors(connection), driver.cursor() as cursor:
            new_ids = pgcopy.next_ids(cursor, table, len(rows)) if ids else []
            columns = (["id"] if ids else []) + list(rows[0])
            values: Iterable[Sequence[Any]] = (
                ([i, *row.values()] for i, row in zip(new_ids, rows, strict=True))
                if ids
                else (list(row.values()) for row in rows)
            )
            pgcopy.copy_rows(cursor, table, columns, values)
        return new_ids
    if ids:
        column = model.__table__.c.id
        return list(
            connection.scalars(insert(model).returning(column, sort_by_parameter_order=True), rows)
        )
    connection.execute(insert(model), rows)
    return []


def _values(
    plans: Plans, now: datetime, *, state: str | None = None, reason: str | None = None
) -> Iterator[tuple[Any, ...]]:
    for session_id, plan in plans:
        for item in plan:
            yield reminder_values(session_id, item, now, state=state, reason=reason)


def _copy_reminders(
    cursor: psycopg.Cursor[Any],
    plans: Plans,
    now: datetime,
    *,
    state: str | None = None,
    reason: str | None = None,
) -> None:
    pgcopy.copy_rows(
        cursor, "reminders", REMINDER_COLUMNS, _values(plans, now, state=state, reason=reason)
    )


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
