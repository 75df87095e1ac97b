"""The inbound SMS webhook, end to end through the real app, on SQLite and PostgreSQL.

Requests are signed exactly as Twilio signs them (twilio's own RequestValidator, over the
public URL), and the app is reached at http://testserver: the URL it sees is never the one
that was signed, as behind a TLS proxy.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from twilio.request_validator import RequestValidator

from aftercare.clock import FixedClock
from aftercare.inbound.replies import FALLBACK_SAFETY_ADVICE, Replies
from aftercare.messages.context import SAMPLE_CLINIC_NAME, SAMPLE_CLINIC_PHONE
from aftercare.messages.gsm import sms_encoding
from aftercare.messages.render import MessageRenderer
from aftercare.patients.service import erase_patient
from aftercare.reminders import states
from aftercare.runtime import Runtime
from aftercare.storage.models import (
    AuditEvent,
    Flag,
    InboundMessage,
    Patient,
    Reminder,
    TreatmentSession,
)
from aftercare.web.app import create_app
from tests.conftest import REPO
from tests.factories import PATIENT_PHONE, enrol
from tests.reminders.test_delivery import claim_all, deliver_all, keep_only, sent_log
from tests.web.test_api import add_staff as add_api_staff
from tests.web.test_pages import NURSE, log_in
from tests.web.test_pages import add_staff as add_page_staff

if TYPE_CHECKING:
    from httpx2 import Response  # what starlette's TestClient answers with

# PostgreSQL work in one transaction rolled back after each test (tests/conftest.py).
pytestmark = pytest.mark.rollback

AUTH_TOKEN = "test-twilio-auth-token-0123456789abcdef"
PUBLIC = "https://clinic.example"
INBOUND = "/webhooks/twilio/inbound"
STATUS = "/webhooks/twilio/status"
CLINIC_NUMBER = "+447700900000"
STRANGER = "+447700900999"
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response />'


@dataclass
class FakeTwilio:
    """Posts webhooks as Twilio does: form-encoded and signed over the public URL."""

    client: TestClient
    token: str = AUTH_TOKEN
    sids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def sign(self, url: str, params: Mapping[str, str]) -> str:
        return str(RequestValidator(self.token).compute_signature(url, dict(params)))

    def post(
        self,
        path: str,
        params: Mapping[str, str],
        *,
        signature: str | None = None,
        sign_url: str | None = None,
    ) -> Response:
        headers = {}
        if signature is None:
            signature = self.sign(sign_url or PUBLIC + path, params)
        if signature:
            headers["X-Twilio-Signature"] = signature
        return self.client.post(path, data=dict(params), headers=headers)

    def sms_params(
        self, body: str, *, sender: str = PATIENT_PHONE, sid: str = ""
    ) -> dict[str, str]:
        return {
            "MessageSid": sid or f"SM{next(self.sids):032d}",
            "AccountSid": "AC" + "0" * 32,
            "From": sender,
            "To": CLINIC_NUMBER,
            "Body": body,
            "NumMedia": "0",
        }

    def sms(self, body: str, *, sender: str = PATIENT_PHONE, sid: str = "") -> Response:
        return self.post(INBOUND, self.sms_params(body, sender=sender, sid=sid))

    def status(self, sid: str, status: str, error_code: str | None = None) -> Response:
        params = {"MessageSid": sid, "MessageStatus": status, "To": PATIENT_PHONE}
        if error_code:
            params["ErrorCode"] = error_code
        return self.post(STATUS, params)


@pytest.fixture
def rt(runtime: Runtime) -> Runtime:
    """The shared runtime, with a Twilio auth token and a public (proxied) base URL."""
    runtime.settings = runtime.settings.model_copy(
        update={"twilio_auth_token": AUTH_TOKEN, "public_base_url": PUBLIC}
    )
    return runtime


@pytest.fixture
def twilio(rt: Runtime) -> Iterator[FakeTwilio]:
    with TestClient(create_app(rt)) as client:
        yield FakeTwilio(client)


def count(rt: Runtime, model: type[object]) -> int:
    with rt.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def patient(rt: Runtime, patient_id: int | None = None) -> Patient:
    with rt.db.session() as s:
        query = select(Patient).order_by(Patient.id)
        if patient_id is not None:
            query = query.where(Patient.id == patient_id)
        return s.scalars(query).first()  # type: ignore[return-value]


def flags(rt: Runtime) -> list[Flag]:
    with rt.db.session() as s:
        return list(s.scalars(select(Flag).order_by(Flag.id)))


def inbound(rt: Runtime) -> list[InboundMessage]:
    with rt.db.session() as s:
        return list(s.scalars(select(InboundMessage).order_by(InboundMessage.id)))


def audits(rt: Runtime, action: str) -> list[AuditEvent]:
    with rt.db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def assert_twiml(response: Response, *texts: str) -> str:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    for text in texts:
        assert text in response.text
    return response.text


def ask_checkin(rt: Runtime, clock: FixedClock) -> None:
    """Play the session forward until its check-in question has been sent."""
    keep_only(rt, "checkin")
    clock.advance(timedelta(weeks=10, days=1))
    assert set(deliver_all(rt, claim_all(rt))) == {states.SENT}


# --- Opt-out and opt-in ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "keyword"), [("STOP", "STOP"), ("stop.", "STOP"), ("Unsubscribe", "UNSUBSCRIBE")]
)
def test_stop_keyword_then_sms_consent_withdrawn_with_source_and_empty_reply(
    rt: Runtime, twilio: FakeTwilio, clock: FixedClock, body: str, keyword: str
) -> None:
    enrol(rt)
    response = twilio.sms(body)
    assert assert_twiml(response) == EMPTY_TWIML  # Twilio confirms STOP itself
    who = patient(rt)
    assert who.sms_opted_out_at == clock.now()
    assert who.sms_opt_out_source == f"sms:{keyword}"
    [event] = audits(rt, "opt_out")
    assert (event.patient_id, event.detail["source"]) == (who.id, f"sms:{keyword}")
    assert [m.kind for m in inbound(rt)] == ["opt_out"]
    assert flags(rt) == []


def test_stop_then_queued_sms_cancelled_by_delivery_and_email_still_sent(
    rt: Runtime, twilio: FakeTwilio
) -> None:
    enrol(rt)
    queued = claim_all(rt)  # the welcome SMS and email, already handed to the workers
    twilio.sms("STOP")
    deliver_all(rt, queued)
    assert sent_log(rt, "sms") == []
    assert len(sent_log(rt, "email")) == 1
    with rt.db.session() as s:
        sms = s.scalars(select(Reminder).where(Reminder.id.in_(queued), Reminder.channel == "sms"))
        assert {(r.state, r.reason) for r in sms} == {
            (states.CANCELLED, "patient opted out of SMS")
        }


def test_stop_then_every_patient_with_that_number_opted_out(
    rt: Runtime, twilio: FakeTwilio
) -> None:
    enrol(rt)
    enrol(rt, name="Quentin Quennell", email="quentin@example.org")
    twilio.sms("STOP")
    with rt.db.session() as s:
        assert all(p.sms_opted_out_at for p in s.scalars(select(Patient)))
    assert len(audits(rt, "opt_out")) == 2


def test_start_after_stop_then_consent_restored_audited_and_confirmed(
    rt: Runtime, twilio: FakeTwilio
) -> None:
    enrol(rt)
    twilio.sms("STOP")
    response = twilio.sms("START")
    assert_twiml(response, "<Message>", "again", "Riverside Vein Clinic")
    who = patient(rt)
    assert (who.sms_opted_out_at, who.sms_opt_out_source) == (None, None)
    assert len(audits(rt, "opt_in")) == 1
    assert flags(rt) == []


def test_yes_when_not_opted_out_then_shown_to_staff_as_it_may_answer_a_question(
    rt: Runtime, twilio: FakeTwilio
) -> None:
    enrol(rt)
    twilio.sms("Yes")
    assert audits(rt, "opt_in") == []
    [flag] = flags(rt)
    assert (flag.kind, flag.urgent) == ("unrecognised_reply", False)


def test_help_then_answered_with_clinic_name_and_phone(rt: Runtime, twilio: FakeTwilio) -> None:
    enrol(rt)
    response = twilio.sms("HELP")
    assert_twiml(response, "<Message>", "Riverside Vein Clinic", "020 7946 0000", "999")
    assert flags(rt) == []
    assert patient(rt).sms_opted_out_at is None
    [message] = inbound(rt)
    assert message.kind == "help"
    assert message.response_text is not None
    assert "020 7946 0000" in message.response_text


# --- Check-in answers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "answer"),
    [("1", "1"), ("2", "2"), ("All faded now, thanks", "1"), ("still fading a bit", "2")],
)
@pytest.mark.commits  # delivers: record_sent writes on its own connection
def test_checkin_answer_when_asked_then_recorded_on_session_and_thanked(
    rt: Runtime, twilio: FakeTwilio, clock: FixedClock, body: str, answer: str
) -> None:
    session_id = enrol(rt)
    ask_checkin(rt, clock)
    response = twilio.sms(body)
    assert_twiml(response, "<Message>", "Thank you")
    with rt.db.session() as s:
        session = s.get_one(TreatmentSession, session_id)
    assert (session.checkin_answer, session.checkin_answered_at) == (answer, clock.now())
    assert flags(rt) == []
    assert inbound(rt)[0].checkin_answer == answer


@pytest.mark.commits  # delivers: record_sent writes on its own connection
@pytest.mark.parametrize("body", ["3", "Still dark", "worried, they are still there"])
def test_checkin_answer_3_then_recorded_flagged_concern_and_safety_net_sent(
    rt: Runtime, twilio: FakeTwilio, clock: FixedClock, body: str
) -> None:
    # Issue 13: marks not fading at the check-in are a concern (staff follow up), not urgent.
    session_id = enrol(rt)
    ask_checkin(rt, clock)
    response = twilio.sms(body)
    assert_twiml(response, "<Message>", "111", "999", "call you")
    with rt.db.session() as s:
        assert s.get_one(TreatmentSession, session_id).checkin_answer == "3"
    [flag] = flags(rt)
    assert (flag.kind, flag.severity, flag.session_id) == ("checkin_concern", "concern", session_id)
    assert body in flag.text


def test_checkin_answer_before_the_checkin_was_asked_then_not_recorded_but_shown_to_staff(
    rt: Runtime, twilio: FakeTwilio
) -> None:
    session_id = enrol(rt)
    # Issue 13: acknowledged with the safety net rather than left unanswered.
    assert_twiml(twilio.sms("1"), "one working day", "999")
    with rt.db.session() as s:
        assert s.get_one(TreatmentSession, session_id).checkin_answer is None
    [flag] = flags(rt)
    assert (flag.kind, flag.urgent) == ("unrecognised_reply", False)


@pytest.mark.commits  # delivers: record_sent writes on its own connection
def test_later_checkin_answer_then_replaces_the_earlier_one(
    rt: Runtime, twilio: FakeTwilio, clock: FixedClock
) -> None:
    session_id = enrol(rt)
    ask_checkin(rt, clock)
    twilio.sms("2")
    clock.advance(timedelta(days=2))
    twilio.sms("3")
    with rt.db.session() as s:
        session = s.get_one(TreatmentSession, session_id)
    assert (session.checkin_answer, session.checkin_answered_at) == ("3", clock.now())


# --- Warning signs and other replies ---------------------------------------------------------


def test_urgent_reply_then_urgent_flag_and_safety_advice_at_once(
    rt: Runtime, twilio: FakeTwilio
) -> None:
    session_id = enrol(rt)
    response = twilio.sms("my calf is swollen and painful")
    text = assert_twiml(response, "<Message>", "NHS 111", "999", "020 7946 0000")
    assert "call you today" in text
    [flag] = flags(rt)
    assert (flag.kind, flag.urgent, flag.session_id) == ("urgent_reply", True, session_id)
    assert (flag.severity, flag.signs) == ("urgent", "pain in a leg, swelling")
    assert flag.told == text.split("<Message>")[1].split("</Message>")[0]
    assert "my calf is swollen and painful" in flag.text
    [message] = inbound(rt)
    assert (message.kind, message.patient_id, message.session_id) == (
        "urgent",
        patient(rt).id,
        session_id,
    )
    assert message.response_text is not None
    assert "999" in message.response_text


def test_breathless_reply_then_flag_marks_an_emergency(rt: Runtime, twilio: FakeTwilio) -> None:
    enrol(rt)
    assert_twiml(twilio.sms("I suddenly can't breathe"), "999")
    [flag] = flags(rt)
    assert flag.urgent
    assert flag.text.startswith("EMERGENCY")


def test_urgent_reply_from_opted_out_patient_then_still_flagged_and_answered(
    rt: Runtime, twilio: FakeTwilio
) -> None:
    enrol(rt)
    twilio.sms("STOP")
    assert_twiml(twilio.sms("chest pain"), "999")
    assert [f.kind for f in flags(rt)] == ["urgent_reply"]


def test_unrecognised_reply_then_stored_and_flagged_not_urgent(
    rt: Runtime, twilio: FakeTwilio
) -> None:
    enrol(rt)
    response = twilio.sms("Can I move my next appointment to Friday?")
    # Issue 13: a question is answered (a nurse will reply, and the safety net) and flagged.
    assert_twiml(response, "one working day", "999")
    [message] = inbound(rt)
    assert (message.kind, message.severity, message.body) == (
        "question",
        "concern",
        "Can I move my next appointment to Friday?",
    )
    [flag] = flags(rt)
    assert (flag.kind, flag.urgent, flag.inbound_id) == ("unrecognised_reply", False, message.id)
    assert "Friday" in flag.text


def test_message_from_unknown_number_then_stored_without_patient(
    rt: Runtime, twilio: FakeTwilio
) -> None:
    enrol(rt)
    assert_twiml(twilio.sms("hello?", sender=STRANGER), "999")
    [message] = inbound(rt)
    assert (message.patient_id, message.session_id, message.from_number) == (None, None, STRANGER)
    [flag] = flags(rt)  # staff read it, whoever sent it
    assert (flag.kind, flag.patient_id, flag.inbound_id) == ("unrecognised_reply", None, message.id)


def test_urgent_message_from_unknown_number_then_still_answered_with_safety_advice(
    rt: Runtime, twilio: FakeTwilio
) -> None:
    response = twilio.sms("my leg is hot and swollen", sender=STRANGER)
    text = assert_twiml(response, "<Message>", "111", "999")
    assert "call you back" not in text  # we do not know who they are
    assert [m.kind for m in inbound(rt)] == ["urgent"]


def test_urgent_message_from_unknown_number_then_flagged_and_listed_for_staff(
    rt: Runtime, twilio: FakeTwilio
) -> None:
    """Issue 12, item 13: staff must see an urgent text whoever sent it."""
    enrol(rt)
    twilio.sms("my leg is hot and swollen", sender=STRANGER)

    [flag] = flags(rt)
    [message] = inbound(rt)
    assert (flag.kind, flag.urgent, flag.patient_id, flag.inbound_id) == (
        "urgent_reply",
        True,
        None,
        message.id,
    )
    _, token = add_api_staff(rt, "api-nurse@example.org", "staff")
    listed = twilio.client.get("/api/v1/flags", headers={"Authorization": f"Bearer {token}"})
    assert [(f["id"], f["patient_id"]) for f in listed.json()] == [(flag.id, None)]

    add_page_staff(rt, NURSE, "staff")
    staff = TestClient(twilio.client.app, base_url=PUBLIC, follow_redirects=False)
    assert log_in(staff).status_code == 303
    for path in ("/flags", "/"):
        page = staff.get(path)
        assert page.status_code == 200, page.text
        assert f'href="tel:{STRANGER}"' in page.text
        assert "Unknown number" in page.text
        assert "my leg is hot and swollen" in page.text


def test_flag_on_a_text_from_a_number_later_erased_then_its_quote_is_scrubbed(
    rt: Runtime, twilio: FakeTwilio, clock: FixedClock
) -> None:
    twilio.sms("my leg is hot and swollen", sender=PATIENT_PHONE)  # before they were enrolled
    clock.advance(timedelta(minutes=5))
    session_id = enrol(rt)
    with rt.db.session() as s:
        patient_id = s.get_one(TreatmentSession, session_id).patient_id
    with rt.db.session() as s:
        erase_patient(db_session=s, patient_id=patient_id, actor_id=None, now=clock.now())
    [flag] = flags(rt)
    assert flag.patient_id is None
    assert "swollen" not in flag.text


def test_stop_from_unknown_number_then_stored_and_nobody_changed(
    rt: Runtime, twilio: FakeTwilio
) -> None:
    enrol(rt)
    twilio.sms("STOP", sender=STRANGER)
    assert patient(rt).sms_opted_out_at is None
    assert [m.kind for m in inbound(rt)] == ["opt_out"]


def test_most_recent_patient_with_the_number_then_the_one_matched(
    rt: Runtime, twilio: FakeTwilio, clock: FixedClock
) -> None:
    enrol(rt)
    clock.advance(timedelta(days=1))
    newer = enrol(rt, name="Quentin Quennell")
    twilio.sms("Who is this?")
    [message] = inbound(rt)
    assert message.session_id == newer


# --- Triage: severity, the safety net, stop requests, booking, languages (issue 13) ---------


def _said(response: Response) -> str:
    text = assert_twiml(response, "<Message>")
    return text.split("<Message>")[1].split("</Message>")[0]


@pytest.mark.parametrize(
    "body", ["my lips are swelling up", "went down like a sack of potatoes", "coughed blood"]
)
def test_emergency_reply_then_999_first_do_not_wait_and_an_emergency_flag(
    rt: Runtime, twilio: FakeTwilio, body: str
) -> None:
    enrol(rt)
    said = _said(twilio.sms(body))
    assert said.startswith("Riverside Vein Clinic: Call 999 now.")
    assert "Do not wait for our call" in said
    [flag] = flags(rt)
    assert (flag.kind, flag.severity, flag.urgent) == ("urgent_reply", "emergency", True)
    assert flag.told == said
    assert inbound(rt)[0].severity == "emergency"


def test_numb_toes_then_urgent_answer_says_take_the_stocking_off(
    rt: Runtime, twilio: FakeTwilio
) -> None:
    enrol(rt)
    said = _said(twilio.sms("my toes have gone numb and cold in the stocking"))
    assert "020 7946 0000" in said
    assert "NHS 111" in said
    assert "Take the stocking off" in said
    assert flags(rt)[0].severity == "urgent"


@pytest.mark.parametrize("body", ["please stop texting me", "wrong number, stop", "STOP please"])
def test_stop_request_in_words_then_consent_withdrawn_confirmed_with_how_to_restart(
    rt: Runtime, twilio: FakeTwilio, body: str
) -> None:
    enrol(rt)
    response = twilio.sms(body)
    who = patient(rt)
    assert who.sms_opted_out_at is not None
    if body == "STOP please":  # a keyword: Twilio confirms it and blocks replies
        assert assert_twiml(response) == EMPTY_TWIML
        return
    said = _said(response)
    assert "no more texts" in said
    assert "START" in said
    assert who.sms_opt_out_source == "sms:words"
    assert [(f.kind, f.severity) for f in flags(rt)] == [("opt_out", "info")]


@pytest.mark.parametrize(
    "body",
    ["can I stop wearing the stockings?", "the bleeding has stopped", "cancel my appointment"],
)
def test_nothing_but_a_stop_request_opts_out(rt: Runtime, twilio: FakeTwilio, body: str) -> None:
    enrol(rt)
    twilio.sms(body)
    assert patient(rt).sms_opted_out_at is None
    assert audits(rt, "opt_out") == []


@pytest.mark.commits  # delivers: record_sent writes on its own connection
def test_yes_after_the_checkin_then_a_booking_request_not_start(
    rt: Runtime, twilio: FakeTwilio, clock: FixedClock
) -> None:
    enrol(rt)
    ask_checkin(rt, clock)
    said = _said(twilio.sms("Yes"))
    assert "book" in said
    assert "texts again" not in said
    assert audits(rt, "opt_in") == []
    assert [(f.kind, f.severity) for f in flags(rt)] == [("booking_request", "concern")]


@pytest.mark.parametrize("body", ["BOOK", "Could I book another session please"])
def test_booking_request_then_flagged_as_a_concern_and_acknowledged(
    rt: Runtime, twilio: FakeTwilio, body: str
) -> None:
    enrol(rt)
    assert "book" in _said(twilio.sms(body))
    assert [(f.kind, f.severity) for f in flags(rt)] == [("booking_request", "concern")]


def test_reply_in_polish_then_urgent_interpreter_flag_and_safety_line_in_english_and_polish(
    rt: Runtime, twilio: FakeTwilio
) -> None:
    enrol(rt)
    said = _said(twilio.sms("Boli mnie noga i jest bardzo spuchnięta"))
    assert "We could not read your message" in said
    assert "Nie mogliśmy przeczytać" in said
    [flag] = flags(rt)
    assert (flag.kind, flag.severity) == ("unrecognised_reply", "urgent")
    assert "interpreter (Polish)" in flag.text


def test_thanks_then_one_acknowledgement_every_few_hours(
    rt: Runtime, twilio: FakeTwilio, clock: FixedClock
) -> None:
    enrol(rt)
    assert "Thank you" in _said(twilio.sms("thanks!"))
    clock.advance(timedelta(hours=1))
    assert assert_twiml(twilio.sms("cheers x")) == EMPTY_TWIML
    clock.advance(timedelta(hours=4))
    assert "Thank you" in _said(twilio.sms("ok thank you"))
    assert flags(rt) == []


def test_denied_signs_then_answered_with_the_safety_net_and_no_flag(
    rt: Runtime, twilio: FakeTwilio
) -> None:
    enrol(rt)
    said = _said(twilio.sms("no chest pain or breathlessness, just bruising"))
    assert "999" in said
    assert "111" in said
    assert flags(rt) == []
    assert inbound(rt)[0].severity == "info"


def test_dying_skin_at_the_checkin_then_urgent_never_answer_1(
    rt: Runtime, twilio: FakeTwilio, clock: FixedClock
) -> None:
    session_id = enrol(rt)
    ask_checkin(rt, clock)
    twilio.sms("the spot has gone dark purple then black")
    with rt.db.session() as s:
        assert s.get_one(TreatmentSession, session_id).checkin_answer is None
    assert [(f.kind, f.severity) for f in flags(rt)] == [("urgent_reply", "urgent")]


# --- Retries ---------------------------------------------------------------------------------


def test_duplicate_message_sid_then_same_answer_and_no_second_effect(
    rt: Runtime, twilio: FakeTwilio
) -> None:
    enrol(rt)
    params = twilio.sms_params("my calf is swollen and painful")
    first = twilio.post(INBOUND, params)
    again = twilio.post(INBOUND, params)
    assert first.text == again.text
    assert_twiml(again, "999")
    assert count(rt, InboundMessage) == 1
    assert count(rt, Flag) == 1


def test_duplicate_stop_then_opt_out_time_and_audit_unchanged(
    rt: Runtime, twilio: FakeTwilio, clock: FixedClock
) -> None:
    enrol(rt)
    first_at = clock.now()
    twilio.sms("STOP")
    clock.advance(timedelta(minutes=5))
    twilio.sms("STOP")  # a second STOP (a new message) keeps the first withdrawal
    assert patient(rt).sms_opted_out_at == first_at
    assert len(audits(rt, "opt_out")) == 1
    assert count(rt, InboundMessage) == 2


# --- Signatures ------------------------------------------------------------------------------


def snapshot(rt: Runtime) -> tuple[object, ...]:
    with rt.db.session() as s:
        patients = [(p.sms_opted_out_at, p.sms_blocked_at) for p in s.scalars(select(Patient))]
        reminders = [(r.state, r.reason) for r in s.scalars(select(Reminder).order_by(Reminder.id))]
    return (
        count(rt, InboundMessage),
        count(rt, Flag),
        count(rt, AuditEvent),
        patients,
        reminders,
    )


def forged(twilio: FakeTwilio, path: str, how: str) -> Response:
    params = (
        twilio.sms_params("STOP")
        if path == INBOUND
        else {"MessageSid": "outbox-reminder-1", "MessageStatus": "delivered"}
    )
    if how == "missing":
        return twilio.post(path, params, signature="")
    if how == "forged":
        return twilio.post(path, params, signature="bm90IGEgcmVhbCBzaWduYXR1cmU=")
    if how == "wrong-token":
        return FakeTwilio(twilio.client, token="someone-elses-token").post(path, params)
    if how == "url-the-app-sees":
        return twilio.post(path, params, sign_url=f"http://testserver{path}")
    if how == "another-url":
        other = STATUS if path == INBOUND else INBOUND
        return twilio.post(path, params, sign_url=PUBLIC + other)
    assert how == "replayed-with-altered-params"
    signature = twilio.sign(PUBLIC + path, params)
    altered = (
        {**params, "Body": "START"} if path == INBOUND else {**params, "MessageStatus": "failed"}
    )
    return twilio.post(path, altered, signature=signature)


@pytest.mark.parametrize("path", [INBOUND, STATUS])
@pytest.mark.parametrize(
    "how",
    [
        "missing",
        "forged",
        "wrong-token",
        "url-the-app-sees",
        "another-url",
        "replayed-with-altered-params",
    ],
)
def test_unsigned_or_wrongly_signed_webhook_then_403_and_nothing_changed(
    rt: Runtime, twilio: FakeTwilio, path: str, how: str
) -> None:
    enrol(rt)
    deliver_all(rt, claim_all(rt))  # so that a status callback would have a message to change
    before = snapshot(rt)
    response = forged(twilio, path, how)
    assert response.status_code == 403
    assert snapshot(rt) == before


def test_no_auth_token_configured_then_every_webhook_refused(
    rt: Runtime, twilio: FakeTwilio
) -> None:
    enrol(rt)
    rt.settings = rt.settings.model_copy(update={"twilio_auth_token": ""})
    unsigned_ok = FakeTwilio(twilio.client, token="")  # what an empty key would accept
    assert unsigned_ok.sms("STOP").status_code == 403
    assert count(rt, InboundMessage) == 0


def test_signature_over_public_url_with_query_string_then_accepted(
    rt: Runtime, twilio: FakeTwilio
) -> None:
    enrol(rt)
    params = twilio.sms_params("HELP")
    path = f"{INBOUND}?clinic=riverside&v=2"
    response = twilio.post(path, params, sign_url=PUBLIC + path)
    assert_twiml(response, "<Message>")
    dropped = twilio.post(path, twilio.sms_params("HELP"), sign_url=PUBLIC + INBOUND)
    assert dropped.status_code == 403


def test_public_base_url_with_trailing_slash_then_signature_still_matches(
    rt: Runtime, twilio: FakeTwilio
) -> None:
    rt.settings = rt.settings.model_copy(update={"public_base_url": PUBLIC + "/"})
    enrol(rt)
    assert_twiml(twilio.sms("HELP"), "<Message>")


def test_signed_request_without_message_sid_then_400_and_nothing_stored(
    rt: Runtime, twilio: FakeTwilio
) -> None:
    response = twilio.post(INBOUND, {"From": PATIENT_PHONE, "Body": "hi"})
    assert response.status_code == 400
    assert count(rt, InboundMessage) == 0


def test_erased_patient_then_not_matched(
    rt: Runtime, twilio: FakeTwilio, clock: FixedClock
) -> None:
    enrol(rt)
    with rt.db.session() as s:
        s.execute(update(Patient).values(erased_at=clock.now()))
    twilio.sms("my calf hurts")
    [message] = inbound(rt)
    assert message.patient_id is None
    assert [(f.patient_id, f.inbound_id) for f in flags(rt)] == [(None, message.id)]


# --- Reply templates -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "extra"),
    [
        ("help", {"resubscribed": False}),
        ("help", {"resubscribed": True}),
        ("checkin-thanks", {}),
    ],
)
def test_reply_template_with_longest_sample_clinic_details_then_gsm7_within_two_segments(
    template: str, extra: dict[str, object]
) -> None:
    renderer = MessageRenderer(REPO / "templates")
    context = {"clinic_name": SAMPLE_CLINIC_NAME, "clinic_phone": SAMPLE_CLINIC_PHONE, **extra}
    sms = renderer.render_sms(template, context)
    assert (sms.encoding, sms.segments <= 2) == ("GSM-7", True)
    assert sms.body.startswith(f"{SAMPLE_CLINIC_NAME}: ")
    assert SAMPLE_CLINIC_PHONE in sms.body


def test_built_in_safety_advice_then_gsm7_within_two_segments() -> None:
    encoding = sms_encoding(FALLBACK_SAFETY_ADVICE)
    assert (encoding.encoding, encoding.segments <= 2) == ("GSM-7", True)
    assert "999" in FALLBACK_SAFETY_ADVICE
    assert "111" in FALLBACK_SAFETY_ADVICE


def test_an_answer_missing_from_the_data_then_built_in_advice_sent() -> None:
    replies = Replies(
        renderer=MessageRenderer(REPO / "templates"),
        clinic_name="Clinic",
        clinic_phone="020 7946 0000",
    )
    assert replies.answer("no-such-answer") == FALLBACK_SAFETY_ADVICE
