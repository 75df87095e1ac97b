"""One settings class for the whole service, read from ``AFTERCARE_*`` variables and ``.env``.

Every variable is documented in the README. Secrets may also be given as ``AFTERCARE_<NAME>_FILE``
pointing to a file (Docker secrets).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from aftercare.planning.quiet import QuietHours

# The broker's queues: dispatch (claiming due work) and send (delivering it). Here, not in the
# worker's Celery configuration, so ops can report their depth without importing the worker.
DISPATCH_QUEUE = "aftercare.dispatch"
SEND_QUEUE = "aftercare.send"
if TYPE_CHECKING:
    from aftercare.planning.hours import OpeningHours

PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "dev"}
# Clinic names that are not a clinic's (the defaults and the docs' examples): patients would read
# "Your clinic: Hi Priya" and "call us on your clinic".
PLACEHOLDER_CLINIC_NAMES = {"", "your clinic", "example clinic", "example vein clinic", "changeme"}
_SECRET_FIELDS = ("secret_key", "twilio_auth_token", "smtp_url", "database_url", "broker_url")
_REPO_ROOT = Path(__file__).resolve().parent.parent
# A signing key set by the operator: at least 32 characters, and at least 10^24 guesses (about
# 80 bits) by zxcvbn, which sees through repeats, sequences, keyboard walks and words. The
# embedded default's own key (secrets.token_urlsafe(48): 64 characters, 384 random bits) and
# `openssl rand -hex 32` pass by far; "x", "changeme" * 4 or "0123456789" * 4 do not.
MIN_SECRET_LENGTH = 32
MIN_SECRET_GUESSES = 24.0


@lru_cache(maxsize=8)
def _secret_guesses_log10(value: str) -> float:
    from zxcvbn import zxcvbn

    return float(zxcvbn(value[:100])["guesses_log10"])


def _entries(value: str) -> list[str]:
    return [entry.strip() for entry in value.split(",") if entry.strip()]


def _default_data_dir() -> Path:
    return Path.cwd() / "var"


def parse_senders(value: str) -> tuple[str, ...]:
    """``AFTERCARE_TWILIO_FROM``: one sender (a number or an alphanumeric ID, as Twilio takes it),
    or a pool of E.164 numbers separated by commas. Raises ValueError naming a bad entry."""
    if "," not in value:
        return (value.strip(),) if value.strip() else ()
    senders = tuple(part.strip() for part in value.split(","))
    for position, sender in enumerate(senders, start=1):
        if not sender:
            raise ValueError(f"AFTERCARE_TWILIO_FROM: entry {position} of the list is empty")
        if not _E164.fullmatch(sender):
            raise ValueError(
                f"AFTERCARE_TWILIO_FROM: entry {position} ({sender!r}) is not an E.164 number "
                "such as +447700900123 (a list of senders holds numbers only)"
            )
        if sender in senders[: position - 1]:
            raise ValueError(f"AFTERCARE_TWILIO_FROM: {sender} is listed twice")
    return senders


_E164 = re.compile(r"\+[1-9]\d{6,14}")


class Settings(BaseSettings):
    """Configuration of one Aftercare deployment."""

    model_config = SettingsConfigDict(
        env_prefix="AFTERCARE_", env_file=".env", extra="ignore", validate_default=True
    )

    data_dir: Path = Field(default_factory=_default_data_dir)
    database_url: str = ""
    broker_url: str = ""
    sms_transport: Literal["console", "outbox", "twilio"] = "console"
    email_transport: Literal["console", "outbox", "smtp"] = "outbox"
    twilio_account_sid: str = ""
    twilio_auth_token: str = ""
    # One sender (number or alphanumeric ID), or a comma-separated pool of E.164 numbers.
    twilio_from: str = ""
    twilio_messaging_service_sid: str = ""
    twilio_api_base: str = "https://api.twilio.com"
    sms_mps: float = Field(default=10.0, gt=0)
    smtp_url: str = ""
    email_from: str = "aftercare@localhost"
    # A mailbox someone reads: set as Reply-To, and only then do emails invite a reply.
    email_reply_to: str = ""
    # Discreet messages (a neutral first line and subject) for patients enrolled without a choice.
    discreet_default: bool = False
    secret_key: str = ""
    public_base_url: str = "http://127.0.0.1:8000"
    clinic_name: str = "Your clinic"
    clinic_phone: str = "your clinic"
    default_timezone: str = "Europe/London"
    quiet_hours: str = "21:00-08:00"
    schedules_dir: Path = _REPO_ROOT / "schedules"
    templates_dir: Path = _REPO_ROOT / "templates"
    # "system", or "file:PATH" (a file holding an ISO-8601 instant; used by the demo and tests
    # to move time forward for every process at once).
    clock: str = "system"
    dispatch_interval: float = Field(default=2.0, gt=0)
    # How often stuck work is recovered (lost broker messages, sends left mid-way, the work of
    # a worker process that is gone). Each run is a few index scans.
    recover_interval: float = Field(default=10.0, gt=0)
    # Reminders queued or sending longer than this are considered stuck (whoever holds them).
    stale_after: float = Field(default=300.0, gt=0)
    # A worker process holding reminders in 'sending' renews a lease every ninth of this; once
    # it has not for this long, recovery takes its reminders over (leases.py). Provider calls
    # must end within two thirds of it (Twilio: 20 s, SMTP: 30 s by default).
    worker_lease: float = Field(default=45.0, ge=9)
    dispatch_batch: int = Field(default=500, ge=1, le=10_000)
    # Backpressure: dispatch claims no more while this many reminders wait in the broker
    # (0: no limit). About two dispatch intervals of what the send workers drain.
    dispatch_max_queued: int = Field(default=5000, ge=0)
    # Reminder ids per send task. A batch's messages go out concurrently, so a bigger one keeps
    # more round trips in flight: 50 delivered 435-593 reminders/s against 303-411 with 20 (bench
    # delivery scenario, fake providers, three A/B pairs on a shared 2-core machine).
    send_batch: int = Field(default=50, ge=1, le=500)
    worker_concurrency: int = Field(default=2, ge=1)
    # Port for the worker's own Prometheus metrics (0: off).
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)
    log_level: str = "INFO"
    # Celery task events (task-sent/-received/-succeeded...) for monitoring tools such as Flower;
    # they carry task names, ids and argument reprs, which are ids only.
    task_events: bool = False
    # Days after a patient's regimen ended (the due time of the last reminder of their last
    # session) before the daily retention task anonymises them. Two years: this service holds
    # contact details and reminder logs, not the clinical record; see docs/retention.md.
    retention_days: int = Field(default=730, ge=1, le=36_500)
    # Reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed: comma-separated IPs
    # or CIDR networks. Empty: the connecting address is the client, whatever headers it sends
    # (so nobody can pick a new address per login guess).
    trusted_proxies: str = ""
    # The largest request body any route accepts (413 beyond it, checked on Content-Length and as
    # a chunked body arrives). The login form and the unsubscribe POST have smaller fixed limits.
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=64 * 1024 * 1024)
    # An emergency or urgent flag nobody has acknowledged this many seconds after its latest
    # page pages the next person on the on-call rota (then every admin): aftercare/oncall.
    escalate_after: float = Field(default=900.0, gt=0)
    # When the clinic answers its phone, e.g. "Mon-Fri 08:30-17:30; Sat 09:00-13:00" (in
    # AFTERCARE_DEFAULT_TIMEZONE; days not named are closed). Empty: not said to patients.
    opening_hours: str = ""

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        """Fill ``X`` from the file named by ``AFTERCARE_X_FILE`` when ``X`` itself is unset."""
        if not isinstance(data, dict):
            return data
        for name in _SECRET_FIELDS:
            path = os.environ.get(f"AFTERCARE_{name.upper()}_FILE")
            if path and not data.get(name) and not os.environ.get(f"AFTERCARE_{name.upper()}"):
                data[name] = Path(path).read_text(encoding="utf-8").strip()
        return data

    @field_validator("default_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from aftercare.validation import patient_zones

        # The zone of every patient enrolled without one: the same rule as a patient's own.
        if value not in patient_zones():
            raise ValueError(f"unknown IANA time zone {value!r} (e.g. Europe/London)")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, value: str) -> str:
        for entry in _entries(value):
            if entry == "*":
                raise ValueError("'*' lets any client choose its own address; name the proxies")
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError as exc:
                raise ValueError(f"{entry!r} is not an IP address or CIDR network") from exc
        return value

    @field_validator("twilio_from")
    @classmethod
    def _twilio_senders(cls, value: str) -> str:
        parse_senders(value)  # a list must hold E.164 numbers only; names a bad entry
        return value

    @field_validator("email_reply_to")
    @classmethod
    def _reply_mailbox(cls, value: str) -> str:
        value = value.strip()
        local, at, domain = value.rpartition("@")
        if value and (not at or not local or "." not in domain or any(c.isspace() for c in value)):
            raise ValueError("must be one email address, such as aftercare@clinic.example")
        return value

    @field_validator("quiet_hours")
    @classmethod
    def _quiet_hours_format(cls, value: str) -> str:
        QuietHours.parse(value)
        return value

    @field_validator("opening_hours")
    @classmethod
    def _opening_hours_format(cls, value: str) -> str:
        from aftercare.planning.hours import OpeningHours

        OpeningHours.parse(value)
        return value

    @field_validator("clock")
    @classmethod
    def _clock_format(cls, value: str) -> str:
        if value != "system" and not value.startswith("file:"):
            raise ValueError("must be 'system' or 'file:PATH'")
        return value

    @field_validator("secret_key")
    @classmethod
    def _no_placeholder_secret(cls, value: str) -> str:
        if not value:
            return value  # the embedded default generates one (effective_secret_key)
        if value.strip().lower() in PLACEHOLDER_SECRETS:
            raise ValueError("is a placeholder; set a long random value")
        if len(value) < MIN_SECRET_LENGTH or _secret_guesses_log10(value) < MIN_SECRET_GUESSES:
            raise ValueError(
                f"is too short or too easy to guess: use at least {MIN_SECRET_LENGTH} random "
                "characters, e.g. the output of "
                "python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        return value

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> Settings:
        """Settings from the ``AFTERCARE_*`` entries of ``env`` only (the environment a child
        process will be given), not from this process's own environment or ``.env``."""
        prefix = "AFTERCARE_"
        return cls.model_validate(
            {k.removeprefix(prefix).lower(): v for k, v in env.items() if k.startswith(prefix)}
        )

    # Derived values -------------------------------------------------------------------------

    @property
    def embedded(self) -> bool:
        """True when running on the embedded default (no database configured)."""
        return not self.database_url

    @property
    def production(self) -> bool:
        """A database or broker is configured: messages go to real patients."""
        return bool(self.database_url or self.broker_url)

    def clinic_placeholders(self) -> list[str]:
        """The clinic settings patients would read as placeholders (unset, or no phone digits)."""
        unset = []
        if self.clinic_name.strip().casefold() in PLACEHOLDER_CLINIC_NAMES:
            unset.append("AFTERCARE_CLINIC_NAME")
        if not any(ch.isdigit() for ch in self.clinic_phone):
            unset.append("AFTERCARE_CLINIC_PHONE")
        return unset

    def clinic_warning(self) -> str | None:
        """One plain sentence when the clinic's name or phone is a placeholder, else None."""
        unset = self.clinic_placeholders()
        if not unset:
            return None
        shown = f"'{self.clinic_name}: Hi ...' and 'call us on {self.clinic_phone}'"
        then = (
            "Until then no patient messages are sent."
            if self.production
            else "Set them before real patients are enrolled."
        )
        return (
            f"{' and '.join(unset)} {'is' if len(unset) == 1 else 'are'} not set, so patients "
            f"would read {shown}. {then}"
        )

    def sender_warning(self) -> str | None:
        """One plain sentence when the SMS sender is an alphanumeric ID, which patients cannot
        reply to, while the texts ask for replies (the check-in's 1, 2 or 3), else None."""
        senders = parse_senders(self.twilio_from) if self.sms_transport == "twilio" else ()
        if len(senders) != 1 or not any(ch.isalpha() for ch in senders[0]):
            return None
        return (
            f"AFTERCARE_TWILIO_FROM is the name {senders[0]!r}, and patients cannot reply to a "
            "name, yet the check-in text asks them to reply 1, 2 or 3, and texts say they "
            "can reply STOP. Use a phone number (or a Messaging Service with one) to get replies."
        )

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'aftercare.sqlite3'}"

    @property
    def effective_broker_url(self) -> str:
        # With a host named, kombu does not warn "No hostname was supplied" on each connection.
        return self.broker_url or "filesystem://localhost//"

    @property
    def broker_folder(self) -> Path:
        return self.data_dir / "broker"

    def broker_transport_options(self) -> dict[str, Any]:
        """Kombu's transport options for the broker (the file broker's folders, made private)."""
        url = self.effective_broker_url
        if url.startswith("filesystem://"):
            from aftercare.private import private_dir

            folder = self.broker_folder
            for sub in ("queue", "processed"):
                private_dir(folder / sub)
            return {
                "data_folder_in": str(folder / "queue"),
                "data_folder_out": str(folder / "queue"),
                "processed_folder": str(folder / "processed"),
                "store_processed": False,
                "polling_interval": 0.2,
            }
        if url.startswith(("redis://", "rediss://")):
            return {"visibility_timeout": 3600}
        return {}

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    @property
    def trusted_proxy_list(self) -> list[str]:
        """``AFTERCARE_TRUSTED_PROXIES`` as a list of IP addresses and networks."""
        return _entries(self.trusted_proxies)

    @property
    def hours(self) -> OpeningHours:
        from aftercare.planning.hours import OpeningHours

        return OpeningHours.parse(self.opening_hours)

    @property
    def quiet(self) -> QuietHours:
        return QuietHours.parse(self.quiet_hours)

    def effective_secret_key(self) -> str:
        """The signing key; on the embedded default one is generated once under the data folder."""
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret_key"
        if not path.exists():
            import contextlib
            import secrets

            from aftercare.private import private_dir, write_private

            private_dir(self.data_dir)
            # Another process may make it first: then theirs is the key.
            with contextlib.suppress(FileExistsError):
                write_private(path, secrets.token_urlsafe(48).encode())
        return path.read_text(encoding="utf-8").strip()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read on first use (never at import)."""
    return Settings()
