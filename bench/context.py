"""The run's shared state: mode, repetitions, servers, settings and environment for the product."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy import text

from aftercare.runtime import Runtime
from aftercare.settings import Settings
from aftercare.storage.models import Base
from bench.infra import SECRET_KEY, PrivateRedis, Processes, ScratchPostgres, base_env

N = TypeVar("N", int, float)
CLINIC = {"clinic_name": "Riverside Vein Clinic", "clinic_phone": "020 7946 0000"}


# Real zones around the world (fixed-offset Etc/GMT zones are not what clinics use, and
# icalendar takes four times longer to describe one in the welcome email's .ics).
ZONES = (
    "Europe/London",
    "Pacific/Honolulu",
    "America/Anchorage",
    "America/Los_Angeles",
    "America/Denver",
    "America/Chicago",
    "America/New_York",
    "America/Halifax",
    "America/Sao_Paulo",
    "Atlantic/South_Georgia",
    "Atlantic/Cape_Verde",
    "Europe/Paris",
    "Europe/Athens",
    "Europe/Moscow",
    "Asia/Dubai",
    "Asia/Karachi",
    "Asia/Dhaka",
    "Asia/Bangkok",
    "Asia/Singapore",
    "Asia/Tokyo",
    "Australia/Brisbane",
    "Pacific/Noumea",
    "Pacific/Auckland",
    "Pacific/Tongatapu",
)


def daytime_zone(now: datetime | None = None) -> str:
    """The patients' zone: Europe/London when it is between 09:00 and 18:00 there, else the
    zone where it is closest to 13:00, so that no SMS meets quiet hours (21:00-08:00 local)
    while the benchmark runs, whatever the hour of the run."""
    instant = now or datetime.now(UTC)

    def hours_from_one_pm(zone: str) -> float:
        local = instant.astimezone(ZoneInfo(zone))
        return abs(local.hour + local.minute / 60 - 13)

    if hours_from_one_pm(ZONES[0]) <= 4:
        return ZONES[0]
    return min(ZONES, key=hours_from_one_pm)


@dataclass
class Bench:
    quick: bool
    reps: int
    pg: ScratchPostgres
    redis: PrivateRedis
    scratch: Path
    procs: Processes
    zone: str
    raw: dict[str, Any] = field(default_factory=dict)
    # The burst scenario's N (reminders due at once) instead of the mode's, for A/B runs.
    burst_size: int | None = None
    # The run's runtime (PostgreSQL + Redis), set once the schema exists.
    rt: Runtime = field(init=False)

    def size(self, full: N, quick: N) -> N:
        """The full run's load, or the quick run's."""
        return quick if self.quick else full

    @property
    def data_dir(self) -> Path:
        return self.scratch / "data"

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": self.data_dir,
            "database_url": self.pg.url,
            "broker_url": self.redis.url,
            "secret_key": SECRET_KEY,
            "sms_transport": "outbox",
            "email_transport": "outbox",
            **CLINIC,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

    def env(self, **overrides: str) -> dict[str, str]:
        """Environment of an ``aftercare`` process on this run's database and broker."""
        values = {
            "AFTERCARE_DATA_DIR": str(self.data_dir),
            "AFTERCARE_DATABASE_URL": self.pg.url,
            "AFTERCARE_BROKER_URL": self.redis.url,
            "AFTERCARE_SECRET_KEY": SECRET_KEY,
            "AFTERCARE_CLINIC_NAME": CLINIC["clinic_name"],
            "AFTERCARE_CLINIC_PHONE": CLINIC["clinic_phone"],
            "AFTERCARE_SMS_TRANSPORT": "outbox",
            "AFTERCARE_EMAIL_TRANSPORT": "outbox",
        }
        values.update({f"AFTERCARE_{k.upper()}": v for k, v in overrides.items()})
        return base_env(values)

    def truncate(self) -> None:
        """Empty every table of the scratch database (each scenario starts from nothing)."""
        tables = ", ".join(t.name for t in reversed(Base.metadata.sorted_tables))
        with self.rt.db.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))

    def vacuum(self, what: str = "(ANALYZE) reminders") -> None:
        with self.pg.connect(autocommit=True) as conn:
            conn.execute(f"VACUUM {what}")
