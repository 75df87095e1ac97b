"""Build the MIME form of an email.

``render_mime`` writes the bytes the SMTP transport sends, directly: building an
``email.message.EmailMessage`` and flattening it cost about a millisecond of CPU per email
(header objects parsed on assignment and refolded on output, a regular expression compiled
per boundary), most of the worker's time for an email. The output is what the email package
produced, part for part: multipart/alternative plain text + HTML (inside multipart/mixed with
any attachments), utf-8 bodies encoded as its content manager chooses (7bit, 8bit,
quoted-printable or base64; body lines of at most 78 octets), and headers the email package still
encodes whenever they are not plain ASCII. The outbox transport writes the same bytes to its
files. (The email package's version is kept in tests/channels/test_mime.py, as the reference.)
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import os
import re
from dataclasses import dataclass
from email.utils import encode_rfc2231, formatdate, make_msgid
from functools import lru_cache

from aftercare.channels.base import Attachment, EmailMessage

# The email package's default line length: text bodies with longer lines are encoded, and
# headers are folded to it where there is a space to fold at.
_MAX_LINE = 78
# RFC 5322's hard limit for a line, CRLF excluded.
_HARD_LINE = 998
_CRLF = b"\r\n"
# An address the email package would write back exactly as given (no display name, nothing
# quoted): anything else goes through the email package.
_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9_%+-]+(\.[A-Za-z0-9_%+-]+)*@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*"
)
_ADDRESS_HEADERS = frozenset({"from", "to", "cc", "reply-to", "sender"})
_HEADER_NAME = re.compile(r"[!-9;-~]+")
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
# Written by render_mime itself: an extra header of one of these names is refused, as the
# email package refused a second Subject or Message-ID.
_OWN_HEADERS = frozenset(
    {"from", "to", "subject", "date", "message-id", "x-aftercare-key", "mime-version"}
)


@dataclass(frozen=True)
class Stamp:
    """What an email's copies share: a resend over a new connection is the same message."""

    date: str
    message_id: str


def new_stamp(message: EmailMessage, *, domain: str | None) -> Stamp:
    """A Date (now, UTC) and a new Message-ID in ``domain`` (None: this host's name)."""
    return Stamp(
        date=formatdate(localtime=False),
        message_id=make_msgid(idstring=message.key, domain=domain),
    )


def render_mime(
    message: EmailMessage, *, sender: str, stamp: Stamp, utf8: bool = False, eight_bit: bool = True
) -> bytes:
    """The message as an SMTP client sends it, before dot-stuffing (CRLF line ends).

    ``utf8``: non-ASCII header text goes as raw UTF-8 (SMTPUTF8) rather than RFC 2047 encoded
    words. ``eight_bit``: the server takes 8BITMIME; without it, non-ASCII text goes base64.
    Raises ValueError for a header value with a line break or an extra header that would
    replace one written here.
    """
    head = [
        _header("From", sender, utf8),
        _header("To", message.to, utf8),
        _header("Subject", message.subject, utf8),
        _header("Date", stamp.date, utf8),
        _header("Message-ID", stamp.message_id, utf8),
        _header("X-Aftercare-Key", message.key, utf8),
    ]
    for name, value in message.headers.items():
        lowered = name.lower()
        if lowered in _OWN_HEADERS or lowered.startswith("content-"):
            raise ValueError(f"header {name!r} is written by the MIME builder")
        head.append(_header(name, value, utf8))
    head.append(b"MIME-Version: 1.0\r\n")
    body = _multipart(
        "alternative",
        [_text_part(message.text, "plain", eight_bit), _text_part(message.html, "html", eight_bit)],
    )
    if message.attachments:
        body = _multipart("mixed", [body, *map(_attachment_part, message.attachments)])
    return b"".join(head) + body


def _header(name: str, value: str, utf8: bool) -> bytes:
    if not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"invalid header name {name!r}")
    if value.splitlines() not in ([], [value]):  # any line break: CR, LF, U+2028...
        raise ValueError("Header values may not contain linefeed or carriage return characters")
    if name.lower() in _ADDRESS_HEADERS:
        if _PLAIN_ADDRESS.fullmatch(value):
            return f"{name}: {value}\r\n".encode("ascii")
    elif value.isascii() and value.isprintable() and "=?" not in value:
        folded = _fold_ascii(name, value)
        if folded is not None:
            return folded
    return _encoded_header(name, value, utf8)


def _fold_ascii(name: str, value: str) -> bytes | None:
    """Fold before spaces to 78 octets a line where possible, never encoding anything: an
    encoded word is wrong in a structured header such as List-Unsubscribe (its URLs would reach
    mail providers as ``=?utf-8?q?...?=``). None when the value has runs of spaces, or a word too
    long for one line."""
    line = f"{name}: {value}"
    if len(line) <= _MAX_LINE:
        return line.encode("ascii") + _CRLF
    if value != value.strip(" ") or "  " in value:
        return None
    # The value's first word stays on the name's line (a reader would see a leading space).
    first, *words = value.split(" ")
    lines = [f"{name}: {first}"]
    for word in words:
        if len(lines[-1]) + 1 + len(word) <= _MAX_LINE:
            lines[-1] += " " + word
        else:
            lines.append(" " + word)
    if max(map(len, lines)) > _HARD_LINE:
        return None
    return "\r\n".join(lines).encode("ascii") + _CRLF


@lru_cache(maxsize=256)
def _encoded_header(name: str, value: str, utf8: bool) -> bytes:
    """Non-ASCII text (RFC 2047, or raw UTF-8 for SMTPUTF8) and named addresses, as the email
    package writes them. Cached: the sender and most subjects are the same for every email."""
    policy = email.policy.SMTPUTF8 if utf8 else email.policy.SMTP
    # A header object, as EmailMessage stores it: a plain str would be written unencoded.
    return policy.fold_binary(name, policy.header_factory(name, value))


def _text_part(text: str, subtype: str, eight_bit: bool) -> bytes:
    cte, body = _encode_text(text, eight_bit)
    head = f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: {cte}\r\n'
    return head.encode("ascii") + _CRLF + body


def _encode_text(text: str, eight_bit: bool) -> tuple[str, bytes]:
    """The email package's choice of transfer encoding for a utf-8 text part, and the body."""
    lines = text.encode("utf-8").splitlines()
    if max(map(len, lines), default=0) <= _MAX_LINE:
        body = _CRLF.join(lines) + _CRLF
        if body.isascii():
            return "7bit", body
        if eight_bit:
            return "8bit", body
        return "base64", _base64(b"\n".join(lines) + b"\n")
    # Long lines: quoted-printable unless it would be longer than base64 (mostly non-ASCII
    # text), judged on the first ten lines.
    sniff = b"\n".join(lines[:10]) + b"\n"
    if len(binascii.b2a_qp(sniff, istext=True)) > len(binascii.b2a_base64(sniff)):
        return "base64", _base64(b"\n".join(lines) + b"\n")
    # Soft line breaks at 76 octets; CRLF line ends stay CRLF; trailing spaces are encoded.
    return "quoted-printable", binascii.b2a_qp(_CRLF.join(lines) + _CRLF, istext=True)


def _base64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", _CRLF)


def _attachment_part(attachment: Attachment) -> bytes:
    maintype, _, subtype = attachment.content_type.partition("/")
    if not (_TOKEN.fullmatch(maintype) and _TOKEN.fullmatch(subtype)):
        raise ValueError(f"invalid content type {attachment.content_type!r}")
    filename = attachment.filename
    if filename.isascii() and filename.isprintable() and not any(c in filename for c in '"\\'):
        disposition = f'filename="{filename}"'
    else:
        disposition = f"filename*={encode_rfc2231(filename, 'utf-8')}"
    head = (
        f"Content-Type: {maintype}/{subtype}\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        f"Content-Disposition: attachment; {disposition}\r\n"
    )
    return head.encode("utf-8") + _CRLF + _base64(attachment.data)


def _multipart(subtype: str, parts: list[bytes]) -> bytes:
    # "=_" can appear in neither quoted-printable nor base64; checked against the rest.
    boundary = b"=_" + os.urandom(16).hex().encode("ascii")
    while any(boundary in part for part in parts):
        boundary = b"=_" + os.urandom(16).hex().encode("ascii")
    delimiter = b"--" + boundary
    head = b'Content-Type: multipart/%s;\r\n boundary="%s"\r\n\r\n' % (
        subtype.encode("ascii"),
        boundary,
    )
    between = _CRLF + delimiter + _CRLF
    return head + delimiter + _CRLF + between.join(parts) + _CRLF + delimiter + b"--" + _CRLF
