"""Twilio SMS transport: the official ``twilio`` client, built on first use from settings.

Errors are sorted into what delivery needs to know:

* transient (retry later): 429 / 20429, any 5xx, a connection that never opened, the shared rate
  limiter being unavailable, and Twilio refusing *our* account or sender (a configuration fault
  the operator fixes; failing every patient's reminder for it would be wrong);
* permanent (fail the reminder, flag it): the recipient's number is invalid, unreachable or not
  a mobile (21211, 21614, 21612, 21408, ...); 21610 also means the recipient has opted out;
* ambiguous (the request may have been accepted): a read timeout or a connection dropped after
  the request was written. Delivery then calls :meth:`TwilioTransport.lookup` before any retry.

Twilio's error text quotes the recipient's number; it is redacted from every TransportError and
nothing here logs it. The twilio client's own request log (which prints list filters, i.e. the
number) goes to a private logger that is never emitted.

Under the twilio client, requests go through :mod:`aftercare.channels.twilio.http` (httpx), which
says whether a failed request may have left; the stock requests-based client is kept only for a
SOCKS proxy, which httpx does not speak without extras.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import requests
import urllib3.exceptions

from aftercare.channels.base import (
    LookupUnsupported,
    Message,
    SendResult,
    Slot,
    SlotMissed,
    SmsMessage,
    TransportError,
)
from aftercare.channels.twilio import codes
from aftercare.channels.twilio.http import HttpFailure
from aftercare.channels.twilio.ratelimit import (
    MISSED,
    RateLimiter,
    RateLimiterUnavailable,
    RateLimitTimeout,
    build_rate_limiter,
)
from aftercare.channels.twilio.senders import SenderPool, parse_senders

if TYPE_CHECKING:
    from aftercare.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timeouts:
    """Seconds to open a connection, and to wait for Twilio's answer once the request is sent."""

    connect: float = 5.0
    read: float = 20.0


# How far our clock and Twilio's may disagree when looking a message up.
CLOCK_SKEW = timedelta(minutes=10)
LOOKUP_LIMIT = 50
RECENT_LIMIT = 20
TRIAL_PREFIX = "Sent from your Twilio trial account - "

_NUMBER = re.compile(r"\+?\d[\d ]{6,14}\d")


def redact(text: str, number: str) -> str:
    """``text`` without the recipient's number (or anything that looks like a phone number)."""
    return _NUMBER.sub("<number>", text.replace(number, "<number>"))


class _RedactRecipient(logging.Filter):
    """Blank the ``To=`` filter out of urllib3's request lines (its DEBUG log prints URLs)."""

    _TO = re.compile(r"(To=)[^&\s\"]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self._TO.sub(r"\1<redacted>", a) if isinstance(a, str) else a for a in record.args
            )
        return True


_REDACT_RECIPIENT = _RedactRecipient()


def missing_settings(settings: Settings) -> list[str]:
    """The ``AFTERCARE_*`` variables the Twilio transport needs and does not have."""
    missing = [
        f"AFTERCARE_{name.upper()}"
        for name in ("twilio_account_sid", "twilio_auth_token")
        if not getattr(settings, name)
    ]
    if not (settings.twilio_from or settings.twilio_messaging_service_sid):
        missing.append("AFTERCARE_TWILIO_FROM or AFTERCARE_TWILIO_MESSAGING_SERVICE_SID")
    return missing


class TwilioTransport:
    """Send SMS through Twilio's Messages API, from one sender or a pool of numbers, each paced
    by a shared rate limiter. Safe to call from several threads at once."""

    name = "twilio"
    channel: Literal["sms", "email"] = "sms"

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        from_: str = "",
        messaging_service_sid: str = "",
        status_callback: str,
        api_base: str = "https://api.twilio.com",
        limiter: RateLimiter,
        timeouts: Timeouts | None = None,
    ) -> None:
        if not (account_sid and auth_token and (from_ or messaging_service_sid)):
            raise ValueError("Twilio needs an account SID, an auth token and a sender")
        self._account_sid = account_sid
        self._auth_token = auth_token
        # One sender, or a pool of numbers (each patient always texted from the same one).
        self._pool = SenderPool(parse_senders(from_), messaging_service_sid=messaging_service_sid)
        self._messaging_service_sid = messaging_service_sid
        self._status_callback = status_callback
        self._api_base = api_base.rstrip("/")
        self._limiter = limiter
        self._timeouts = timeouts or Timeouts()
        # One twilio client (its own requests session) per sending thread: delivery sends a
        # batch's messages concurrently, and the client keeps per-request state.
        self._local = threading.local()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        limiter: RateLimiter | None = None,
        timeouts: Timeouts | None = None,
    ) -> TwilioTransport:
        """The transport the settings describe; raises ValueError naming what is missing."""
        missing = missing_settings(settings)
        if missing:
            raise ValueError(f"the Twilio SMS transport needs {', '.join(missing)}")
        return cls(
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token,
            # A Messaging Service picks the sender itself; 'From' would override its pool.
            from_="" if settings.twilio_messaging_service_sid else settings.twilio_from,
            messaging_service_sid=settings.twilio_messaging_service_sid,
            status_callback=f"{settings.public_base_url.rstrip('/')}/webhooks/twilio/status",
            api_base=settings.twilio_api_base,
            limiter=limiter
            or build_rate_limiter(broker_url=settings.broker_url, mps=settings.sms_mps),
            timeouts=timeouts,
        )

    @property
    def sender(self) -> str:
        """What Twilio's per-sender limit counts against: the number/ID or the service (with a
        pool of numbers, the first one; :meth:`pacing_key` picks a message's)."""
        return self._pool.keys[0]

    @property
    def senders(self) -> tuple[str, ...]:
        """Every sender messages may come from: the service, or the number(s)."""
        return self._pool.keys

    def pacing_key(self, message: Message) -> str:
        """The sender that sends ``message``, which Twilio paces it by: the service, or the
        recipient's pool number (the dispatcher orders claims by the same key,
        :func:`aftercare.channels.registry.pacing_key`)."""
        return self._pool.key(_sms(message).to)

    def reserve(self, messages: Sequence[Message], *, within: float) -> list[Slot]:
        """Reserve each message's slot at its sender, if at most ``within`` seconds away (one
        round trip to the shared limiter for all of them); see :class:`PacedTransport`."""
        keys = [self.pacing_key(message) for message in messages]
        try:
            return self._limiter.reserve_many(keys, within=within)
        except RateLimiterUnavailable as exc:
            detail = f"shared rate limiter unavailable ({exc})"
            raise TransportError(detail, permanent=False, code="rate-limiter") from None

    def _messages(self) -> Any:
        """Twilio's Messages list, with this thread's client built on first use (never at
        import)."""
        client = getattr(self._local, "client", None)
        if client is None:
            from twilio.rest import Client

            client = Client(self._account_sid, self._auth_token, http_client=self._http())
            client.api.base_url = self._api_base
            # Lookups filter by recipient in the query string; keep it out of urllib3's DEBUG
            # lines (only the stock client below goes through urllib3; httpx's are dropped).
            logging.getLogger("urllib3.connectionpool").addFilter(_REDACT_RECIPIENT)
            self._local.client = client
        return client.messages

    def _http(self) -> Any:
        """This thread's HTTP layer: httpx (:mod:`.http`), unless the environment routes Twilio
        through a proxy only requests speaks (SOCKS)."""
        from aftercare.channels.twilio import http as twilio_http

        # A logger outside the logging tree: the client logs list filters (the number).
        quiet = logging.Logger("aftercare.twilio.http", logging.WARNING)
        if twilio_http.supported(self._api_base):
            return twilio_http.HttpxClient(
                connect_timeout=self._timeouts.connect,
                read_timeout=self._timeouts.read,
                logger=quiet,
            )
        from twilio.http.http_client import TwilioHttpClient

        http = TwilioHttpClient(timeout=self._timeouts.read, logger=quiet)
        # requests takes (connect, read); the constructor only accepts one number.
        http.timeout = (self._timeouts.connect, self._timeouts.read)
        return http

    def send(self, message: Message, *, at: float | None = None) -> SendResult:
        """Hand one SMS to Twilio: at ``at`` (``time.monotonic()``) when the caller reserved its
        slot for then (:meth:`reserve`), else after waiting for this sender's next slot. Raises
        SlotMissed, having sent nothing, when it reaches ``at`` more than MISSED late."""
        message = _sms(message)
        messages = self._messages()
        sender = self.pacing_key(message)
        sent_from: dict[str, str] = (
            {"messaging_service_sid": sender} if self._messaging_service_sid else {"from_": sender}
        )
        if at is not None:
            # The client is ready before the wait: the request leaves at the slot, not later.
            delay = at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            late = time.monotonic() - at
            if late > MISSED:
                # Too late for the slot (a busy machine): it passes unused, and the caller
                # reserves another rather than this thread sleeping for it.
                raise SlotMissed(late)
        else:
            try:
                self._limiter.acquire(sender)
            except RateLimitTimeout as exc:
                raise TransportError(str(exc), permanent=False, code="rate-limited") from None
            except RateLimiterUnavailable as exc:
                detail = f"shared rate limiter unavailable ({exc})"
                raise TransportError(detail, permanent=False, code="rate-limiter") from None
        from twilio.base.exceptions import TwilioException

        try:
            created = messages.create(
                to=message.to,
                body=message.body,
                status_callback=self._status_callback,
                **sent_from,
            )
        except TwilioException as exc:
            raise _refused(exc, number=message.to) from None
        except (HttpFailure, requests.RequestException) as exc:
            raise _network_error(exc) from None
        except json.JSONDecodeError:
            # Twilio answered but the answer is unreadable: it may have accepted the message.
            raise TransportError(
                "unreadable answer from Twilio", permanent=False, code="bad-answer", ambiguous=True
            ) from None
        return SendResult(provider_id=str(created.sid), status=str(created.status or "queued"))

    def lookup(self, message: Message, *, since: datetime) -> SendResult | None:
        """The message Twilio accepted for this recipient and body since ``since``, if any."""
        if not isinstance(message, SmsMessage):
            raise LookupUnsupported("the Twilio transport only knows SMS")
        window = since.astimezone(UTC) - CLOCK_SKEW
        messages = self._messages()
        from twilio.base.exceptions import TwilioException

        try:
            found = _match(
                messages.list(to=message.to, date_sent_after=window, limit=LOOKUP_LIMIT),
                message,
                window,
            )
            if found is None:
                # Twilio leaves date_sent empty until the carrier has the message, so one still
                # queued at Twilio only shows up in the unfiltered list of recent messages.
                found = _match(messages.list(to=message.to, limit=RECENT_LIMIT), message, window)
        except TwilioException as exc:
            # A failed list page is a bare TwilioException("Unable to fetch page", response).
            code = str(getattr(exc, "code", None) or _status(exc))
            raise TransportError(
                f"Twilio lookup failed (code {code})", permanent=False, code=code
            ) from None
        except (HttpFailure, requests.RequestException, json.JSONDecodeError) as exc:
            raise TransportError(
                f"Twilio lookup failed ({_kind(exc)})", permanent=False, code="lookup"
            ) from None
        return found


def _sms(message: Message) -> SmsMessage:
    if not isinstance(message, SmsMessage):
        raise TypeError("the Twilio transport sends SMS only")
    return message


def _match(records: Iterable[Any], message: SmsMessage, window: datetime) -> SendResult | None:
    for record in records:
        body = str(record.body or "")
        if body not in (message.body, TRIAL_PREFIX + message.body):
            continue
        if record.status in codes.GIVEN_UP:
            continue
        if record.date_created is not None and record.date_created < window:
            continue
        return SendResult(provider_id=str(record.sid), status=str(record.status))
    return None


def _status(exc: Exception) -> int:
    """The HTTP status a twilio exception carries, as an attribute or as its response."""
    status = getattr(exc, "status", None)
    if status is None:
        response = next((a for a in exc.args if hasattr(a, "status_code")), None)
        status = getattr(response, "status_code", 0)
    return int(status or 0)


def _refused(exc: Exception, *, number: str) -> TransportError:
    """Sort a twilio exception into transient or permanent (redacting the number)."""
    status = _status(exc)
    code = int(getattr(exc, "code", None) or status)
    text = getattr(exc, "msg", None) or getattr(exc, "detail", None) or type(exc).__name__
    detail = redact(f"Twilio {status} (code {code}): {text}", number)
    kind = codes.refusal(http_status=status, code=code)
    if kind == "account":
        log.error("Twilio refused our account or sender (code %s): check AFTERCARE_TWILIO_*", code)
    if kind != "permanent":
        return TransportError(detail, permanent=False, code=str(code))
    return TransportError(
        detail, permanent=True, code=str(code), opted_out=codes.is_opted_out(code)
    )


def _kind(exc: Exception) -> str:
    return exc.kind if isinstance(exc, HttpFailure) else type(exc).__name__


def _network_error(exc: HttpFailure | requests.RequestException) -> TransportError:
    """A transport-level failure: transient if nothing was sent, else ambiguous."""
    kind = _kind(exc)
    if not exc.sent if isinstance(exc, HttpFailure) else _never_sent(exc):
        return TransportError(f"could not reach Twilio ({kind})", permanent=False, code="connect")
    return TransportError(
        f"no answer from Twilio after sending ({kind})",
        permanent=False,
        code="no-answer",
        ambiguous=True,
    )


def _never_sent(exc: requests.RequestException) -> bool:
    """True only when the request certainly never left: the connection did not open."""
    # TLS fails in the handshake, before the request is written.
    if isinstance(exc, requests.ConnectTimeout | requests.exceptions.SSLError):
        return True
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema):
        return True
    if isinstance(exc, requests.ConnectionError) and exc.args:
        reason = exc.args[0]
        if isinstance(reason, urllib3.exceptions.MaxRetryError):
            reason = reason.reason
        # NewConnectionError and NameResolutionError are ConnectTimeoutError subclasses.
        return isinstance(reason, urllib3.exceptions.ConnectTimeoutError)
    return False
