"""Routes: Twilio's webhooks (an inbound SMS; a message's delivery status).

Each route verifies the signature first (403, nothing stored, otherwise), then checks that every
parameter is one Twilio sends, in Twilio's shape (400, nothing stored, otherwise: see
``params``), then hands them to a service and answers TwiML. The transaction commits before
the answer goes back, so a retried webhook finds what the first one stored.
"""

from __future__ import annotations

import logging
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response
from twilio.twiml.messaging_response import MessagingResponse

from aftercare.freetext import without_bidi_controls
from aftercare.inbound.replies import Replies
from aftercare.inbound.service import receive_sms
from aftercare.reminders.status import apply_status
from aftercare.web.deps import RuntimeDep
from aftercare.web.webhooks import params as twilio_params
from aftercare.web.webhooks.params import ParamError
from aftercare.web.webhooks.signature import TwilioParams

log = logging.getLogger(__name__)

router = APIRouter(prefix="/webhooks/twilio", tags=["webhooks"])

# What a webhook can answer besides 200 (OpenAPI); none of them stores anything.
_REFUSALS: dict[int | str, dict[str, str]] = {
    400: {
        "description": "A parameter Twilio does not send, repeated, missing or not in Twilio's "
        "shape (MessageSid, ...), or the form is not UTF-8."
    },
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


def _refuse(error: ParamError) -> HTTPException:
    # The name only (bounded by ParamError), never the value: it may be a patient's text.
    log.warning("twilio webhook refused: parameter %s: %s", error.name, error.reason)
    return HTTPException(status_code=400, detail=str(error))


@router.post("/inbound", response_class=Response, responses=_REFUSALS)
def inbound_sms(params: TwilioParams, rt: RuntimeDep) -> Response:
    """An SMS from a patient: stored, acted on, and answered (HELP, safety advice, thanks)."""
    try:
        sms = twilio_params.inbound_sms(params)
    except ParamError as error:
        raise _refuse(error) from None
    settings = rt.settings
    replies = Replies(
        renderer=rt.renderer,
        clinic_name=settings.clinic_name,
        clinic_phone=settings.clinic_phone,
        triage=rt.triage,
        regimens=rt.registry,
        next_open=settings.hours.phrase(rt.clock.now(), ZoneInfo(settings.default_timezone)),
    )
    with rt.db.session() as db_session:
        received = receive_sms(
            db_session=db_session,
            sid=sms.sid,
            from_number=sms.from_number,
            # Staff read it: bidi controls could make it read as something else.
            body=without_bidi_controls(sms.body),
            now=rt.clock.now(),
            replies=replies,
        )
    return _twiml(received.reply)


@router.post("/status", response_class=Response, responses=_REFUSALS)
def message_status(params: TwilioParams, rt: RuntimeDep) -> Response:
    """A delivery-status callback for a message we sent; an unknown message is ignored (200)."""
    try:
        report = twilio_params.status_report(params)
    except ParamError as error:
        raise _refuse(error) from None
    with rt.db.session() as db_session:
        apply_status(
            db_session=db_session,
            provider_id=report.sid,
            status=report.status,
            error_code=report.error_code,
            now=rt.clock.now(),
        )
    return _twiml()
