"""SQLite's way of storing rows fast: straight to the driver, bound by the columns' own processors
(as Core binds them) without Core's work per statement and per row, about half of storing a
session there. Used by :mod:`aftercare.storage.bulk` only."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Dialect, Table

from aftercare.storage.models import Base, Reminder
from aftercare.storage.pgcopy import sql_names
from aftercare.storage.rows import REMINDER_COLUMNS

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


def insert_row(
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


_INSERT_REMINDERS = (
    f"INSERT INTO reminders ({sql_names(REMINDER_COLUMNS)}) "  # noqa: S608  # nosec B608
    f"VALUES ({', '.join('?' * len(REMINDER_COLUMNS))})"
)


def insert_reminders(
    driver: sqlite3.Connection, dialect: Dialect, rows: Iterable[Sequence[Any]]
) -> None:
    """Reminder rows (tuples in REMINDER_COLUMNS order) as Core would insert them. A plan repeats
    few distinct instants (~70 of ~140 a session), so each is converted once."""
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

    # Unpacked by position: REMINDER_COLUMNS' order (instants and the flag converted).
    driver.executemany(
        _INSERT_REMINDERS,
        [
            (
                sid,
                step,
                occ,
                chan,
                tpl,
                at(nom),
                at(due),
                at(exp),
                critical(crit),
                st,
                n,
                at(upd),
                why,
            )
            for sid, step, occ, chan, tpl, nom, due, exp, crit, st, n, upd, why in rows
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
