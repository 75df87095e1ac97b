"""PostgreSQL's own ways of storing a session: binary COPY of planned reminders (shared by
enrolment and CSV import), and the new patient and session in one statement (enrolment).

A session's ~46 reminders as one COPY take a third of the time of an executemany of 46
INSERTs (measured on this project's schema): one message carrying every row, each value
encoded in C, instead of a statement per row for SQLAlchemy and psycopg to bind.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.types.json import Json

from aftercare.planning.planner import PlannedReminder

# As record_session writes it (the test comparing import with enrolment pins the two together).
SKIPPED_REASON = "catch-up: superseded before enrolment"

REMINDER_COLUMNS = (
    "session_id",
    "step",
    "occurrence",
    "channel",
    "template",
    "nominal_at",
    "due_at",
    "expires_at",
    "critical",
    "state",
    "attempts",
    "updated_at",
    "reason",
)


def column_types(cursor: psycopg.Cursor[Any], table: str) -> dict[str, str]:
    """Binary COPY needs each column's type: read from the catalog, not repeated here."""
    cursor.execute(
        "SELECT column_name, udt_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = %s",
        (table,),
    )
    return dict(cursor.fetchall())


def copy_sql(table: str, columns: Sequence[str]) -> str:
    return f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"


def sent_as(kind: str) -> str:
    """How a column's values are encoded. A UTCDateTime column is a naive ``timestamp`` holding
    the UTC wall time; in binary, timestamp and timestamptz are both microseconds since 2000,
    so an aware datetime sent as timestamptz lands as its UTC wall time whatever the session's
    TimeZone, without a Python conversion of each datetime."""
    return "timestamptz" if kind == "timestamp" else kind


def reminder_types(types: dict[str, str]) -> list[str]:
    """What :func:`copy_reminders` sends each column as, from :func:`column_types`."""
    return [sent_as(types[column]) for column in REMINDER_COLUMNS]


def copy_reminders(
    cursor: psycopg.Cursor[Any],
    plans: Iterable[tuple[int, Sequence[PlannedReminder]]],
    now: datetime,
    types: Sequence[str],
) -> None:
    """Every reminder of each (session id, plan), in plan order, as ``reminder_rows`` builds
    them; ``types`` from :func:`reminder_types`."""
    with cursor.copy(copy_sql("reminders", REMINDER_COLUMNS)) as copy:
        copy.set_types(list(types))
        for session_id, plan in plans:
            for r in plan:
                copy.write_row(
                    (
                        session_id,
                        r.step,
                        r.occurrence,
                        r.channel,
                        r.template,
                        r.nominal_utc,
                        r.due_utc,
                        r.expires_utc,
                        r.critical,
                        r.state,
                        0,
                        now,
                        SKIPPED_REASON if r.state == "skipped" else None,
                    )
                )


def insert_session(
    cursor: psycopg.Cursor[Any], session: dict[str, Any], *, patient: dict[str, Any] | None
) -> tuple[int, int]:
    """INSERT a session's row (``session_values``) and, if given, first its new patient's
    (``patient_values``) in the same statement: one round trip, not two. The values are bound
    as the models' Core INSERTs bind them. Returns the session's id and its patient's."""
    if patient is None:
        sql = _session_sql(tuple(session))
        params = [_bound(value) for value in session.values()]
    else:
        columns = tuple(column for column in session if column != "patient_id")
        sql = _patient_and_session_sql(tuple(patient), columns)
        params = [_bound(value) for value in patient.values()]
        params += [_bound(session[column]) for column in columns]
    cursor.execute(sql, params)
    row = cursor.fetchone()
    assert row is not None
    return row[0], row[1]


def _bound(value: Any) -> Any:
    """A value as UTCDateTime and JSON columns bind it: naive UTC, JSON text."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)
    if isinstance(value, dict):
        return Json(value)
    return value


def _marks(count: int) -> str:
    return ", ".join(["%s"] * count)


_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


def sql_names(names: tuple[str, ...]) -> str:
    """Column or table names for SQL text: the keys of patient_values and session_values and the
    models' table names, never input; anything else is refused rather than interpolated."""
    for name in names:
        if not _IDENTIFIER.fullmatch(name):
            raise ValueError(f"not a plain SQL name: {name!r}")
    return ", ".join(names)


# Bandit's B608 (SQL built from strings) is answered by sql_names: only plain names go in.


@lru_cache(maxsize=8)
def _session_sql(columns: tuple[str, ...]) -> str:
    return (
        f"INSERT INTO treatment_sessions ({sql_names(columns)}) "  # noqa: S608  # nosec B608
        f"VALUES ({_marks(len(columns))}) RETURNING id, patient_id"
    )


@lru_cache(maxsize=8)
def _patient_and_session_sql(patient: tuple[str, ...], session: tuple[str, ...]) -> str:
    return (
        f"WITH patient AS (INSERT INTO patients ({sql_names(patient)}) "  # noqa: S608  # nosec B608
        f"VALUES ({_marks(len(patient))}) RETURNING id) "
        f"INSERT INTO treatment_sessions (patient_id, {sql_names(session)}) "
        f"VALUES ((SELECT id FROM patient), {_marks(len(session))}) RETURNING id, patient_id"
    )
