"""Readiness: database, migrations, broker and the dispatcher's heartbeat, each checked alone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from kombu.connection import Connection
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from aftercare.ops.heartbeat import DISPATCHER, last_beat
from aftercare.runtime import Runtime
from aftercare.storage.migrate import is_current


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def broker_connection(rt: Runtime) -> Connection:
    return Connection(  # type: ignore[no-untyped-call]
        rt.settings.effective_broker_url,
        transport_options=rt.settings.broker_transport_options(),
        connect_timeout=3,
    )


def check_database(rt: Runtime) -> list[Check]:
    try:
        with rt.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return [
            Check("database", False, type(exc).__name__),
            Check("migrations", False, "database unreachable"),
        ]
    try:
        current = is_current(rt.db.engine)
    except SQLAlchemyError as exc:
        return [Check("database", True, "reachable"), Check("migrations", False, str(exc)[:200])]
    return [
        Check("database", True, "reachable"),
        Check("migrations", current, "current" if current else "run `aftercare migrate`"),
    ]


def check_broker(rt: Runtime) -> Check:
    try:
        with broker_connection(rt) as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not ready"; reported, not hidden
        return Check("broker", False, type(exc).__name__)
    return Check("broker", True, "reachable")


def heartbeat_limit(rt: Runtime) -> timedelta:
    return timedelta(seconds=max(rt.settings.dispatch_interval * 10, 60.0))


def check_dispatcher(rt: Runtime) -> Check:
    try:
        with rt.db.session() as db_session:
            at = last_beat(db_session, name=DISPATCHER)
    except SQLAlchemyError as exc:
        return Check("dispatcher", False, type(exc).__name__)
    if at is None:
        return Check("dispatcher", False, "has never run (is beat running?)")
    age = rt.clock.now() - at
    fresh = age <= heartbeat_limit(rt)
    return Check("dispatcher", fresh, f"last ran {int(age.total_seconds())} s ago")


def readiness(rt: Runtime) -> tuple[bool, dict[str, Any]]:
    checks = [*check_database(rt), check_broker(rt), check_dispatcher(rt)]
    ok = all(c.ok for c in checks)
    return ok, {
        "status": "ready" if ok else "not ready",
        "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks},
    }
