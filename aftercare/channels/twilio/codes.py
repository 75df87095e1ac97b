"""What Twilio's message statuses and error codes mean to us: the one place that knows them.

Used by the transport (sorting a refused send), by the status callback (ranking statuses) and by
what follows a failure (which codes mean the patient opted out, or their number cannot take SMS).
Codes arrive as numbers from the API and as text from callbacks; every function takes either.
"""

from __future__ import annotations

from typing import Final, Literal

# The recipient replied STOP to this sender (Twilio's opt-out).
OPTED_OUT: Final = 21610
RATE_LIMITED: Final = 20429
# The recipient cannot be texted from this account: retrying cannot help.
RECIPIENT_CODES: Final = frozenset(
    {
        21211,  # invalid 'To' number
        21214,  # 'To' number cannot be reached
        21217,  # phone number does not appear to be valid
        21401,  # invalid phone number
        21407,  # this phone number type does not support SMS
        21408,  # sending to this region is not enabled
        21602,  # message body is required
        21610,  # recipient replied STOP (opted out)
        21612,  # cannot route between this sender and this 'To' number
        21614,  # 'To' number is not a mobile number
        21617,  # body exceeds the 1600-character limit
        21635,  # 'To' number is a landline
        30004,  # message blocked
        30005,  # unknown destination handset
        30006,  # landline or unreachable carrier
    }
)
# Errors that say the *number* cannot take SMS (invalid, not a mobile, unreachable by SMS,
# landline). Only these stop SMS to it: a permanent error caused by the clinic's setup (a region
# not enabled, 21408) or by our message (21602, 21617) must not block every patient it touches
# until staff "fix" numbers that were never wrong.
NUMBER_REFUSED: Final = frozenset(
    {21211, 21214, 21217, 21401, 21407, 21612, 21614, 21635, 30005, 30006}
)
# Twilio refuses our credentials or sender: an operator fault, retried until fixed.
ACCOUNT_CODES: Final = frozenset(
    {
        20003,  # authentication failed
        20005,  # account not active
        20404,  # resource not found (wrong account SID or API base)
        21212,  # invalid 'From' number
        21603,  # 'From' or 'MessagingServiceSid' is required
        21606,  # 'From' is not a valid, SMS-capable number for this account
        21659,  # 'From' is not a Twilio number
        21660,  # 'From' does not belong to this account
        21701,  # Messaging Service does not exist
        21703,  # Messaging Service has no senders
        21704,  # Messaging Service has no phone numbers
    }
)

# Message statuses, by how far along they are. "read" (WhatsApp, RCS) is a delivery.
STATUS_RANK: Final = {
    "accepted": 0,
    "scheduled": 0,
    "queued": 1,
    "sending": 2,
    "sent": 3,
    "undelivered": 4,
    "failed": 4,
    "delivered": 5,
}
STATUS_ALIASES: Final = {"read": "delivered"}
FAILED_STATUSES: Final = frozenset({"undelivered", "failed"})
# A message Twilio has given up on does not count as sent: reconciliation sends it again.
GIVEN_UP: Final = frozenset({"failed", "undelivered", "canceled"})

Refusal = Literal["transient", "account", "permanent"]


def _number(code: int | str | None) -> int | None:
    try:
        return int(code) if code is not None else None
    except ValueError:
        return None


def is_opted_out(code: int | str | None) -> bool:
    """True when the error code says the recipient opted out (replied STOP)."""
    return _number(code) == OPTED_OUT


def number_refused(code: int | str | None) -> bool:
    """True when the error code says the recipient's number cannot take SMS."""
    return _number(code) in NUMBER_REFUSED


def tracked_status(status: str) -> str | None:
    """A callback's status as we track it (``read`` is ``delivered``), or None if untracked."""
    status = status.strip().lower()
    status = STATUS_ALIASES.get(status, status)
    return status if status in STATUS_RANK else None


def is_newer(status: str, than: str | None) -> bool:
    """True when tracked ``status`` is further along than ``than`` (None: nothing recorded)."""
    return STATUS_RANK[status] > STATUS_RANK.get(than or "", -1)


def refusal(*, http_status: int, code: int) -> Refusal:
    """How to treat Twilio refusing a send: retry later, retry as an operator fault (our account
    or sender), or fail it for good (the recipient). ``http_status`` 0: never sent."""
    if code == RATE_LIMITED or http_status == 429 or http_status >= 500:
        return "transient"
    # No HTTP status: the client refused before sending (e.g. no credentials), our fault.
    unauthorised = http_status in (0, 401, 403, 404) and code not in RECIPIENT_CODES
    if code in ACCOUNT_CODES or unauthorised:
        return "account"
    return "permanent"
