"""Routes: Twilio's webhooks (an inbound SMS; a message's delivery status).

Each route verifies the signature first (403, nothing stored, otherwise), then hands the
parameters to a service and answers TwiML. The transaction commits before the answer goes back,
so a retried webhook finds what the first one stored.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response
from twilio.twiml.messaging_response import MessagingResponse

from aftercare.inbound.service import Replies, receive_sms
from aftercare.reminders.status import apply_status
from aftercare.web.deps import RuntimeDep
from aftercare.web.twilio_signature import TwilioParams

router = APIRouter(prefix="/webhooks/twilio", tags=["webhooks"])

# Twilio SIDs are 34 letters and digits; the outbox transport's ids also use '-'.
_SID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# What a webhook can answer besides 200 (OpenAPI); none of them stores anything.
_REFUSALS: dict[int | str, dict[str, str]] = {
    400: {"description": "MessageSid missing or malformed, or the form is not UTF-8."},
    403: {"description": "Missing or invalid X-Twilio-Signature."},
    411: {"description": "No Content-Length."},
    413: {"description": "Body larger than 64 KiB."},
    415: {"description": "Not application/x-www-form-urlencoded."},
}


def _twiml(reply: str | None = None) -> Response:
    twiml = MessagingResponse()
    if reply:
        twiml.message(reply)
    return Response(content=str(twiml), media_type="application/xml")


def _sid(params: dict[str, str]) -> str:
    sid = params.get("MessageSid") or params.get("SmsSid") or ""
    if not _SID.match(sid):
        raise HTTPException(status_code=400, detail="MessageSid is missing or malformed")
    return sid


@router.post("/inbound", response_class=Response, responses=_REFUSALS)
def inbound_sms(params: TwilioParams, rt: RuntimeDep) -> Response:
    """An SMS from a patient: stored, acted on, and answered (HELP, safety advice, thanks)."""
    sid = _sid(params)
    settings = rt.settings
    replies = Replies(
        renderer=rt.renderer,
        clinic_name=settings.clinic_name,
        clinic_phone=settings.clinic_phone,
        triage=rt.triage,
    )
    with rt.db.session() as db_session:
        received = receive_sms(
            db_session=db_session,
            sid=sid,
            from_number=params.get("From", ""),
            body=params.get("Body", ""),
            now=rt.clock.now(),
            replies=replies,
        )
    return _twiml(received.reply)


@router.post("/status", response_class=Response, responses=_REFUSALS)
def message_status(params: TwilioParams, rt: RuntimeDep) -> Response:
    """A delivery-status callback for a message we sent; an unknown message is ignored (200)."""
    sid = _sid(params)
    status = params.get("MessageStatus") or params.get("SmsStatus") or ""
    with rt.db.session() as db_session:
        apply_status(
            db_session=db_session,
            provider_id=sid,
            status=status,
            error_code=params.get("ErrorCode") or None,
            now=rt.clock.now(),
        )
    return _twiml()
