"""The SMTP transport against a real SMTP server (aiosmtpd) on a loopback port.

Every assertion is on what the server received, or on how a reply it gave was classified.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage as ParsedEmail
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from dateutil.rrule import rrulestr
from icalendar import Calendar, Event
from sqlalchemy import select

from aftercare.channels.base import EmailMessage, TransportError
from aftercare.channels.smtp.transport import SmtpTransport, parse_smtp_url
from aftercare.clock import FixedClock
from aftercare.reminders import delivery, dispatch, states
from aftercare.runtime import Runtime
from aftercare.storage.models import DeliveryAttempt, Reminder
from tests.conftest import make_settings
from tests.factories import PATIENT_EMAIL, PATIENT_NAME, enrol

SENDER = "care@riverside.example"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    mail_options: list[str]
    data: bytes
    tls: bool


@dataclass
class Recorder:
    """An aiosmtpd handler that keeps every accepted message and can answer badly on demand."""

    received: list[Received] = field(default_factory=list)
    mail_reply: str | None = None
    rcpt_reply: str | None = None
    data_replies: list[str] = field(default_factory=list)  # for the next messages, in turn
    drop_at_rcpt: bool = False
    stall_after_data: float = 0.0  # keep the message, then answer only this much later
    require_auth: bool = False

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.require_auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.drop_at_rcpt:
            server.transport.close()
            return "250 OK"
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_replies:
            return self.data_replies.pop(0)
        self.received.append(
            Received(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                mail_options=list(envelope.mail_options),
                data=envelope.content,
                # STARTTLS sets session.ssl; implicit TLS shows on the transport.
                tls=session.ssl is not None
                or server.transport.get_extra_info("ssl_object") is not None,
            )
        )
        if self.stall_after_data:
            await asyncio.sleep(self.stall_after_data)
        return "250 2.0.0 Message accepted for delivery"


@dataclass
class Accounts:
    """An aiosmtpd authenticator with one account; records every attempt."""

    login: bytes
    password: bytes
    attempts: list[tuple[bytes, bytes]] = field(default_factory=list)

    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        self.attempts.append((auth_data.login, auth_data.password))
        ok = (auth_data.login, auth_data.password) == (self.login, self.password)
        return AuthResult(success=ok, handled=False)


class LoopbackServer(Controller):  # type: ignore[misc]
    """aiosmtpd on 127.0.0.1, on a free port the OS picks."""

    def __init__(self, handler: Recorder, **smtp: Any) -> None:
        super().__init__(handler, hostname="127.0.0.1", port=0, server_hostname="mail.test", **smtp)
        self.recorder = handler

    def _trigger_server(self) -> None:
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


StartServer = Callable[..., LoopbackServer]


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    started: list[LoopbackServer] = []

    def start(handler: Recorder | None = None, **smtp: Any) -> LoopbackServer:
        server = LoopbackServer(handler or Recorder(), **smtp)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def mail(start_server: StartServer) -> LoopbackServer:
    return start_server()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cert, key)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-nodes", "-days", "2",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


@pytest.fixture
def client_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    """What a client that trusts the test certificate (and nothing else) uses."""
    return ssl.create_default_context(cafile=str(certificate[0]))


def sample_email(key: str = "reminder-7") -> EmailMessage:
    return EmailMessage(
        key=key,
        to=PATIENT_EMAIL,
        subject="Looking after your legs – day 1",
        text="Keep your stockings on.\n.\n.A line that starts with a dot.\n",
        html="<p>Keep your stockings on.</p>",
        headers={"List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
    )


def transport(url: str, context: ssl.SSLContext | None = None) -> SmtpTransport:
    return SmtpTransport.from_url(url, sender=SENDER, ssl_context=context)


def parsed(received: Received) -> ParsedEmail:
    message = message_from_bytes(received.data, policy=policy.default)
    assert isinstance(message, ParsedEmail)
    return message


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- AFTERCARE_SMTP_URL -------------------------------------------------------------------------


def test_smtp_url_when_credentials_are_percent_encoded_then_decoded() -> None:
    config = parse_smtp_url("smtp://care%40clinic.example:p%40ss%3Aword%2F1@mail.example:2525")
    assert (config.host, config.port, config.implicit_tls) == ("mail.example", 2525, False)
    assert (config.username, config.password) == ("care@clinic.example", "p@ss:word/1")
    assert config.starttls == "auto"
    assert "p@ss" not in repr(config)


def test_smtp_url_when_no_port_then_submission_and_smtps_defaults() -> None:
    assert parse_smtp_url("smtp://mail.example").port == 587
    smtps = parse_smtp_url("smtps://u:p@mail.example?timeout=5")
    assert (smtps.port, smtps.implicit_tls, smtps.timeout) == (465, True, 5.0)
    assert parse_smtp_url("smtp://relay:25?starttls=off").starttls == "off"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("", "AFTERCARE_SMTP_URL is required"),
        ("http://user:hunter2@mail.example", "smtp:// or smtps://"),
        ("smtp://user:hunter2@:25", "no host"),
        ("smtp://user:hunter2@mail.example:port", "invalid port"),
        ("smtp://user:hunter2@mail.example?tls=yes", "unknown option 'tls'"),
        ("smtp://user:hunter2@mail.example?starttls=maybe", "auto, off or require"),
        ("smtps://user:hunter2@mail.example?starttls=off", "drop starttls"),
        ("smtp://user:hunter2@mail.example?timeout=never", "timeout"),
    ],
)
def test_smtp_url_when_malformed_then_says_why_without_the_password(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as caught:
        parse_smtp_url(url)
    assert "hunter2" not in str(caught.value)


# --- Sending --------------------------------------------------------------------------------------


def test_send_when_server_accepts_then_it_receives_one_multipart_message(
    mail: LoopbackServer,
) -> None:
    result = transport(f"smtp://127.0.0.1:{mail.port}?starttls=off").send(sample_email())
    [received] = mail.recorder.received
    assert (received.mail_from, received.rcpt_tos) == (SENDER, [PATIENT_EMAIL])
    assert "BODY=8BITMIME" in received.mail_options
    message = parsed(received)
    assert message["Subject"] == "Looking after your legs – day 1"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message.get_content_type() == "multipart/alternative"
    plain = message.get_body(preferencelist=("plain",))
    assert plain is not None
    # Dot-stuffing undone by the server: lines starting with "." arrive intact (with CRLF).
    assert (
        plain.get_content().replace("\r\n", "\n")
        == "Keep your stockings on.\n.\n.A line that starts with a dot.\n"
    )
    assert result.provider_id == str(message["Message-ID"]).strip().strip("<>")[:64]


def test_send_when_credentials_in_url_then_server_sees_them_decoded(
    start_server: StartServer,
) -> None:
    accounts = Accounts(login=b"care@clinic.example", password=b"p@ss:word/1")
    server = start_server(
        Recorder(require_auth=True), authenticator=accounts, auth_require_tls=False
    )
    url = f"smtp://care%40clinic.example:p%40ss%3Aword%2F1@127.0.0.1:{server.port}?starttls=off"
    transport(url).send(sample_email())
    assert accounts.attempts == [(b"care@clinic.example", b"p@ss:word/1")]
    assert len(server.recorder.received) == 1


def test_send_when_password_wrong_then_permanent_error_with_smtp_code(
    start_server: StartServer,
) -> None:
    accounts = Accounts(login=b"care", password=b"right")
    server = start_server(
        Recorder(require_auth=True), authenticator=accounts, auth_require_tls=False
    )
    with pytest.raises(TransportError) as caught:
        transport(f"smtp://care:wrong@127.0.0.1:{server.port}?starttls=off").send(sample_email())
    assert (caught.value.permanent, caught.value.code, caught.value.ambiguous) == (
        True,
        "535",
        False,
    )
    assert server.recorder.received == []


def test_send_when_credentials_but_no_tls_offered_then_refuses_before_sending_the_password(
    start_server: StartServer,
) -> None:
    accounts = Accounts(login=b"care", password=b"secret")
    server = start_server(Recorder(), authenticator=accounts, auth_require_tls=False)
    with pytest.raises(TransportError) as caught:
        transport(f"smtp://care:secret@127.0.0.1:{server.port}").send(sample_email())
    assert (caught.value.permanent, caught.value.code) == (True, "tls-required")
    assert accounts.attempts == []
    assert server.recorder.received == []


def test_send_when_tls_required_but_not_offered_then_nothing_is_sent(mail: LoopbackServer) -> None:
    with pytest.raises(TransportError) as caught:
        transport(f"smtp://127.0.0.1:{mail.port}?starttls=require").send(sample_email())
    assert (caught.value.permanent, caught.value.code) == (True, "tls-required")
    assert mail.recorder.received == []


def test_send_when_server_offers_starttls_then_upgrades_before_login(
    start_server: StartServer, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    accounts = Accounts(login=b"care", password=b"secret")
    # The server refuses AUTH (and everything else) before STARTTLS.
    server = start_server(
        Recorder(require_auth=True),
        tls_context=server_tls,
        require_starttls=True,
        authenticator=accounts,
    )
    transport(f"smtp://care:secret@127.0.0.1:{server.port}", client_tls).send(sample_email())
    [received] = server.recorder.received
    assert received.tls
    assert accounts.attempts == [(b"care", b"secret")]


def test_send_over_smtps_then_tls_from_the_first_byte(
    start_server: StartServer, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    server = start_server(ssl_context=server_tls)
    transport(f"smtps://127.0.0.1:{server.port}", client_tls).send(sample_email())
    [received] = server.recorder.received
    assert received.tls


def test_send_when_server_certificate_is_not_trusted_then_transient_tls_error(
    start_server: StartServer, server_tls: ssl.SSLContext
) -> None:
    server = start_server(ssl_context=server_tls)
    # No injected context: the system's CAs, which never signed the test certificate.
    with pytest.raises(TransportError) as caught:
        transport(f"smtps://127.0.0.1:{server.port}").send(sample_email())
    assert (caught.value.permanent, caught.value.code, caught.value.ambiguous) == (
        False,
        "tls",
        False,
    )
    assert server.recorder.received == []


@pytest.mark.parametrize(
    ("where", "reply", "permanent", "code"),
    [
        ("mail_reply", "421 4.3.2 Service shutting down", False, "421"),
        ("rcpt_reply", "450 4.2.1 Mailbox busy", False, "450"),
        ("rcpt_reply", "550 5.1.1 No such mailbox", True, "550"),
        ("data_replies", "451 4.3.0 Try again later", False, "451"),
        ("data_replies", "554 5.6.0 Message refused", True, "554"),
    ],
)
def test_send_when_server_refuses_then_4xx_transient_5xx_permanent_never_ambiguous(
    mail: LoopbackServer, where: str, reply: str, permanent: bool, code: str
) -> None:
    setattr(mail.recorder, where, [reply] if where == "data_replies" else reply)
    with pytest.raises(TransportError) as caught:
        transport(f"smtp://127.0.0.1:{mail.port}?starttls=off").send(sample_email())
    error = caught.value
    assert (error.permanent, error.code, error.ambiguous) == (permanent, code, False)
    assert mail.recorder.received == []


def test_send_when_connection_refused_then_transient_not_ambiguous() -> None:
    with pytest.raises(TransportError) as caught:
        transport(f"smtp://127.0.0.1:{unused_port()}?starttls=off").send(sample_email())
    assert (caught.value.permanent, caught.value.code, caught.value.ambiguous) == (
        False,
        "connection",
        False,
    )


def test_send_when_server_hangs_up_before_data_then_transient_not_ambiguous(
    mail: LoopbackServer,
) -> None:
    mail.recorder.drop_at_rcpt = True
    with pytest.raises(TransportError) as caught:
        transport(f"smtp://127.0.0.1:{mail.port}?starttls=off").send(sample_email())
    assert (caught.value.permanent, caught.value.ambiguous) == (False, False)
    assert mail.recorder.received == []


def test_send_when_no_answer_after_the_message_body_then_ambiguous(mail: LoopbackServer) -> None:
    mail.recorder.stall_after_data = 3.0
    with pytest.raises(TransportError) as caught:
        transport(f"smtp://127.0.0.1:{mail.port}?starttls=off&timeout=0.5").send(sample_email())
    assert (caught.value.permanent, caught.value.ambiguous) == (False, True)
    # The server did get it: this is why an ambiguous email may arrive twice.
    assert len(mail.recorder.received) == 1


def test_send_when_recipient_address_is_international_then_smtputf8_and_raw_utf8_headers(
    start_server: StartServer,
) -> None:
    server = start_server()  # aiosmtpd's Controller offers SMTPUTF8
    message = replace(sample_email(), to="zoë@exämple.com")
    transport(f"smtp://127.0.0.1:{server.port}?starttls=off").send(message)
    [received] = server.recorder.received
    assert received.rcpt_tos == ["zoë@exämple.com"]
    assert "SMTPUTF8" in received.mail_options
    assert "To: zoë@exämple.com\r\n".encode() in received.data
    assert "Subject: Looking after your legs – day 1\r\n".encode() in received.data
    assert parsed(received)["To"] == "zoë@exämple.com"


def test_send_when_recipient_is_international_but_server_lacks_smtputf8_then_permanent(
    start_server: StartServer,
) -> None:
    server = start_server(enable_SMTPUTF8=False)
    message = replace(sample_email(), to="zoë@exämple.com")
    with pytest.raises(TransportError) as caught:
        transport(f"smtp://127.0.0.1:{server.port}?starttls=off").send(message)
    assert (caught.value.permanent, caught.value.code, caught.value.ambiguous) == (
        True,
        "smtputf8",
        False,
    )
    assert server.recorder.received == []


@dataclass
class SevenBit(Recorder):
    """A server that does not offer 8BITMIME: it only takes 7-bit text."""

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return [r for r in responses if "8BITMIME" not in r]


def test_send_when_server_lacks_8bitmime_then_non_ascii_goes_as_7bit_encodings(
    start_server: StartServer,
) -> None:
    server = start_server(SevenBit())
    message = replace(
        sample_email(), subject="Zoë: day 1", text="Zoë, keep them on.\n", html="<p>Zoë</p>\n"
    )
    transport(f"smtp://127.0.0.1:{server.port}?starttls=off").send(message)
    [received] = server.recorder.received
    assert "BODY=8BITMIME" not in received.mail_options
    assert received.data.isascii()
    parts = list(parsed(received).walk())[1:]
    assert [p["Content-Transfer-Encoding"] for p in parts] == ["base64", "base64"]
    assert [p.get_content() for p in parts] == ["Zoë, keep them on.\n", "<p>Zoë</p>\n"]
    assert parsed(received)["Subject"] == "Zoë: day 1"


# --- Through the delivery service ---------------------------------------------------------------


@pytest.fixture
def smtp_runtime(
    tmp_path: Path, database_url: str, clock: FixedClock, mail: LoopbackServer
) -> Iterator[Runtime]:
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        email_transport="smtp",
        smtp_url=f"smtp://127.0.0.1:{mail.port}?starttls=off&timeout=5",
        email_from=SENDER,
        public_base_url="https://aftercare.riverside.example",
    )
    rt = Runtime(settings)
    rt.clock = clock
    yield rt
    rt.db.dispose()


def claim_all(rt: Runtime) -> list[int]:
    published: list[int] = []

    def publish(ids: Sequence[int]) -> None:
        published.extend(ids)

    dispatch.dispatch_due(db=rt.db, clock=rt.clock, publish=publish)
    return published


def deliver_due(rt: Runtime) -> list[str]:
    deps = rt.delivery_deps()
    return [delivery.deliver(deps=deps, reminder_id=i) for i in claim_all(rt)]


def calendar_of(message: ParsedEmail) -> Calendar | None:
    for part in message.iter_attachments():
        if part.get_filename() == "aftercare.ics":
            assert part.get_content_type() == "text/calendar"
            data = part.get_content()
            return Calendar.from_ical(data.encode() if isinstance(data, str) else data)
    return None


def event(calendar: Calendar, summary: str) -> Event:
    return next(e for e in calendar.walk("VEVENT") if str(e["SUMMARY"]) == summary)


def test_welcome_email_when_delivered_then_arrives_once_with_unsubscribe_and_calendar(
    smtp_runtime: Runtime, mail: LoopbackServer, clock: FixedClock
) -> None:
    treated = clock.now()
    enrol(smtp_runtime, channels=("email",), phone=None)
    assert deliver_due(smtp_runtime) == [states.SENT]
    assert deliver_due(smtp_runtime) == []
    [received] = mail.recorder.received
    assert (received.mail_from, received.rcpt_tos) == (SENDER, [PATIENT_EMAIL])
    message = parsed(received)
    [alternative] = [p for p in message.walk() if p.get_content_type() == "multipart/alternative"]
    assert [p.get_content_type() for p in alternative.iter_parts()] == ["text/plain", "text/html"]
    links = re.findall(r"<([^>]+)>", str(message["List-Unsubscribe"]))
    assert len(links) == 2
    assert links[0].startswith("https://aftercare.riverside.example/unsubscribe/")
    assert links[1].startswith(f"mailto:{SENDER}")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    calendar = calendar_of(message)
    assert calendar is not None
    ics = calendar.to_ical().decode()
    assert PATIENT_NAME.split()[0] not in ics
    assert PATIENT_NAME.split()[1] not in ics
    assert PATIENT_EMAIL not in ics
    continuous = event(calendar, "Compression stockings: day and night")
    assert continuous.end.astimezone(UTC) == treated + timedelta(hours=72)
    daily = event(calendar, "Compression stockings: wear during the day")
    assert daily["DTSTART"].params["TZID"] == "Europe/London"
    assert daily.start.time() == time(8)


def test_later_emails_when_delivered_then_carry_no_calendar(
    smtp_runtime: Runtime, mail: LoopbackServer, clock: FixedClock
) -> None:
    enrol(smtp_runtime, channels=("email",), phone=None)
    deliver_due(smtp_runtime)
    clock.advance(timedelta(hours=2))  # warning signs
    assert deliver_due(smtp_runtime) == [states.SENT]
    first, second = (parsed(r) for r in mail.recorder.received)
    assert calendar_of(first) is not None
    assert calendar_of(second) is None


def test_welcome_calendar_for_new_york_patient_when_dst_starts_then_8am_local_every_day(
    smtp_runtime: Runtime, mail: LoopbackServer, clock: FixedClock
) -> None:
    # Monday 2 March 2026, 10:00 in New York; the clocks there go forward on Sunday 8 March.
    clock.set(datetime(2026, 3, 2, 15, 0, tzinfo=UTC))
    treated = clock.now()
    enrol(
        smtp_runtime,
        channels=("email",),
        phone=None,
        timezone="America/New_York",
        parameters={"daily_days": 14},
    )
    assert deliver_due(smtp_runtime) == [states.SENT]
    calendar = calendar_of(parsed(mail.recorder.received[0]))
    assert calendar is not None
    zone = ZoneInfo("America/New_York")
    continuous = event(calendar, "Compression stockings: day and night")
    assert continuous["DTEND"].params["TZID"] == "America/New_York"
    assert continuous.end.astimezone(UTC) == treated + timedelta(hours=72)
    daily = event(calendar, "Compression stockings: wear during the day")
    days = list(rrulestr(daily["RRULE"].to_ical().decode(), dtstart=daily.start))
    assert len(days) == 14
    assert {d.astimezone(zone).time() for d in days} == {time(8)}
    assert [d.astimezone(UTC).hour for d in days] == [13, 13] + [12] * 12


def test_delivery_when_server_answers_451_then_retried_and_received_once(
    smtp_runtime: Runtime, mail: LoopbackServer, clock: FixedClock
) -> None:
    enrol(smtp_runtime, channels=("email",), phone=None)
    mail.recorder.data_replies = ["451 4.3.0 Try again later"]
    assert deliver_due(smtp_runtime) == ["retry"]
    assert mail.recorder.received == []
    with smtp_runtime.db.session() as s:
        attempt = s.scalars(select(DeliveryAttempt)).one()
        assert (attempt.outcome, attempt.error_code) == ("transient", "451")
    clock.advance(timedelta(minutes=1))
    assert deliver_due(smtp_runtime) == [states.SENT]
    assert len(mail.recorder.received) == 1


def test_delivery_when_server_answers_550_then_failed_permanently(
    smtp_runtime: Runtime, mail: LoopbackServer, clock: FixedClock
) -> None:
    enrol(smtp_runtime, channels=("email",), phone=None)
    mail.recorder.rcpt_reply = "550 5.1.1 No such mailbox"
    assert deliver_due(smtp_runtime) == [states.FAILED]
    with smtp_runtime.db.session() as s:
        attempt = s.scalars(select(DeliveryAttempt)).one()
        reminder = s.scalars(select(Reminder).where(Reminder.id == attempt.reminder_id)).one()
        assert (attempt.outcome, attempt.error_code) == ("permanent", "550")
        assert reminder.state == states.FAILED
    clock.advance(timedelta(hours=1))
    assert mail.recorder.received == []


def test_delivery_when_send_is_ambiguous_then_rescheduled_because_smtp_cannot_be_asked(
    smtp_runtime: Runtime, mail: LoopbackServer, clock: FixedClock, tmp_path: Path
) -> None:
    enrol(smtp_runtime, channels=("email",), phone=None)
    deps = smtp_runtime.delivery_deps()
    deps.transports["email"] = SmtpTransport.from_url(
        f"smtp://127.0.0.1:{mail.port}?starttls=off&timeout=0.5", sender=SENDER
    )
    mail.recorder.stall_after_data = 2.0
    [reminder_id] = claim_all(smtp_runtime)
    assert delivery.deliver(deps=deps, reminder_id=reminder_id) == "resend"
    with smtp_runtime.db.session() as s:
        attempt = s.scalars(select(DeliveryAttempt)).one()
        assert attempt.outcome == "lost"
        assert s.get_one(Reminder, reminder_id).state == states.SCHEDULED
    # The server did keep the first copy: the resend is the documented duplicate.
    assert len(mail.recorder.received) == 1
