"""Scenario 1, enrolment: sessions recorded per second.

* the service (``validate_request`` + ``record_session``, one transaction per session) on
  PostgreSQL and on SQLite, against raw psycopg / sqlite3 inserting the same rows (patient,
  session, 46 reminders) in one transaction per session;
* ``POST /api/v1/sessions`` on a real uvicorn process, on both databases, against the same raw
  baselines;
* ``aftercare import`` of a 20,000-row CSV (a subprocess, wall time), against raw binary COPY of
  the same rows (read back from the import, then written again into the emptied tables).
"""

from __future__ import annotations

import importlib.util
import json
import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.types.json import Json

from aftercare.runtime import Runtime
from aftercare.sessions.service import ValidSession, record_session, validate_request
from aftercare.staff.service import hash_password, issue_token
from aftercare.storage.migrate import upgrade
from aftercare.storage.models import StaffUser
from bench.context import Bench
from bench.data import PARAMETERS, request, write_csv
from bench.infra import free_port, log, wait_until
from bench.results import Row, summary

NAME = "enrolment"
IMPORT_TABLES = ("patients", "treatment_sessions", "reminders", "audit_log")
_numbers = count(1_000_000)


def _requests(bench: Bench, n: int) -> list[Any]:
    treated = datetime.now(UTC) - timedelta(hours=1)
    return [
        request(next(_numbers), treated_at=treated, zone="Europe/London", channels=("sms", "email"))
        for _ in range(n)
    ]


def _timed(items: Sequence[Any], cap: float, one: Callable[[Any], None]) -> float:
    """Items per second through ``one``, stopping after ``cap`` seconds."""
    start = time.perf_counter()
    done = 0
    for item in items:
        one(item)
        done += 1
        if time.perf_counter() - start > cap:
            break
    return done / (time.perf_counter() - start)


# The service ----------------------------------------------------------------------------------


def service_rate(rt: Runtime, requests: Sequence[Any], cap: float) -> float:
    def one(req: Any) -> None:
        now = datetime.now(UTC)
        valid = validate_request(req, registry=rt.registry, quiet=rt.quiet, now=now)
        with rt.db.session() as db_session:
            record_session(db_session=db_session, valid=valid, now=now)

    return _timed(requests, cap, one)


# Raw baselines: the same rows, one transaction per session -----------------------------------


def _naive(instant: datetime | None) -> datetime | None:
    return None if instant is None else instant.astimezone(UTC).replace(tzinfo=None)


def _rows(valid: ValidSession, now: datetime) -> tuple[tuple[Any, ...], tuple[Any, ...], list[Any]]:
    patient = (
        secrets.token_hex(16),
        valid.name,
        valid.phone,
        valid.email,
        valid.timezone,
        ",".join(valid.channels),
        _naive(now),
    )
    session = (
        valid.regimen.id,
        valid.regimen.version,
        _naive(valid.treated_at),
        _naive(now),
        valid.timezone,
        dict(valid.parameters),
        ",".join(valid.channels),
        "active",
        True,
        True,
    )
    reminders = [
        (
            r.step,
            r.occurrence,
            r.channel,
            r.template,
            _naive(r.nominal_utc),
            _naive(r.due_utc),
            _naive(r.expires_utc),
            r.critical,
            r.state,
            0,
            _naive(now),
            None,
        )
        for r in valid.plan
    ]
    return patient, session, reminders


_PATIENT_SQL = (
    "INSERT INTO patients (public_id, name, phone, email, timezone, channels, created_at) "
    "VALUES ({p}) RETURNING id"
)
_SESSION_SQL = (
    "INSERT INTO treatment_sessions (patient_id, regimen_id, regimen_version, treated_at, "
    "recorded_at, timezone, parameters, channels, status, consent, contraindications_checked) "
    "VALUES ({p}) RETURNING id"
)
_REMINDER_SQL = (
    "INSERT INTO reminders (session_id, step, occurrence, channel, template, nominal_at, due_at, "
    "expires_at, critical, state, attempts, updated_at, reason) VALUES ({p})"
)


def _marks(n: int, mark: str) -> str:
    return ", ".join([mark] * n)


def raw_pg_rate(url: str, valids: Sequence[ValidSession], cap: float) -> float:
    """Raw psycopg: INSERT patient, session (RETURNING id), executemany the reminders, COMMIT."""
    patient_sql = _PATIENT_SQL.format(p=_marks(7, "%s"))
    session_sql = _SESSION_SQL.format(p=_marks(11, "%s"))
    reminder_sql = _REMINDER_SQL.format(p=_marks(13, "%s"))
    with psycopg.connect(url) as conn:

        def one(valid: ValidSession) -> None:
            patient, session, reminders = _rows(valid, datetime.now(UTC))
            with conn.cursor() as cur:
                cur.execute(patient_sql, patient)
                patient_id = cur.fetchone()[0]  # type: ignore[index]
                cur.execute(session_sql, (patient_id, *session[:5], Json(session[5]), *session[6:]))
                session_id = cur.fetchone()[0]  # type: ignore[index]
                cur.executemany(reminder_sql, [(session_id, *r) for r in reminders])
            conn.commit()

        return _timed(valids, cap, one)


def raw_sqlite_rate(path: Path, valids: Sequence[ValidSession], cap: float) -> float:
    """Raw sqlite3 with the product's pragmas (WAL, synchronous=NORMAL), same rows."""
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
        conn.execute(f"PRAGMA {pragma}")
    patient_sql = _PATIENT_SQL.format(p=_marks(7, "?"))
    session_sql = _SESSION_SQL.format(p=_marks(11, "?"))
    reminder_sql = _REMINDER_SQL.format(p=_marks(13, "?"))

    def text(value: Any) -> Any:
        return value.isoformat(sep=" ") if isinstance(value, datetime) else value

    def one(valid: ValidSession) -> None:
        patient, session, reminders = _rows(valid, datetime.now(UTC))
        conn.execute("BEGIN IMMEDIATE")
        patient_id = conn.execute(patient_sql, [text(v) for v in patient]).fetchone()[0]
        values = [text(v) for v in session]
        values[5] = json.dumps(session[5])
        session_id = conn.execute(session_sql, [patient_id, *values]).fetchone()[0]
        conn.executemany(reminder_sql, [(session_id, *[text(v) for v in r]) for r in reminders])
        conn.execute("COMMIT")

    try:
        return _timed(valids, cap, one)
    finally:
        conn.close()


def _valids(rt: Runtime, requests: Sequence[Any]) -> list[ValidSession]:
    now = datetime.now(UTC)
    return [validate_request(r, registry=rt.registry, quiet=rt.quiet, now=now) for r in requests]


# The HTTP API ---------------------------------------------------------------------------------


def _staff_token(rt: Runtime) -> str:
    now = datetime.now(UTC)
    with rt.db.session() as db_session:
        user = StaffUser(
            email=f"nurse{next(_numbers)}@example.org",
            password_hash=hash_password("a bench password, never used"),
            role="staff",
            created_at=now,
        )
        db_session.add(user)
        db_session.flush()
        return issue_token(db_session=db_session, staff_id=user.id, now=now)[1]


def _body(req: Any) -> dict[str, Any]:
    return {
        "patient": {
            "name": req.name,
            "phone": req.phone,
            "email": req.email,
            "timezone": req.timezone,
            "channels": list(req.channels),
        },
        "treated_at": req.treated_at,
        "regimen": "micro-sclerotherapy",
        "parameters": dict(PARAMETERS),
        "consent": True,
        "contraindications_checked": True,
    }


@contextmanager
def api_server(bench: Bench, name: str, database_url: str) -> Iterator[str]:
    """The real app on uvicorn (one process, as ``aftercare run`` serves it), on a free port."""
    port = free_port()
    proc = bench.procs.start(
        name,
        [
            sys.executable,
            "-m",
            "uvicorn",
            "aftercare.web.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=bench.env(database_url=database_url),
        cwd=bench.scratch,
    )
    base = f"http://127.0.0.1:{port}"

    def listening() -> bool:
        try:
            httpx.get(f"{base}/healthz", timeout=2)
        except httpx.HTTPError:
            return False
        return True

    try:
        if not wait_until(listening, timeout=40, interval=0.2):
            raise RuntimeError(f"{name}: uvicorn did not start (see its log)")
        yield base
    finally:
        bench.procs.stop(proc)


def api_rate(base: str, token: str, requests: Sequence[Any], cap: float) -> float:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:

        def one(req: Any) -> None:
            response = client.post("/api/v1/sessions", json=_body(req))
            if response.status_code != 201:
                raise RuntimeError(f"POST /api/v1/sessions: {response.status_code}")

        one(requests[0])  # connection and first-request set-up out of the timing
        return _timed(requests[1:], cap, one)


# Bulk import ---------------------------------------------------------------------------------


def import_seconds(bench: Bench, csv_path: Path) -> float:
    """Wall time of ``aftercare import FILE`` into empty tables (a subprocess, as staff run it)."""
    bench.truncate()
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "aftercare.cli.main", "import", str(csv_path)],
        env=bench.env(),
        cwd=bench.scratch,
        capture_output=True,
        timeout=900,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"aftercare import failed ({done.returncode}): {done.stderr[-500:]!r}")
    return elapsed


def _types(conn: psycopg.Connection[Any], table: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT column_name, udt_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = %s",
        (table,),
    ).fetchall()
    return dict(rows)


def copy_seconds(bench: Bench) -> float:
    """Raw binary COPY of exactly the rows the import stored, into the emptied tables, in one
    transaction (the rows are read back first, outside the timing)."""
    dump: list[tuple[str, list[str], list[str], list[tuple[Any, ...]]]] = []
    with bench.pg.connect() as conn:
        for table in IMPORT_TABLES:
            cur = conn.execute(f"SELECT * FROM {table} ORDER BY id")
            columns = [d.name for d in cur.description or ()]
            types = _types(conn, table)
            kinds = [types[c] for c in columns]
            rows = [
                tuple(
                    Json(v) if kind in ("json", "jsonb") and v is not None else v
                    for v, kind in zip(row, kinds, strict=True)
                )
                for row in cur.fetchall()
            ]
            dump.append((table, columns, kinds, rows))
    bench.truncate()
    with bench.pg.connect() as conn:
        started = time.perf_counter()
        with conn.cursor() as cur:
            for table, columns, kinds, rows in dump:
                sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
                with cur.copy(sql) as copy:
                    copy.set_types(kinds)
                    for row in rows:
                        copy.write_row(row)
        conn.commit()
        return time.perf_counter() - started


# The scenario --------------------------------------------------------------------------------


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run(bench: Bench) -> list[Row]:
    bench.truncate()
    n = bench.size(400, 80)
    cap = bench.size(3.0, 1.5)
    rates: dict[str, list[float]] = {
        k: []
        for k in ("service_pg", "raw_pg", "service_sqlite", "raw_sqlite", "api_pg", "api_sqlite")
    }
    sqlite_path = bench.scratch / "enrolment.sqlite3"
    sqlite_url = f"sqlite:///{sqlite_path}"
    upgrade(sqlite_url)
    sqlite_rt = Runtime(bench.settings(database_url=sqlite_url))
    has_api = _available("aftercare.web.api.sessions")
    with ExitStack() as stack:
        apis: dict[str, tuple[str, str]] = {}
        api_note = "" if has_api else "n/a: not built"
        if has_api:
            for key, url, rt in (("pg", bench.pg.url, bench.rt), ("sqlite", sqlite_url, sqlite_rt)):
                try:
                    base = stack.enter_context(api_server(bench, f"api-{key}", url))
                except RuntimeError as exc:
                    # The app is built but does not start (say, mid-edit): the rest still runs.
                    log(str(exc))
                    api_note = f"n/a: the app did not start (logs/api-{key}.log)"
                    continue
                apis[key] = (base, _staff_token(rt))
        for rep in range(bench.reps):
            log(f"enrolment {rep + 1}/{bench.reps}: service, raw and API, {n} sessions each")
            rates["service_pg"].append(service_rate(bench.rt, _requests(bench, n), cap))
            valids = _valids(bench.rt, _requests(bench, n))
            rates["raw_pg"].append(raw_pg_rate(bench.pg.url, valids, cap))
            rates["service_sqlite"].append(service_rate(sqlite_rt, _requests(bench, n), cap))
            rates["raw_sqlite"].append(raw_sqlite_rate(sqlite_path, valids, cap))
            for key, (base, token) in apis.items():
                rates[f"api_{key}"].append(api_rate(base, token, _requests(bench, n + 1), cap))
    sqlite_rt.db.dispose()

    rows_in_file = bench.size(20_000, 2_000)
    imports: list[float] = []
    copies: list[float] = []
    has_import = _available("aftercare.cli.importer")
    if has_import:
        csv_path = bench.scratch / "import.csv"
        write_csv(csv_path, rows_in_file, zone="Europe/London", first=next(_numbers))
        for rep in range(bench.reps):
            log(f"enrolment {rep + 1}/{bench.reps}: aftercare import of {rows_in_file:,} rows")
            imports.append(rows_in_file / import_seconds(bench, csv_path))
            copies.append(rows_in_file / copy_seconds(bench))
    bench.truncate()
    bench.raw[NAME] = {"sessions_per_rep": n, "cap_seconds": cap, **rates}
    bench.raw[NAME].update({"import_rows": rows_in_file, "import": imports, "copy": copies})
    return _rows_for(rates, imports, copies, rows_in_file, api_note=api_note, has_import=has_import)


def _rows_for(
    rates: dict[str, list[float]],
    imports: list[float],
    copies: list[float],
    rows_in_file: int,
    *,
    api_note: str,
    has_import: bool,
) -> list[Row]:
    raw_pg = "raw psycopg, same rows, 1 txn/session"
    raw_lite = "raw sqlite3, same rows, 1 txn/session"
    out: list[Row] = []
    for measure, key, baseline_name, baseline_key in (
        ("service, PostgreSQL", "service_pg", raw_pg, "raw_pg"),
        ("service, SQLite", "service_sqlite", raw_lite, "raw_sqlite"),
        ("POST /api/v1/sessions, PostgreSQL", "api_pg", raw_pg, "raw_pg"),
        ("POST /api/v1/sessions, SQLite", "api_sqlite", raw_lite, "raw_sqlite"),
    ):
        row = Row(
            NAME,
            measure,
            "sessions/s",
            summary(rates[key]),
            baseline_name,
            summary(rates[baseline_key]),
            target="≥ 0.8× raw",
            note=api_note if key.startswith("api") and not rates[key] else "",
        )
        if row.value is not None and row.ratio is not None:
            row.met = row.ratio >= 0.8
        out.append(row)
    bulk = Row(
        NAME,
        f"aftercare import, {rows_in_file:,}-row CSV",
        "sessions/s",
        summary(imports),
        "raw binary COPY, same rows",
        summary(copies),
        target="≥ 10,000/s",
        note="" if has_import else "n/a: not built",
    )
    if bulk.value is not None:
        bulk.met = bulk.value.median >= 10_000
    out.append(bulk)
    return out
