"""Heartbeats: periodic components record when they last ran."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from aftercare.storage.models import Heartbeat

DISPATCHER = "dispatcher"


def beat(db_session: Session, *, name: str, now: datetime, detail: dict[str, Any]) -> None:
    """Record that ``name`` ran at ``now`` (an upsert that works on every backend)."""
    row = db_session.get(Heartbeat, name)
    if row is None:
        db_session.add(Heartbeat(name=name, at=now, detail=detail))
    else:
        row.at = now
        row.detail = detail


def last_beat(db_session: Session, *, name: str) -> datetime | None:
    return db_session.scalar(select(Heartbeat.at).where(Heartbeat.name == name))
