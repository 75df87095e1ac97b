"""Twilio's webhooks refuse any field whose shape is not Twilio's, on SQLite and PostgreSQL.

Twilio signs the URL followed by each parameter's name and value, sorted and joined with no
separator. So the same signature also covers the same characters split into other fields:
``MessageSid=SM…`` followed by ``NumMedia=0`` signs exactly like ``MessageSid=SM…NumMedia0``.
Strict shapes (a SID is two letters and 32 hex digits) and known names only leave a signed
request one way to be read, so a replay always carries the real MessageSid, and a replayed
SID changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from starlette.datastructures import FormData
from twilio.request_validator import RequestValidator

from aftercare.clock import FixedClock
from aftercare.runtime import Runtime
from aftercare.storage.models import DeliveryAttempt, InboundMessage
from aftercare.web.app import create_app
from tests.factories import PATIENT_PHONE, enrol
from tests.inbound.test_inbound import (
    AUTH_TOKEN,
    CLINIC_NUMBER,
    EMPTY_TWIML,
    INBOUND,
    PUBLIC,
    STATUS,
    FakeTwilio,
    audits,
    count,
    inbound,
    patient,
    snapshot,
)
from tests.reminders.test_status_callback import send_one_sms, state_of

CAPTURED_SID = "SM" + "b" * 32
ACCOUNT = "AC" + "0123456789abcdef" * 2
SERVICE = "MG" + "fedcba9876543210" * 2


@pytest.fixture
def rt(runtime: Runtime) -> Runtime:
    runtime.settings = runtime.settings.model_copy(
        update={"twilio_auth_token": AUTH_TOKEN, "public_base_url": PUBLIC}
    )
    return runtime


@pytest.fixture
def twilio(rt: Runtime) -> Iterator[FakeTwilio]:
    with TestClient(create_app(rt)) as client:
        yield FakeTwilio(client)


def twilio_sms(body: str, *, sid: str, sender: str = PATIENT_PHONE) -> dict[str, str]:
    """Every parameter Twilio sends for a plain SMS to a UK number (geography mostly empty)."""
    opt_out = {"OptOutType": body} if body in ("STOP", "START", "HELP") else {}
    return opt_out | {
        "ToCountry": "GB",
        "ToState": "",
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "ToCity": "",
        "FromZip": "",
        "SmsSid": sid,
        "FromState": "",
        "SmsStatus": "received",
        "FromCity": "",
        "Body": body,
        "FromCountry": "GB",
        "To": CLINIC_NUMBER,
        "MessagingServiceSid": SERVICE,
        "ToZip": "",
        "NumSegments": "1",
        "MessageSid": sid,
        "AccountSid": ACCOUNT,
        "From": sender,
        "ApiVersion": "2010-04-01",
    }


def signed_alike(twilio: FakeTwilio, path: str, a: dict[str, str], b: dict[str, str]) -> bool:
    """Whether Twilio's signature of ``a`` is also the signature of ``b``."""
    return twilio.sign(PUBLIC + path, a) == twilio.sign(PUBLIC + path, b)


# --- The attack from the issue ---------------------------------------------------------------


def captured_stop_then_start(twilio: FakeTwilio) -> tuple[dict[str, str], str]:
    """The patient texts STOP (an attacker captures the signed request), then START."""
    captured = twilio.sms_params("STOP", sid=CAPTURED_SID)
    signature = twilio.sign(PUBLIC + INBOUND, captured)
    assert twilio.post(INBOUND, captured, signature=signature).status_code == 200
    assert twilio.sms("START").status_code == 200
    return captured, signature


def test_a_captured_stop_replayed_with_its_fields_resplit_is_400_and_the_patient_stays_opted_in(
    rt: Runtime, twilio: FakeTwilio, clock: FixedClock
) -> None:
    enrol(rt)
    captured, signature = captured_stop_then_start(twilio)
    assert patient(rt).sms_opted_out_at is None
    before = snapshot(rt)
    # NumMedia removed, its name and value appended to MessageSid: the same signed string.
    resplit = {k: v for k, v in captured.items() if k != "NumMedia"}
    resplit["MessageSid"] = captured["MessageSid"] + "NumMedia" + captured["NumMedia"]
    assert signed_alike(twilio, INBOUND, captured, resplit)

    response = twilio.post(INBOUND, resplit, signature=signature)

    assert response.status_code == 400, response.text
    assert "MessageSid" in response.json()["detail"]
    assert snapshot(rt) == before
    assert patient(rt).sms_opted_out_at is None
    assert len(audits(rt, "opt_out")) == 1


def test_a_captured_stop_replayed_as_it_was_after_start_changes_nothing_and_answers_as_before(
    rt: Runtime, twilio: FakeTwilio, clock: FixedClock
) -> None:
    enrol(rt)
    captured, signature = captured_stop_then_start(twilio)
    before = snapshot(rt)

    response = twilio.post(INBOUND, captured, signature=signature)

    assert response.status_code == 200
    assert response.text == EMPTY_TWIML  # what the first STOP was answered
    assert snapshot(rt) == before
    assert patient(rt).sms_opted_out_at is None


def test_a_full_twilio_stop_resplit_into_its_message_sid_is_400(
    rt: Runtime, twilio: FakeTwilio
) -> None:
    enrol(rt)
    captured = twilio_sms("STOP", sid=CAPTURED_SID)
    signature = twilio.sign(PUBLIC + INBOUND, captured)
    assert twilio.post(INBOUND, captured, signature=signature).status_code == 200
    assert twilio.sms("START").status_code == 200
    before = snapshot(rt)
    for field in ("MessageSid", "MessagingServiceSid"):
        # the field swallows the next one (name and value), which is left out
        names = sorted(captured)
        following = names[names.index(field) + 1]
        resplit = {k: v for k, v in captured.items() if k != following}
        resplit[field] = captured[field] + following + captured[following]
        assert signed_alike(twilio, INBOUND, captured, resplit)
        response = twilio.post(INBOUND, resplit, signature=signature)
        assert response.status_code == 400, (field, response.text)
        assert field in response.json()["detail"]
    assert snapshot(rt) == before
    assert patient(rt).sms_opted_out_at is None


def test_everything_twilio_sends_for_an_sms_is_accepted(rt: Runtime, twilio: FakeTwilio) -> None:
    enrol(rt)
    response = twilio.post(INBOUND, twilio_sms("STOP", sid=CAPTURED_SID))
    assert response.status_code == 200, response.text
    assert [m.provider_sid for m in inbound(rt)] == [CAPTURED_SID]
    assert patient(rt).sms_opted_out_at is not None


def test_an_mms_with_media_parameters_is_accepted(rt: Runtime, twilio: FakeTwilio) -> None:
    enrol(rt)
    sid = "MM" + "c" * 32
    media = f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT}/Messages/{sid}/Media/ME"
    params = twilio_sms("my leg today", sid=sid) | {
        "NumMedia": "2",
        "MediaUrl0": media + "1" * 32,
        "MediaContentType0": "image/jpeg",
        "MediaUrl1": media + "2" * 32,
        "MediaContentType1": "image/png",
    }
    response = twilio.post(INBOUND, params)
    assert response.status_code == 200, response.text
    assert [m.provider_sid for m in inbound(rt)] == [sid]


# --- Every field's shape, on both webhooks ----------------------------------------------------

BAD_INBOUND = [
    ("MessageSid", "SM" + "b" * 31, "MessageSid"),
    ("MessageSid", "SM" + "B" * 32, "MessageSid"),
    ("MessageSid", "XX" + "b" * 32, "MessageSid"),
    ("MessageSid", "SM" + "b" * 32 + "0", "MessageSid"),
    ("SmsSid", "SM" + "e" * 32, "SmsSid"),  # not the same message
    ("SmsMessageSid", "SM" + "b" * 32 + "SmsSid", "SmsMessageSid"),
    ("AccountSid", "AC" + "0" * 31, "AccountSid"),
    ("AccountSid", "AC" + "0" * 32 + "ApiVersion2010-04-01", "AccountSid"),
    ("MessagingServiceSid", "MG" + "0" * 32 + "NumMedia0", "MessagingServiceSid"),
    ("MessagingServiceSid", "SM" + "0" * 32, "MessagingServiceSid"),
    ("From", "+447912345678NumMedia0", "From"),
    ("From", "", "From"),
    ("From", "+44 7912 345678", "From"),
    ("To", "+447700900000ToCity", "To"),
    ("NumMedia", "0NumSegments1", "NumMedia"),
    ("NumMedia", "-1", "NumMedia"),
    ("NumMedia", "٣", "NumMedia"),  # an Arabic-Indic digit: isdigit(), not a Twilio count
    ("NumSegments", "1SmsMessageSid", "NumSegments"),
    ("ApiVersion", "2010-04-01Body", "ApiVersion"),
    ("SmsStatus", "received\n", "SmsStatus"),
    ("FromCountry", "GBFromState", "FromCountry"),
    ("OptOutType", "STOPTo", "OptOutType"),
    ("MediaUrl0", "javascript:alert(1)", "MediaUrl0"),
    ("MediaContentType0", "image/jpeg\r\nX: y", "MediaContentType0"),
    ("FromCity", "LONDON\x00", "FromCity"),
    ("Nonsense", "1", "Nonsense"),
    ("messagesid", "SM" + "b" * 32, "messagesid"),
    ("MediaUrl", "https://example.org/x", "MediaUrl"),
    ("MediaUrl00", "https://example.org/x", "MediaUrl00"),
    ("MessageStatus", "delivered", "MessageStatus"),  # a status-callback field
]


@pytest.mark.parametrize(
    ("field", "value", "named"), BAD_INBOUND, ids=[f"{f}={v!r}"[:60] for f, v, _ in BAD_INBOUND]
)
def test_a_signed_inbound_sms_with_a_field_not_shaped_as_twilios_is_400_and_changes_nothing(
    rt: Runtime, twilio: FakeTwilio, field: str, value: str, named: str
) -> None:
    enrol(rt)
    before = snapshot(rt)
    params = twilio_sms("STOP", sid=CAPTURED_SID) | {field: value}
    response = twilio.post(INBOUND, params)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert named in detail
    assert len(detail) < 200
    assert snapshot(rt) == before
    assert count(rt, InboundMessage) == 0


@pytest.mark.parametrize("again", ["STOP", "HELP"], ids=["another-value", "the-same-value"])
def test_a_signed_inbound_sms_with_a_repeated_field_is_400_and_changes_nothing(
    rt: Runtime, twilio: FakeTwilio, again: str
) -> None:
    enrol(rt)
    before = snapshot(rt)
    params = [*twilio.sms_params("HELP", sid=CAPTURED_SID).items(), ("Body", again)]
    # twilio's validator signs every value of a repeated name (a repeated value once)
    signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC + INBOUND, FormData(params))
    response = twilio.client.post(
        INBOUND,
        content=urlencode(params),
        headers={
            "X-Twilio-Signature": signature,
            "content-type": "application/x-www-form-urlencoded",
        },
    )
    assert response.status_code == 400, response.text
    assert "'Body' is repeated" in response.json()["detail"]
    assert snapshot(rt) == before


def status_params(sid: str, status: str = "delivered") -> dict[str, str]:
    """Every parameter Twilio sends in an SMS status callback."""
    return {
        "SmsSid": sid,
        "SmsStatus": status,
        "MessageStatus": status,
        "To": PATIENT_PHONE,
        "MessagingServiceSid": SERVICE,
        "MessageSid": sid,
        "AccountSid": ACCOUNT,
        "From": CLINIC_NUMBER,
        "ApiVersion": "2010-04-01",
        "RawDlrDoneDate": "2603271512",
    }


def test_everything_twilio_sends_in_a_status_callback_is_accepted(
    rt: Runtime, twilio: FakeTwilio
) -> None:
    reminder_id, sid = send_one_sms(rt)
    response = twilio.post(STATUS, status_params(sid))
    assert response.status_code == 200, response.text
    assert state_of(rt, reminder_id) == ("delivered", "delivered")


def test_a_failed_status_callback_with_its_error_fields_is_accepted(
    rt: Runtime, twilio: FakeTwilio
) -> None:
    reminder_id, sid = send_one_sms(rt)
    params = status_params(sid, "undelivered") | {
        "ErrorCode": "30003",
        "ErrorMessage": "Unreachable destination handset",
    }
    assert twilio.post(STATUS, params).status_code == 200
    assert state_of(rt, reminder_id) == ("failed", "undelivered")


def test_the_outbox_sms_transport_gives_twilio_shaped_sids(rt: Runtime) -> None:
    _reminder_id, sid = send_one_sms(rt)
    assert sid.startswith("SM")
    assert len(sid) == 34
    int(sid[2:], 16)


BAD_STATUS = [
    ("MessageSid", "SMxyz", "MessageSid"),
    ("MessageStatus", "delivered\r\n", "MessageStatus"),
    ("MessageStatus", "deliveredRawDlrDoneDate2603271512", "MessageStatus"),
    ("ErrorCode", "30003From", "ErrorCode"),
    ("RawDlrDoneDate", "26032715", "RawDlrDoneDate"),
    ("SmsStatus", "sent\n", "SmsStatus"),
    ("AccountSid", "AC", "AccountSid"),
    ("MediaUrl10", "https://example.org/x", "MediaUrl10"),
    ("Unknown", "", "Unknown"),
]


@pytest.mark.parametrize(
    ("field", "value", "named"), BAD_STATUS, ids=[f"{f}={v!r}"[:60] for f, v, _ in BAD_STATUS]
)
def test_a_signed_status_callback_with_a_field_not_shaped_as_twilios_is_400_and_changes_nothing(
    rt: Runtime, twilio: FakeTwilio, field: str, value: str, named: str
) -> None:
    reminder_id, sid = send_one_sms(rt)
    before = snapshot(rt)
    response = twilio.post(STATUS, status_params(sid) | {field: value})
    assert response.status_code == 400, response.text
    assert named in response.json()["detail"]
    assert snapshot(rt) == before
    with rt.db.session() as s:
        attempt = s.scalars(
            select(DeliveryAttempt).where(DeliveryAttempt.reminder_id == reminder_id)
        ).one()
    assert attempt.status_updated_at is None


def test_a_status_callback_resplit_after_a_later_one_changes_nothing(
    rt: Runtime, twilio: FakeTwilio
) -> None:
    reminder_id, sid = send_one_sms(rt)
    captured = status_params(sid, "undelivered") | {"ErrorCode": "30003"}
    signature = twilio.sign(PUBLIC + STATUS, captured)
    assert twilio.post(STATUS, captured, signature=signature).status_code == 200
    assert twilio.post(STATUS, status_params(sid, "delivered")).status_code == 200
    before = snapshot(rt)
    # ErrorCode swallows From: the same signed string, an unknown-looking code
    resplit = {k: v for k, v in captured.items() if k != "From"}
    resplit["ErrorCode"] = captured["ErrorCode"] + "From" + captured["From"]
    assert signed_alike(twilio, STATUS, captured, resplit)
    assert twilio.post(STATUS, resplit, signature=signature).status_code == 400
    assert twilio.post(STATUS, captured, signature=signature).status_code == 200
    assert snapshot(rt) == before
    assert state_of(rt, reminder_id) == ("delivered", "delivered")
