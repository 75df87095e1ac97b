"""Pick a transport by configuration."""

from __future__ import annotations

from collections.abc import Callable

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
        if sms == "twilio":
            # Imported here: the twilio client is only loaded by processes that send SMS.
            from aftercare.channels.twilio.transport import TwilioTransport

            return TwilioTransport.from_settings(settings)
        raise ValueError(f"SMS transport {sms!r} is not available yet")
    if channel == "email":
        email = settings.email_transport
        if email == "console":
            return ConsoleTransport("email")
        if email == "outbox":
            return OutboxTransport("email", settings.outbox_dir, sender=settings.email_from)
        if email == "smtp":
            from aftercare.channels.smtp.transport import SmtpTransport

            return SmtpTransport.from_url(settings.smtp_url, sender=settings.email_from)
        raise ValueError(f"email transport {email!r} is not available yet")
    raise ValueError(f"unknown channel {channel!r}")


def pacing_key(settings: Settings, channel: str = "sms") -> Callable[[str], str] | None:
    """The key the chosen transport paces a recipient's messages by, as its ``pacing_key`` would
    give it, when it paces several keys apart (a pool of Twilio numbers); None when every
    message shares one pace. The dispatcher spreads a claim over these keys."""
    if channel == "sms" and settings.sms_transport == "twilio":
        from aftercare.channels.twilio.senders import pacing_key as twilio_pacing_key

        return twilio_pacing_key(settings)
    return None


# A channel-settings finding that is reported but does not fail ``aftercare check``.
WARNING = "warning: "


def check_channel_settings(settings: Settings) -> list[str]:
    """What the chosen SMS and email transports lack, naming each ``AFTERCARE_*`` variable.

    Checked before start-up so a misconfigured provider is found by ``aftercare check``, not by
    the first patient's reminder failing. Findings starting with :data:`WARNING` are advisory.
    """
    faults: list[str] = []
    if settings.sms_transport == "twilio":
        from aftercare.channels.twilio.transport import missing_settings

        faults += [
            f"SMS transport twilio: {name} is not set" for name in missing_settings(settings)
        ]
        faults += _callback_faults(settings.public_base_url)
    if settings.email_transport == "smtp":
        if not settings.smtp_url:
            faults.append("email transport smtp: AFTERCARE_SMTP_URL is not set")
        if not settings.email_from or settings.email_from.endswith("@localhost"):
            faults.append(
                "email transport smtp: AFTERCARE_EMAIL_FROM is not set "
                "(mail servers refuse the default aftercare@localhost)"
            )
    return faults


def _callback_faults(public_base_url: str) -> list[str]:
    """Twilio posts status callbacks and replies to this URL: it must be public, and HTTPS."""
    import ipaddress
    from urllib.parse import urlsplit

    url = urlsplit(public_base_url)
    host = url.hostname or ""
    if url.scheme not in ("http", "https") or not host:
        return [f"SMS transport twilio: AFTERCARE_PUBLIC_BASE_URL {public_base_url!r} is not a URL"]
    faults: list[str] = []
    if url.scheme != "https":
        faults.append(
            f"{WARNING}AFTERCARE_PUBLIC_BASE_URL is not https: Twilio's callbacks and patients' "
            "replies would travel unencrypted"
        )
    try:
        local = not ipaddress.ip_address(host).is_global
    except ValueError:
        local = host == "localhost" or host.endswith((".localhost", ".local", ".internal"))
    if local:
        faults.append(
            f"{WARNING}AFTERCARE_PUBLIC_BASE_URL names {host}, which Twilio cannot reach: "
            "no delivery status or replies will arrive"
        )
    return faults
