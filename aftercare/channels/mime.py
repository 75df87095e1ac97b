"""Build the MIME form of an email (shared by the SMTP and outbox transports)."""

from __future__ import annotations

from email.message import EmailMessage as MimeMessage
from email.utils import formatdate, make_msgid

from aftercare.channels.base import EmailMessage


def build_mime(message: EmailMessage, *, sender: str) -> MimeMessage:
    """Multipart plain text + HTML, with any attachments and extra headers."""
    mime = MimeMessage()
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
