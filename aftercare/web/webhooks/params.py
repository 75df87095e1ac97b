"""The shape of every parameter Twilio sends to the two webhooks, checked after the signature.

Twilio signs the URL followed by each parameter's name and value, sorted and joined with no
separator, so one signature also covers the same characters split into other fields
(``MessageSid=SM…&NumMedia=0`` signs exactly like ``MessageSid=SM…NumMedia0``). A replay re-split
that way would carry a new "MessageSid" and be acted on as a new message. Here every name must
be one Twilio documents for SMS and MMS, every value must have Twilio's shape (a SID is its
two-letter prefix and 32 lowercase hex digits; counts are ASCII digits; numbers are E.164, short
codes or alphanumeric sender IDs), and the SID aliases must agree. Then a signed request can only
be read one way, the MessageSid in it is the real one, and a replayed MessageSid changes nothing
(inbound messages are unique by SID; a status only ever moves a message forward).

The names are Twilio's "request to your incoming message webhook URL" (SMS and MMS, with the
Advanced Opt-Out ``OptOutType``) and, for status callbacks, those plus ``MessageStatus``,
``ErrorCode``, ``ErrorMessage`` and ``RawDlrDoneDate`` (a status callback carries "a subset of the
standard request properties"). WhatsApp-, RCS- and add-on-only parameters are not accepted: this
service receives SMS. Twilio says it may add parameters without notice; a request with one is
refused (400) and its name logged, so the operator sees it and the list here is extended.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final


class ParamError(ValueError):
    """A signed webhook parameter that is unknown, missing or not of Twilio's shape."""

    def __init__(self, name: str, reason: str) -> None:
        # The name is the sender's: bounded and escaped before it is shown or logged.
        self.name = repr(name[:40])[1:-1]
        self.reason = reason
        super().__init__(f"{self.name}: {reason}")


def _shape(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.ASCII)


def _sid(prefixes: str) -> re.Pattern[str]:
    return _shape(rf"(?:{prefixes})[0-9a-f]{{32}}")


# Free text Twilio fills in (a city, an error description): printable, on one line, bounded.
_TEXT = re.compile(r"[^\x00-\x1f\x7f-\x9f]{0,256}")
# E.164, a short code, or an alphanumeric sender ID (up to 11 letters, digits and spaces).
_ADDRESS = _shape(r"\+[1-9][0-9]{5,14}|[0-9]{3,8}|(?=[0-9 ]*[A-Za-z])[A-Za-z0-9 ]{1,11}")
_COUNT = _shape(r"0|[1-9][0-9]{0,2}")
_STATUS = _shape(r"[a-z_]{1,32}")

_MESSAGE_SID: Final = ("SM|MM", "a Twilio message SID (SM or MM and 32 hex digits)")

# name: (pattern, what it must be)
_INBOUND: Final[dict[str, tuple[re.Pattern[str], str]]] = {
    "MessageSid": (_sid(_MESSAGE_SID[0]), _MESSAGE_SID[1]),
    "SmsSid": (_sid(_MESSAGE_SID[0]), _MESSAGE_SID[1]),
    "SmsMessageSid": (_sid(_MESSAGE_SID[0]), _MESSAGE_SID[1]),
    "AccountSid": (_sid("AC"), "a Twilio account SID (AC and 32 hex digits)"),
    "MessagingServiceSid": (_sid("MG"), "a Twilio messaging service SID (MG and 32 hex digits)"),
    "From": (_ADDRESS, "a phone number in E.164, a short code or a sender ID"),
    "To": (_ADDRESS, "a phone number in E.164, a short code or a sender ID"),
    "Body": (re.compile(r".*", re.DOTALL), "text"),
    "NumMedia": (_COUNT, "a count in digits"),
    "NumSegments": (_COUNT, "a count in digits"),
    "ApiVersion": (_shape(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"), "a date, YYYY-MM-DD"),
    "SmsStatus": (_STATUS, "a Twilio status in lowercase letters"),
    "OptOutType": (_shape(r"STOP|START|HELP"), "STOP, START or HELP"),
    "FromCity": (_TEXT, "one line of at most 256 characters"),
    "FromState": (_TEXT, "one line of at most 256 characters"),
    "FromZip": (_shape(r"[A-Za-z0-9 -]{0,12}"), "a postal code"),
    "FromCountry": (_shape(r"(?:[A-Z]{2})?"), "a two-letter country code"),
    "ToCity": (_TEXT, "one line of at most 256 characters"),
    "ToState": (_TEXT, "one line of at most 256 characters"),
    "ToZip": (_shape(r"[A-Za-z0-9 -]{0,12}"), "a postal code"),
    "ToCountry": (_shape(r"(?:[A-Z]{2})?"), "a two-letter country code"),
}
# MediaUrl0 … MediaUrl9 and MediaContentType0 … (an MMS has at most 10 media).
_MEDIA_NAME = _shape(r"(MediaUrl|MediaContentType)(0|[1-9])")
_MEDIA: Final[dict[str, tuple[re.Pattern[str], str]]] = {
    "MediaUrl": (_shape(r"https://[!-~]{1,1024}"), "an https URL"),
    "MediaContentType": (
        _shape(r"[A-Za-z0-9][\w!#$&^.+-]{0,63}/[A-Za-z0-9][\w!#$&^.+-]{0,63}"),
        "a media type",
    ),
}
_STATUS_ONLY: Final[dict[str, tuple[re.Pattern[str], str]]] = {
    "MessageStatus": (_STATUS, "a Twilio status in lowercase letters"),
    "ErrorCode": (_shape(r"[0-9]{1,6}"), "a Twilio error code in digits"),
    "ErrorMessage": (_TEXT, "one line of at most 256 characters"),
    "RawDlrDoneDate": (_shape(r"[0-9]{10}"), "a carrier date, YYMMDDhhmm"),
}
INBOUND_NAMES: Final = frozenset(_INBOUND)
STATUS_NAMES: Final = frozenset(_INBOUND) | frozenset(_STATUS_ONLY)


@dataclass(frozen=True)
class InboundSms:
    """What the inbound webhook acts on, once every parameter has Twilio's shape."""

    sid: str
    from_number: str
    body: str


@dataclass(frozen=True)
class StatusReport:
    """What the status callback acts on, once every parameter has Twilio's shape."""

    sid: str
    status: str
    error_code: str | None


def _rule(name: str, *, status: bool) -> tuple[re.Pattern[str], str]:
    if name in _INBOUND:
        return _INBOUND[name]
    if status and name in _STATUS_ONLY:
        return _STATUS_ONLY[name]
    media = _MEDIA_NAME.fullmatch(name)
    if media:
        return _MEDIA[media[1]]
    which = "a status callback" if status else "an inbound message"
    raise ParamError(name, f"not a parameter Twilio sends with {which}")


def _check(params: Mapping[str, str], *, status: bool) -> str:
    """Check every name and value; return the MessageSid (its aliases must agree with it)."""
    for name, value in params.items():
        pattern, must_be = _rule(name, status=status)
        if not pattern.fullmatch(value):
            raise ParamError(name, f"must be {must_be}")
    sid = params.get("MessageSid")
    if sid is None:
        raise ParamError("MessageSid", "is required")
    for alias in ("SmsSid", "SmsMessageSid"):
        if params.get(alias, sid) != sid:
            raise ParamError(alias, "must be the same as MessageSid")
    return sid


def inbound_sms(params: Mapping[str, str]) -> InboundSms:
    """The inbound webhook's parameters, checked; ParamError names the first bad one."""
    sid = _check(params, status=False)
    if "From" not in params:
        raise ParamError("From", "is required")
    return InboundSms(sid=sid, from_number=params["From"], body=params.get("Body", ""))


def status_report(params: Mapping[str, str]) -> StatusReport:
    """The status callback's parameters, checked; ParamError names the first bad one."""
    sid = _check(params, status=True)
    status = params.get("MessageStatus") or params.get("SmsStatus")
    if not status:
        raise ParamError("MessageStatus", "is required")
    return StatusReport(sid=sid, status=status, error_code=params.get("ErrorCode") or None)
