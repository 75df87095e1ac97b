"""Record accepted messages as soon as the provider has answered.

A message the provider accepted but that is not yet recorded as ``sent`` is the one a crash can
duplicate (an email: SMTP keeps no list to ask). So each send thread records its accepted
message before it sends another, and at most one message per send thread is ever accepted and
unrecorded. The threads of a batch share their writes (:class:`Recorder`, a group commit):
whichever thread finds no write under way writes everything accepted so far in one transaction,
and the others wait for it; under load one transaction records several messages, so recording
each message at once costs few more transactions than recording the batch at its end.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import psycopg
from sqlalchemy import Table, bindparam, update
from sqlalchemy.exc import DBAPIError

from aftercare.channels.base import SendResult
from aftercare.clock import Clock
from aftercare.reminders import states
from aftercare.storage.db import Database
from aftercare.storage.models import DeliveryAttempt, Reminder

log = logging.getLogger(__name__)


def record_sent(
    *,
    db: Database,
    clock: Clock,
    sent: list[tuple[int, int, SendResult]],
    outcome: str = "sent",
    level: int = logging.INFO,
) -> None:
    """Record accepted messages, given as (reminder id, attempt id, result), in one transaction.

    Not the ORM, and on PostgreSQL not even a Core connection: this runs once per accepted
    message (or a few), and a session's unit of work doubled the worker's CPU per message."""
    if not sent:
        return
    now = clock.now()
    if db.is_postgres:
        _record_sent_postgres(db, now, sent, outcome)
    else:
        _record_sent_core(db, now, sent, outcome)
    log.log(
        level,
        "sent %s reminder(s)",
        len(sent),
        extra={"reminder_ids": [reminder_id for reminder_id, _, _ in sent], "outcome": outcome},
    )


def _record_sent_core(
    db: Database, now: datetime, sent: list[tuple[int, int, SendResult]], outcome: str
) -> None:
    """The write as two Core statements in one transaction (SQLite)."""
    with db.engine.begin() as connection:
        connection.execute(
            update(_ATTEMPTS)
            .where(_ATTEMPTS.c.id == bindparam("b_id"))
            .values(
                outcome=outcome,
                finished_at=now,
                provider_id=bindparam("b_provider_id"),
                provider_status=bindparam("b_provider_status"),
            ),
            [
                {
                    "b_id": attempt_id,
                    "b_provider_id": result.provider_id,
                    "b_provider_status": result.status,
                }
                for _, attempt_id, result in sent
            ],
        )
        # The guarded transition (states.transition), sending -> sent.
        connection.execute(
            update(_REMINDERS)
            .where(
                _REMINDERS.c.id.in_([reminder_id for reminder_id, _, _ in sent]),
                _REMINDERS.c.state == states.SENDING,
            )
            .values(state=states.SENT, updated_at=now, sent_at=now, reason=None)
        )


# Both updates in one statement (a data-modifying WITH runs to completion whether or not the
# outer statement reads it), so one round trip and, in autocommit, its own transaction: no
# BEGIN and COMMIT round trips. The reminders' update is the guarded transition
# (states.transition), sending -> sent.
_RECORD_SENT_SQL = """
WITH accepted(attempt_id, provider_id, provider_status) AS (
    SELECT * FROM unnest(%(attempt_ids)s::integer[], %(provider_ids)s::text[],
                         %(provider_statuses)s::text[])
), attempts AS (
    UPDATE delivery_attempts
    SET outcome = %(outcome)s, finished_at = %(now)s,
        provider_id = accepted.provider_id, provider_status = accepted.provider_status
    FROM accepted
    WHERE delivery_attempts.id = accepted.attempt_id
)
UPDATE reminders
SET state = %(sent)s, updated_at = %(now)s, sent_at = %(now)s, reason = NULL
WHERE id = ANY(%(reminder_ids)s::integer[]) AND state = %(sending)s
"""


def _record_sent_postgres(
    db: Database, now: datetime, sent: list[tuple[int, int, SendResult]], outcome: str
) -> None:
    """The write as one statement on the driver's connection, prepared, in autocommit.

    SQLAlchemy's Connection, two statements and BEGIN/COMMIT cost the worker 0.8 ms of CPU per
    write, 0.1 ms this way (docs/benchmarks.md). Errors are raised as Core raises them
    (``OperationalError``, ...), the connection invalidated if the error says it is gone."""
    params = {
        "attempt_ids": [attempt_id for _, attempt_id, _ in sent],
        "provider_ids": [result.provider_id for _, _, result in sent],
        "provider_statuses": [result.status for _, _, result in sent],
        "reminder_ids": [reminder_id for reminder_id, _, _ in sent],
        "outcome": outcome,
        # Stored as naive UTC (storage.db.UTCDateTime).
        "now": now.astimezone(UTC).replace(tzinfo=None),
        "sent": states.SENT,
        "sending": states.SENDING,
    }
    dialect = db.engine.dialect
    dbapi_error = dialect.loaded_dbapi.Error
    raw = db.engine.raw_connection()
    try:
        driver = cast(psycopg.Connection[Any], raw.driver_connection)
        driver.autocommit = True
        try:
            driver.execute(_RECORD_SENT_SQL, params, prepare=True)
        finally:
            if not driver.closed:
                driver.autocommit = False
    except dbapi_error as exc:
        gone = dialect.is_disconnect(exc, raw.dbapi_connection, None)
        if gone:
            raw.invalidate(exc)
        raise DBAPIError.instance(
            None, None, exc, dbapi_error, connection_invalidated=gone, dialect=dialect
        ) from exc
    finally:
        raw.close()


_ATTEMPTS = cast(Table, DeliveryAttempt.__table__)
_REMINDERS = cast(Table, Reminder.__table__)


@dataclass
class _Entry:
    reminder_id: int
    attempt_id: int
    result: SendResult
    done: bool = False
    error: BaseException | None = None


class Recorder:
    """One batch's accepted messages, recorded as they come (a group commit)."""

    def __init__(self, *, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        self._cond = threading.Condition()
        self._pending: list[_Entry] = []
        self._writing = False

    def record(self, reminder_id: int, attempt_id: int, result: SendResult) -> None:
        """Return once this message is recorded ``sent``; raise what the write raised."""
        entry = _Entry(reminder_id, attempt_id, result)
        with self._cond:
            self._pending.append(entry)
            while not entry.done:
                if self._writing:
                    self._cond.wait()
                    continue
                batch, self._pending, self._writing = self._pending, [], True
                error: BaseException | None = RuntimeError("recording was interrupted")
                try:
                    error = self._write_unlocked(batch)
                finally:
                    self._writing = False
                    for written in batch:
                        written.done, written.error = True, error
                    self._cond.notify_all()
        if entry.error is not None:
            raise entry.error

    def _write_unlocked(self, batch: list[_Entry]) -> BaseException | None:
        """Write ``batch`` with the condition released, so that others can queue meanwhile."""
        self._cond.release()
        try:
            # Logged once per batch by delivery, not once per message here.
            record_sent(
                db=self.db,
                clock=self.clock,
                sent=[(e.reminder_id, e.attempt_id, e.result) for e in batch],
                level=logging.DEBUG,
            )
        except Exception as exc:  # noqa: BLE001 - handed to every sender of the batch
            return exc
        finally:
            self._cond.acquire()
        return None
