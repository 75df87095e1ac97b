"""Injected time. Nothing in Aftercare reads the wall clock except through a ``Clock``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware, in UTC."""
        ...


class SystemClock:
    """The real time."""

    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass
class FixedClock:
    """A clock that only moves when told to (tests)."""

    current: datetime = field(default_factory=lambda: datetime(2026, 1, 1, tzinfo=UTC))

    def now(self) -> datetime:
        return self.current

    def set(self, instant: datetime) -> None:
        self.current = instant.astimezone(UTC)

    def advance(self, delta: timedelta) -> None:
        self.current += delta


@dataclass
class FileClock:
    """A clock shared by several processes: the instant is read from a file on every call.

    The demo and the end-to-end tests write the file to move time for the dispatcher and the
    workers at once. A missing or empty file means the real time.
    """

    path: Path

    def now(self) -> datetime:
        try:
            text = self.path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            text = ""
        if not text:
            return datetime.now(UTC)
        return datetime.fromisoformat(text).astimezone(UTC)

    def set(self, instant: datetime) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(instant.astimezone(UTC).isoformat(), encoding="utf-8")
        tmp.replace(self.path)


def clock_from_setting(value: str) -> Clock:
    """Build the clock named by ``AFTERCARE_CLOCK`` (``system`` or ``file:PATH``)."""
    if value.startswith("file:"):
        return FileClock(Path(value.removeprefix("file:")))
    return SystemClock()
