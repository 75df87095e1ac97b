"""Email over SMTP with the standard library, configured by one URL (``AFTERCARE_SMTP_URL``).

    smtp://user:pass@host:587           STARTTLS when the server offers it (credentials only
                                        ever over TLS)
    smtp://host:25?starttls=off         no TLS at all: a local relay; credentials allowed
    smtp://host:587?starttls=require    refuse to send anything without TLS
    smtps://user:pass@host:465          implicit TLS
    ...?timeout=30                      connect/read timeout in seconds

Connections are kept open and reused (a few per process, each closed after
``IDLE_SECONDS`` unused); a refused message is followed by RSET, and a kept connection the
server has dropped is replaced before anything of the message is sent.

Replies: 4xx retry, 5xx fail permanently. The envelope and the DATA command are sent step by
step so that a connection lost *after the message body went out* can be told apart from one
lost before: only the former is ambiguous (the server may have queued it). SMTP keeps no
message log to ask, so ``lookup`` raises LookupUnsupported and delivery sends again; at worst
the patient gets the same email twice, which is acceptable for email (never for SMS).
"""

from __future__ import annotations

import os
import re
import smtplib
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from email.utils import parseaddr
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

from aftercare.channels.base import (
    EmailMessage,
    LookupUnsupported,
    Message,
    SendResult,
    TransportError,
)
from aftercare.channels.smtp.mime import Stamp, new_stamp, render_mime

StartTls = Literal["auto", "off", "require"]
_DEFAULT_PORTS = {"smtp": 587, "smtps": 465}
_LINE_START_DOT = re.compile(rb"^\.", re.MULTILINE)


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    implicit_tls: bool
    starttls: StartTls
    username: str | None
    password: str | None
    timeout: float

    def __repr__(self) -> str:
        # Never print the password (settings dumps, tracebacks).
        return f"SmtpConfig(host={self.host!r}, port={self.port}, starttls={self.starttls!r})"


def parse_smtp_url(url: str) -> SmtpConfig:
    """Read ``AFTERCARE_SMTP_URL``. A ValueError says what is wrong without echoing the URL."""
    if not url:
        raise ValueError("AFTERCARE_SMTP_URL is required when AFTERCARE_EMAIL_TRANSPORT=smtp")
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValueError("AFTERCARE_SMTP_URL must start with smtp:// or smtps://")
    if not parts.hostname:
        raise ValueError("AFTERCARE_SMTP_URL names no host")
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise ValueError("AFTERCARE_SMTP_URL has an invalid port") from None
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    unknown = sorted(set(query) - {"starttls", "timeout"})
    if unknown:
        raise ValueError(f"AFTERCARE_SMTP_URL: unknown option {unknown[0]!r} (starttls, timeout)")
    starttls = query.get("starttls", "auto")
    if starttls not in ("auto", "off", "require"):
        raise ValueError("AFTERCARE_SMTP_URL: starttls must be auto, off or require")
    if parts.scheme == "smtps" and "starttls" in query:
        raise ValueError("AFTERCARE_SMTP_URL: smtps:// is TLS from the start; drop starttls")
    try:
        timeout = float(query.get("timeout", "30"))
    except ValueError:
        timeout = 0.0
    if not 0 < timeout <= 600:
        raise ValueError("AFTERCARE_SMTP_URL: timeout must be a number of seconds (0-600]")
    return SmtpConfig(
        host=parts.hostname,
        port=port,
        implicit_tls=parts.scheme == "smtps",
        starttls=starttls,  # type: ignore[arg-type]  # checked just above
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        timeout=timeout,
    )


def _reply_error(code: int, reply: bytes | str, *, what: str) -> TransportError:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    message = f"SMTP {what}: {code} {text}".strip()
    # 5xx is the server's final word; 4xx (and anything unreadable) may pass.
    return TransportError(message, permanent=500 <= code < 600, code=str(code))


@contextmanager
def _classified(what: str, *, body_sent: bool = False) -> Iterator[None]:
    """Turn smtplib and socket errors into TransportError, ambiguous once the body went out."""
    try:
        yield
    except smtplib.SMTPResponseException as exc:
        raise _reply_error(exc.smtp_code, exc.smtp_error, what=what) from exc
    except smtplib.SMTPNotSupportedError as exc:
        raise TransportError(f"SMTP {what}: {exc}", permanent=True, code="config") from exc
    except (smtplib.SMTPException, OSError) as exc:
        if body_sent:
            raise TransportError(
                f"SMTP connection lost after the message was sent ({type(exc).__name__})",
                permanent=False,
                code="disconnected",
                ambiguous=True,
            ) from exc
        code = "tls" if isinstance(exc, ssl.SSLError) else "connection"
        raise TransportError(
            f"SMTP {what} failed: {type(exc).__name__}: {exc}", permanent=False, code=code
        ) from exc


def _expect(reply: tuple[int, bytes], *accepted: int) -> None:
    code, text = reply
    if code not in accepted:
        raise smtplib.SMTPResponseException(code, text)


# A connection that waited longer than this is closed rather than used again: servers drop idle
# clients (RFC 5321 lets them after 5 minutes, many sooner), and a reconnect costs less than
# discovering a dead connection.
IDLE_SECONDS = 15.0
# Connections kept open between messages, per process: as many as delivery's send threads.
MAX_IDLE = 8
# Failures after which the connection cannot carry another message.
_CONNECTION_LOST = frozenset({"connection", "tls", "disconnected", "421"})


class SmtpTransport:
    """Email over SMTP, reusing connections: a batch's emails (sent by several threads at once)
    go over a few open, logged-in connections instead of one new connection each (EHLO,
    STARTTLS and AUTH are most of an email's round trips). Thread-safe."""

    name = "smtp"
    channel: Literal["sms", "email"] = "email"

    def __init__(
        self,
        *,
        config: SmtpConfig,
        sender: str,
        ssl_context: ssl.SSLContext | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.sender = sender
        self.envelope_from = parseaddr(sender)[1] or sender
        # Message-IDs end in the sender's domain.
        self._domain = self.envelope_from.rpartition("@")[2] or None
        # Injected by tests that trust their own certificate; otherwise the system's CAs.
        self._ssl_context = ssl_context
        self._monotonic = monotonic
        # Open connections not in use, with when each was last used; this process's only.
        self._idle: list[tuple[smtplib.SMTP, float]] = []
        self._idle_pid = os.getpid()
        self._lock = threading.Lock()
        # A transport dropped without close() still closes its sockets (no QUIT).
        weakref.finalize(self, _close_all, self._idle)

    @classmethod
    def from_url(
        cls, url: str, *, sender: str, ssl_context: ssl.SSLContext | None = None
    ) -> SmtpTransport:
        return cls(config=parse_smtp_url(url), sender=sender, ssl_context=ssl_context)

    def send(self, message: Message) -> SendResult:
        if not isinstance(message, EmailMessage):
            raise TypeError("the SMTP transport sends email only")
        # Made once, before any connection is used: a second try on a new connection sends the
        # same email (Date, Message-ID), and a malformed message fails without reaching a server.
        stamp = new_stamp(message, domain=self._domain)
        international = not (self.envelope_from + message.to).isascii()
        # Raw UTF-8 headers only for an SMTPUTF8 conversation; RFC 2047 encoded words otherwise.
        data = render_mime(message, sender=self.sender, stamp=stamp, utf8=international)
        client = self._take()
        reused = client is not None
        if client is None:
            client = self._connect()
        try:
            try:
                self._transmit(client, message, stamp, data)
            except TransportError as exc:
                if not (reused and exc.code in _CONNECTION_LOST and not exc.ambiguous):
                    raise
                # The server dropped the kept connection while it waited; nothing of this
                # message was accepted (the body was not sent): once more on a new connection.
                client.close()
                client = self._connect()
                self._transmit(client, message, stamp, data)
        except TransportError as exc:
            if exc.ambiguous or exc.code in _CONNECTION_LOST or not _reset(client):
                client.close()
            else:
                # A refusal of this message only (RSET done): the connection carries the next.
                self._give_back(client)
            raise
        except BaseException:
            # No QUIT: the server may be hung, and QUIT would wait out another timeout.
            client.close()
            raise
        self._give_back(client)
        return SendResult(provider_id=stamp.message_id.strip("<>")[:64])

    def close(self) -> None:
        """Say goodbye on every kept connection (they are otherwise left to the server's idle
        timeout when the process ends)."""
        with self._lock:
            idle = list(self._idle)
            self._idle.clear()
        for client, _ in idle:
            _quit(client)

    def _take(self) -> smtplib.SMTP | None:
        """A kept connection that has not waited too long, or None."""
        stale: list[smtplib.SMTP] = []
        found: smtplib.SMTP | None = None
        with self._lock:
            if self._idle_pid != os.getpid():
                # Forked: the parent's connections are not ours to use (nor to close).
                self._idle.clear()
                self._idle_pid = os.getpid()
            now = self._monotonic()
            while self._idle:
                client, since = self._idle.pop()
                if now - since <= IDLE_SECONDS:
                    found = client
                    break
                stale.append(client)
        for client in stale:
            client.close()
        return found

    def _give_back(self, client: smtplib.SMTP) -> None:
        with self._lock:
            if self._idle_pid == os.getpid() and len(self._idle) < MAX_IDLE:
                self._idle.append((client, self._monotonic()))
                return
        _quit(client)

    def lookup(self, message: Message, *, since: datetime) -> SendResult | None:
        raise LookupUnsupported("SMTP servers keep no message log a client can query")

    def _context(self) -> ssl.SSLContext:
        return self._ssl_context or ssl.create_default_context()

    def _connect(self) -> smtplib.SMTP:
        """An open, greeted, secured and logged-in connection."""
        config = self.config
        # Host given to the constructor (which connects and checks the 220 greeting): smtplib
        # only remembers it there, and TLS needs it to check the server's certificate.
        with _classified("connect"):
            client = (
                smtplib.SMTP_SSL(
                    config.host, config.port, timeout=config.timeout, context=self._context()
                )
                if config.implicit_tls
                else smtplib.SMTP(config.host, config.port, timeout=config.timeout)
            )
        try:
            with _classified("connect"):
                client.ehlo_or_helo_if_needed()
                self._secure(client)
            if config.username:
                if not client.has_extn("auth"):
                    raise TransportError(
                        "SMTP server offers no AUTH but AFTERCARE_SMTP_URL has credentials",
                        permanent=True,
                        code="config",
                    )
                with _classified("login"):
                    client.login(config.username, config.password or "")
        except BaseException:
            client.close()
            raise
        return client

    def _secure(self, client: smtplib.SMTP) -> None:
        config = self.config
        if config.implicit_tls or config.starttls == "off":
            return
        if client.has_extn("starttls"):
            client.starttls(context=self._context())
            client.ehlo()
            return
        if config.starttls == "require":
            raise TransportError(
                "SMTP server does not offer STARTTLS and starttls=require",
                permanent=True,
                code="tls-required",
            )
        if config.username:
            raise TransportError(
                "SMTP server does not offer STARTTLS: refusing to send the password in clear "
                "(use smtps://, or ?starttls=off for a local relay)",
                permanent=True,
                code="tls-required",
            )

    def _transmit(
        self, client: smtplib.SMTP, message: EmailMessage, stamp: Stamp, data: bytes
    ) -> None:
        """MAIL, RCPT, DATA, then the body (``data``, rendered for an 8BITMIME server): only a
        failure after the body is ambiguous."""
        to = message.to
        international = not (self.envelope_from + to).isascii()
        eight_bit = client.has_extn("8bitmime")
        options = ["BODY=8BITMIME"] if eight_bit else []
        if not eight_bit:
            # Base64/quoted-printable bodies for a server that only takes 7-bit text.
            data = render_mime(
                message, sender=self.sender, stamp=stamp, utf8=international, eight_bit=False
            )
        if international:
            if not client.has_extn("smtputf8"):
                raise TransportError(
                    "SMTP server cannot take an internationalised address (no SMTPUTF8)",
                    permanent=True,
                    code="smtputf8",
                )
            options.append("SMTPUTF8")
        payload = _LINE_START_DOT.sub(b"..", data)
        with _classified("envelope"):
            _expect(client.mail(self.envelope_from, options), 250)
            _expect(client.rcpt(to), 250, 251)
            _expect(client.docmd("DATA"), 354)
        with _classified("data", body_sent=True):
            client.send(payload + b".\r\n")
            reply = client.getreply()
        # The server's final answer, whatever it is, is not ambiguous.
        with _classified("data"):
            _expect(reply, 250)


def _close_all(idle: list[tuple[smtplib.SMTP, float]]) -> None:
    for client, _ in idle:
        client.close()
    idle.clear()


def _reset(client: smtplib.SMTP) -> bool:
    """RSET after a refused message, so the connection can carry the next one; False if the
    connection cannot."""
    try:
        code, _ = client.rset()
    except (smtplib.SMTPException, OSError):
        return False
    return code == 250


def _quit(client: smtplib.SMTP) -> None:
    """Say goodbye after the message was accepted; a failure here changes nothing."""
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        # The message is already accepted (250): a lost QUIT must not turn it into a failure.
        client.close()
