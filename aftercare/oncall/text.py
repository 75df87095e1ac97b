"""What a page says: that an urgent reply needs a call back, and a link to the flag. Pure.

A page goes to a personal phone and may show on its lock screen: it names no patient, number
or words, only the flag's link, which needs a staff login.
"""

from __future__ import annotations

from html import escape

from aftercare.channels.base import EmailMessage, SmsMessage

SUBJECT = "Aftercare: an urgent reply needs a call back"


def flag_url(public_base_url: str, flag_id: int) -> str:
    """The staff page of one flag."""
    return f"{public_base_url.rstrip('/')}/flags/{flag_id}"


def sms_page(*, page_id: int, to: str, flag_id: int, public_base_url: str) -> SmsMessage:
    body = (
        "Aftercare: an urgent reply needs a call back. "
        f"Open {flag_url(public_base_url, flag_id)} "
        "Reply ACK when you are calling."
    )
    return SmsMessage(key=f"page-{page_id}", to=to, body=body)


def email_page(*, page_id: int, to: str, flag_id: int, public_base_url: str) -> EmailMessage:
    url = flag_url(public_base_url, flag_id)
    text = (
        "An urgent reply from a patient needs a call back.\n\n"
        f"Open the flag (staff login): {url}\n\n"
        'Press "I\'m calling" on that page (or reply ACK to the text page) so that nobody '
        "else is paged.\n"
    )
    html = (
        "<p>An urgent reply from a patient needs a call back.</p>"
        f'<p><a href="{escape(url)}">Open the flag</a> (staff login).</p>'
        "<p>Press &ldquo;I&rsquo;m calling&rdquo; on that page (or reply ACK to the text "
        "page) so that nobody else is paged.</p>"
    )
    return EmailMessage(key=f"page-{page_id}", to=to, subject=SUBJECT, text=text, html=html)
