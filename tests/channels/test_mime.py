"""render_mime (the SMTP transport's wire bytes, written directly) against what the email
package's EmailMessage produced for the same email: parsed back, both must say the same thing
(headers, part structure, content types, charsets, transfer encodings, decoded payloads)."""

from __future__ import annotations

import email.policy
import re
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import EmailMessage as ParsedEmail
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aftercare.channels.base import Attachment, EmailMessage
from aftercare.channels.smtp.mime import Stamp, new_stamp, render_mime
from aftercare.messages.calendar import regimen_calendar
from aftercare.messages.context import sample_context
from aftercare.messages.render import MessageRenderer
from aftercare.planning.planner import step_instants
from aftercare.planning.quiet import QuietHours
from aftercare.regimens.loader import load_regimen

ROOT = Path(__file__).resolve().parents[2]
REGIMEN = load_regimen(ROOT / "schedules" / "micro-sclerotherapy.yaml")
RENDERER = MessageRenderer(ROOT / "templates")
SENDER = "care@riverside.example"
UNSUBSCRIBE = {
    "List-Unsubscribe": (
        "<https://aftercare.riverside.example/unsubscribe/k3Jq9ZpXw2LmNc7Rt5Vy1A."
        "Hc0b9mYw3rQe8tZ2uKx5nF4vJ7sL1pD6gA0hB2cE9iM>, "
        "<mailto:care@riverside.example?subject=unsubscribe>"
    ),
    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
}
# (utf8, eight_bit): SMTPUTF8 headers or not; a server with 8BITMIME or without.
MODES = [(False, True), (False, False), (True, True), (True, False)]


def calendar() -> bytes:
    treated = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
    parameters: dict[str, int | str] = {"daily_days": 14, "checkin_week": 10}
    return regimen_calendar(
        regimen=REGIMEN,
        session_key="p1:1",
        treated_at=treated,
        timezone="Europe/London",
        parameters=parameters,
        instants=step_instants(
            regimen=REGIMEN,
            treated_at=treated,
            zone=ZoneInfo("Europe/London"),
            parameters=parameters,
            quiet=QuietHours.parse("21:00-08:00"),
        ),
        clinic_name="Riverside Clinic",
        clinic_phone="020 7946 0000",
        stamp=treated,
    )


def regimen_emails(first_name: str, to: str) -> list[EmailMessage]:
    """Every email template of the regimen, as the patient gets it."""
    ics = calendar()
    emails = []
    for number, step in enumerate(REGIMEN.steps):
        context = {
            **sample_context(regimen=REGIMEN, step=step.id, occurrence=0),
            "first_name": first_name,
        }
        rendered = RENDERER.render_email(step.template, context)
        emails.append(
            EmailMessage(
                key=f"reminder-{number}",
                to=to,
                subject=rendered.subject,
                text=rendered.text,
                html=rendered.html,
                headers=UNSUBSCRIBE,
                attachments=(
                    (Attachment("aftercare.ics", "text/calendar", ics),)
                    if step.attach_calendar
                    else ()
                ),
            )
        )
    return emails


def email_(**fields: Any) -> EmailMessage:
    values: dict[str, Any] = {
        "key": "reminder-9",
        "to": "patient@example.com",
        "subject": "Day 3 of 14: stockings on this morning",
        "text": "Hi Sam,\n\nKeep your stockings on.\n",
        "html": "<p>Hi Sam,</p>\n<p>Keep your stockings on.</p>\n",
        "headers": UNSUBSCRIBE,
    }
    return EmailMessage(**(values | fields))


LONG = "Wear them during the day, for about 12 hours each day, until Sunday 12 April. " * 3
HANDMADE = [
    pytest.param(email_(), id="ascii"),
    pytest.param(email_(subject="Looking after your legs – day 1"), id="non-ascii-subject"),
    pytest.param(email_(subject="Zoë, " + LONG.strip()), id="long-non-ascii-subject"),
    pytest.param(email_(subject=LONG.strip()), id="long-ascii-subject"),
    pytest.param(email_(subject="See https://" + "x" * 90 + " now"), id="subject-long-word"),
    pytest.param(email_(subject="脚のケア：" * 12), id="cjk-subject"),
    pytest.param(email_(subject="=?utf-8?q?not_encoded?= really"), id="subject-like-encoded"),
    pytest.param(email_(text="Zoë Ørsted\nshort lines\n"), id="non-ascii-short-lines"),
    pytest.param(email_(text=LONG + "\n" + LONG + "é\n"), id="long-lines"),
    pytest.param(email_(text=("Ελληνικά κείμενα " * 20 + "\n") * 12), id="mostly-non-ascii"),
    pytest.param(
        email_(text=".\n.starts with a dot\nFrom here\ntrailing space \ntab\tin\n\n"),
        id="awkward-lines",
    ),
    pytest.param(email_(text="crlf\r\nlone cr\rend"), id="line-ends"),
    pytest.param(email_(text="", html=""), id="empty-bodies"),
    pytest.param(email_(text="x" * 2000 + "\n"), id="one-2000-octet-line"),
    pytest.param(email_(to="Sam Patient <patient@example.com>"), id="to-with-name"),
    pytest.param(email_(headers={}), id="no-extra-headers"),
    pytest.param(
        email_(
            attachments=(
                Attachment("aftercare.ics", "text/calendar", b"BEGIN:VCALENDAR\r\n"),
                Attachment("plan née.pdf", "application/pdf", bytes(range(256)) * 4),
            )
        ),
        id="attachments",
    ),
]
SENDERS = [
    "care@riverside.example",
    "Riverside Clinic <care@riverside.example>",
    "Clínica Río <care@riverside.example>",
    "Dr. Smith's Clinic <care@riverside.example>",
]


def build_mime(message: EmailMessage, *, sender: str) -> ParsedEmail:
    """The reference: multipart plain text + HTML, with any attachments and extra headers, as
    the email package's EmailMessage builds it (what the transports sent before render_mime)."""
    mime = ParsedEmail()
    mime["From"] = sender
    mime["To"] = message.to
    mime["Subject"] = message.subject
    mime["Date"] = formatdate(localtime=False)
    mime["Message-ID"] = make_msgid(idstring=message.key, domain=sender.rpartition("@")[2] or None)
    mime["X-Aftercare-Key"] = message.key
    for name, value in message.headers.items():
        mime[name] = value
    mime.set_content(message.text)
    mime.add_alternative(message.html, subtype="html")
    for attachment in message.attachments:
        maintype, subtype = attachment.content_type.split("/", 1)
        mime.add_attachment(
            attachment.data, maintype=maintype, subtype=subtype, filename=attachment.filename
        )
    return mime


def old_bytes(
    message: EmailMessage, *, sender: str, stamp: Stamp, utf8: bool, eight: bool
) -> bytes:
    """What the SMTP transport sent before render_mime (the email package's EmailMessage)."""
    mime = build_mime(message, sender=sender)
    mime.replace_header("Date", stamp.date)
    mime.replace_header("Message-ID", stamp.message_id)
    policy = email.policy.SMTPUTF8 if utf8 else email.policy.SMTP
    if not eight:
        policy = policy.clone(cte_type="7bit")
    return mime.as_bytes(policy=policy)


def parse(data: bytes) -> ParsedEmail:
    message = message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, ParsedEmail)
    return message


def meaning(data: bytes) -> list[object]:
    """What a mail reader sees: headers (decoded), then each part's type, parameters,
    disposition, transfer encoding and decoded payload, in order."""
    message = parse(data)
    # Leading white space is folding, not content (the email package keeps it when a value
    # starts on a continuation line, as its Message-IDs did).
    seen: list[object] = [
        (name, str(value).strip())
        for name, value in message.items()
        if name.lower() not in ("content-type", "mime-version")
    ]
    for part in message.walk():
        params = {k: v for k, v in part.get_params(failobj=[]) if k != "boundary"}
        seen.append(
            (
                part.get_content_type(),
                params,
                part.get_content_charset(),
                part.get_content_disposition(),
                part.get_filename(),
                part.get("Content-Transfer-Encoding"),
                None if part.is_multipart() else part.get_payload(decode=True),
            )
        )
    return seen


def check_same(message: EmailMessage, *, sender: str = SENDER) -> None:
    stamp = new_stamp(message, domain="riverside.example")
    for utf8, eight in MODES:
        new = render_mime(message, sender=sender, stamp=stamp, utf8=utf8, eight_bit=eight)
        old = old_bytes(message, sender=sender, stamp=stamp, utf8=utf8, eight=eight)
        assert meaning(new) == meaning(old), (utf8, eight)
        assert not any(part.defects for part in parse(new).walk())
        lines = new.split(b"\r\n")
        assert lines[-1] == b"", "ends with CRLF"
        assert max(map(len, lines)) <= 998
        assert b"\n" not in new.replace(b"\r\n", b""), "bare LF"
        assert b"\r" not in new.replace(b"\r\n", b""), "bare CR"
        head, body = new.split(b"\r\n\r\n", 1)
        assert head.isascii() or utf8, "RFC 2047 headers"
        assert body.isascii() or eight, "7-bit bodies"


@pytest.mark.parametrize("first_name", ["Sam", "Zoë Ørsted-Łukasiewicz"])
def test_regimen_emails_when_rendered_directly_then_read_as_the_email_package_wrote_them(
    first_name: str,
) -> None:
    for message in regimen_emails(first_name, "patient@example.com"):
        check_same(message)


@pytest.mark.parametrize("message", HANDMADE)
def test_handmade_emails_then_read_as_the_email_package_wrote_them(
    message: EmailMessage,
) -> None:
    check_same(message)


@pytest.mark.parametrize("sender", SENDERS)
def test_senders_with_and_without_names_then_from_reads_the_same(sender: str) -> None:
    check_same(email_(), sender=sender)


def test_international_recipient_when_smtputf8_then_raw_utf8_headers() -> None:
    message = email_(to="zoë@exämple.com", subject="Zoë: stockings on")
    stamp = new_stamp(message, domain="riverside.example")
    new = render_mime(message, sender=SENDER, stamp=stamp, utf8=True)
    old = old_bytes(message, sender=SENDER, stamp=stamp, utf8=True, eight=True)
    assert meaning(new) == meaning(old)
    assert "To: zoë@exämple.com\r\n".encode() in new
    assert "Subject: Zoë: stockings on\r\n".encode() in new


def test_list_unsubscribe_then_links_written_as_they_are_never_encoded_words() -> None:
    stamp = new_stamp(email_(), domain="riverside.example")
    data = render_mime(email_(), sender=SENDER, stamp=stamp)
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    unfolded = re.sub(r"\r\n(?=[ \t])", "", head)
    assert f"List-Unsubscribe: {UNSUBSCRIBE['List-Unsubscribe']}" in unfolded.split("\r\n")
    assert "=?" not in head
    assert max(map(len, head.split("\r\n"))) <= 998


def test_calendar_when_attached_then_unchanged_byte_for_byte() -> None:
    ics = calendar()
    message = email_(attachments=(Attachment("aftercare.ics", "text/calendar", ics),))
    data = render_mime(message, sender=SENDER, stamp=new_stamp(message, domain=None))
    parsed = parse(data)
    assert parsed.get_content_type() == "multipart/mixed"
    [part] = list(parsed.iter_attachments())
    assert (part.get_content_type(), part.get_filename()) == ("text/calendar", "aftercare.ics")
    assert part.get_payload(decode=True) == ics


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (email_(subject="Hi\r\nBcc: everyone@example.com"), "linefeed or carriage return"),
        (email_(to="patient@example.com\nBcc: x@example.com"), "linefeed or carriage return"),
        (email_(headers={"X-Note": "a\u2028b"}), "linefeed or carriage return"),
        (email_(headers={"Subject": "a second subject"}), "written by the MIME builder"),
        (email_(headers={"Content-Type": "text/plain"}), "written by the MIME builder"),
    ],
)
def test_header_injection_or_a_second_own_header_then_refused(
    message: EmailMessage, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        render_mime(message, sender=SENDER, stamp=new_stamp(message, domain=None))


# Text, subjects and names of any kind (control characters, other line ends, scripts).
any_line = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)
one_line = any_line.filter(lambda s: s.splitlines() in ([], [s]))


@settings(max_examples=200, deadline=None)
@given(
    subject=one_line.map(lambda s: " ".join(s.split())),
    name=st.sampled_from(["Sam", "Zoë", "李"]),
    text=any_line,
    html=any_line,
    long_line=st.integers(min_value=0, max_value=300),
)
def test_any_text_then_read_as_the_email_package_wrote_it(
    subject: str, name: str, text: str, html: str, long_line: int
) -> None:
    message = email_(
        subject=subject or "x", text=f"Hi {name},\n" + text + "y" * long_line, html=html
    )
    check_same(message)
