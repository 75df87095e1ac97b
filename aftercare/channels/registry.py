"""Pick a transport by configuration."""

from __future__ import annotations

from aftercare.channels.base import Transport
from aftercare.channels.console import ConsoleTransport
from aftercare.channels.outbox import OutboxTransport
from aftercare.settings import Settings


def build_transport(channel: str, settings: Settings) -> Transport:
    if channel == "sms":
        sms = settings.sms_transport
        if sms == "console":
            return ConsoleTransport("sms")
        if sms == "outbox":
            return OutboxTransport("sms", settings.outbox_dir)
        raise ValueError(f"SMS transport {sms!r} is not available yet")
    if channel == "email":
        email = settings.email_transport
        if email == "console":
            return ConsoleTransport("email")
        if email == "outbox":
            return OutboxTransport("email", settings.outbox_dir, sender=settings.email_from)
        raise ValueError(f"email transport {email!r} is not available yet")
    raise ValueError(f"unknown channel {channel!r}")
