"""Test data, made fast: sessions planned by the real service, then cloned in SQL."""

from __future__ import annotations

import csv
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import update

from aftercare.runtime import Runtime
from aftercare.sessions.service import SessionRequest, record_session, validate_request
from aftercare.storage.models import Reminder
from bench.context import Bench

PARAMETERS = {"daily_days": 14, "checkin_week": 10}


def phone(i: int) -> str:
    """A distinct, valid UK mobile number (07900 000000 onwards) in E.164."""
    return f"+4479{i:08d}"


def request(i: int, *, treated_at: datetime, zone: str, channels: Sequence[str]) -> SessionRequest:
    return SessionRequest(
        name=f"Patient {i}",
        phone=phone(i),
        email=f"patient{i}@example.org",
        timezone=zone,
        channels=list(channels),
        treated_at=treated_at.isoformat(),
        regimen="micro-sclerotherapy",
        parameters=dict(PARAMETERS),
    )


def template_session(
    rt: Runtime, *, zone: str, channels: Sequence[str] = ("sms", "email"), index: int = 0
) -> int:
    """One session recorded through the real service (its plan is what clones copy). Its
    reminders are parked (``cancelled``): the benchmark decides what falls due, and when."""
    now = datetime.now(UTC)
    valid = validate_request(
        request(index, treated_at=now - timedelta(hours=1), zone=zone, channels=channels),
        registry=rt.registry,
        quiet=rt.quiet,
        now=now,
    )
    with rt.db.session() as db_session:
        session_id = record_session(db_session=db_session, valid=valid, now=now).id
        db_session.execute(
            update(Reminder).where(Reminder.session_id == session_id).values(state="cancelled")
        )
    return session_id


def clone_sessions(bench: Bench, template_id: int, count: int, *, first: int = 1) -> list[int]:
    """``count`` copies of a session (patient, session and every reminder, parked like the
    template's), each patient with its own number, address and public id; returns the new
    session ids."""
    tag = secrets.token_hex(4)
    with bench.pg.connect() as conn:
        patient_ids = [
            r[0]
            for r in conn.execute(
                "SELECT nextval(pg_get_serial_sequence('patients', 'id')) "
                "FROM generate_series(1, %s)",
                (count,),
            )
        ]
        session_ids = [
            r[0]
            for r in conn.execute(
                "SELECT nextval(pg_get_serial_sequence('treatment_sessions', 'id')) "
                "FROM generate_series(1, %s)",
                (count,),
            )
        ]
        params = {"t": template_id, "p": patient_ids, "s": session_ids, "tag": tag, "first": first}
        conn.execute(
            """
            INSERT INTO patients (id, public_id, name, phone, email, timezone, channels, created_at)
            SELECT n.pid, md5(%(tag)s || n.i::text), 'Patient ' || (n.i + %(first)s),
                   '+4479' || lpad((n.i + %(first)s)::text, 8, '0'),
                   'patient' || (n.i + %(first)s) || '@example.org',
                   p.timezone, p.channels, p.created_at
            FROM unnest(%(p)s::int[]) WITH ORDINALITY AS n(pid, i),
                 treatment_sessions s JOIN patients p ON p.id = s.patient_id
            WHERE s.id = %(t)s
            """,
            params,
        )
        conn.execute(
            """
            INSERT INTO treatment_sessions (id, patient_id, regimen_id, regimen_version,
                treated_at, recorded_at, timezone, parameters, channels, status, consent,
                contraindications_checked)
            SELECT n.sid, n.pid, s.regimen_id, s.regimen_version, s.treated_at, s.recorded_at,
                   s.timezone, s.parameters, s.channels, s.status, s.consent,
                   s.contraindications_checked
            FROM unnest(%(s)s::int[], %(p)s::int[]) AS n(sid, pid), treatment_sessions s
            WHERE s.id = %(t)s
            """,
            params,
        )
        conn.execute(
            """
            INSERT INTO reminders (session_id, step, occurrence, channel, template, nominal_at,
                due_at, expires_at, critical, state, attempts, updated_at, reason)
            SELECT n.sid, r.step, r.occurrence, r.channel, r.template, r.nominal_at, r.due_at,
                   r.expires_at, r.critical, r.state, 0, r.updated_at, r.reason
            FROM unnest(%(s)s::int[]) AS n(sid), reminders r
            WHERE r.session_id = %(t)s
            """,
            params,
        )
        conn.commit()
    return session_ids


def make_due(
    bench: Bench,
    session_ids: Sequence[int],
    *,
    due: datetime,
    channel: str | None = None,
    limit: int | None = None,
) -> list[int]:
    """Put reminders of these sessions on the schedule at ``due`` (never expiring); returns
    their ids. The sessions' other reminders are moved a year ahead, out of the way."""
    with bench.pg.connect() as conn:
        conn.execute(
            "UPDATE reminders SET state = 'scheduled', "
            "due_at = (now() AT TIME ZONE 'utc') + interval '365 days', "
            "expires_at = NULL, attempts = 0 WHERE session_id = ANY(%s)",
            (list(session_ids),),
        )
        rows = conn.execute(
            "SELECT id FROM reminders WHERE session_id = ANY(%s) "
            "AND (%s::text IS NULL OR channel = %s) ORDER BY id LIMIT %s",
            (list(session_ids), channel, channel, limit),
        ).fetchall()
        ids = [r[0] for r in rows]
        conn.execute(
            "UPDATE reminders SET due_at = %s WHERE id = ANY(%s)",
            (due.astimezone(UTC).replace(tzinfo=None), ids),
        )
        conn.commit()
    return ids


def set_due(bench: Bench, ids: Sequence[int], *, due: datetime) -> None:
    with bench.pg.connect() as conn:
        conn.execute(
            "UPDATE reminders SET due_at = %s WHERE id = ANY(%s)",
            (due.astimezone(UTC).replace(tzinfo=None), list(ids)),
        )
        conn.commit()


def synthetic_reminders(
    bench: Bench, session_id: int, count: int, *, step: str, due_from: str, spread: str
) -> None:
    """``count`` bare reminder rows (for the dispatcher, which never reads their content), due
    from ``due_from`` (an SQL timestamp expression) spread over the interval ``spread``."""
    with bench.pg.connect() as conn:
        conn.execute(
            f"""
            INSERT INTO reminders (session_id, step, occurrence, channel, template, nominal_at,
                due_at, expires_at, critical, state, attempts, updated_at)
            SELECT %(s)s, %(step)s, g, CASE WHEN g %% 5 = 0 THEN 'email' ELSE 'sms' END,
                   'bench', d, d, NULL, false, 'scheduled', 0, now() AT TIME ZONE 'utc'
            FROM generate_series(1, %(n)s) g,
                 LATERAL (SELECT ({due_from}) + (g::float / %(n)s) * interval '{spread}' AS d) t
            """,
            {"s": session_id, "step": step, "n": count},
        )
        conn.commit()


def write_csv(path: Path, rows: int, *, zone: str, first: int = 0) -> None:
    """An import file of ``rows`` distinct patients treated an hour ago (every column used)."""
    treated = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="seconds")
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(
            [
                "name",
                "phone",
                "email",
                "timezone",
                "channels",
                "treated_at",
                "consent",
                "contraindications_checked",
                "daily_days",
                "checkin_week",
            ]
        )
        for i in range(first, first + rows):
            writer.writerow(
                [
                    f"Patient {i}",
                    phone(i),
                    f"patient{i}@example.org",
                    zone,
                    "sms,email",
                    treated,
                    "yes",
                    "yes",
                    PARAMETERS["daily_days"],
                    PARAMETERS["checkin_week"],
                ]
            )
