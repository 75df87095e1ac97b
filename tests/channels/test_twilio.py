"""The Twilio SMS transport, through the real delivery service and the real ``twilio`` client,
against a local fake of Twilio's Messages API (tests/fakes/twilio.py). Assertions are on what the
fake received and on the stored reminder and attempt, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from aftercare.channels.base import SendResult, SmsMessage, TransportError
from aftercare.channels.twilio.ratelimit import LocalRateLimiter
from aftercare.channels.twilio.transport import Timeouts, TwilioTransport
from aftercare.cli.main import cli
from aftercare.clock import FixedClock
from aftercare.reminders import delivery, dispatch, states
from aftercare.reminders.compose import compose
from aftercare.runtime import Runtime, set_runtime
from aftercare.storage.models import DeliveryAttempt, Patient, Reminder, TreatmentSession
from tests.conftest import make_settings
from tests.factories import PATIENT_PHONE, enrol
from tests.fakes.twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio
from tests.reminders.test_delivery import claim_all, deliver_all, keep_only, reminder_states

CLINIC_NUMBER = "+447700900123"
SERVICE_SID = "MG" + "fedcba9876543210" * 2
PUBLIC_URL = "https://aftercare.example-clinic.co.uk"
STATUS_CALLBACK = f"{PUBLIC_URL}/webhooks/twilio/status"


@pytest.fixture
def fake(clock: FixedClock) -> Iterator[FakeTwilio]:
    # Twilio's clock agrees with ours, so "messages since the attempt began" means the same.
    with FakeTwilio(clock=clock.now) as server:
        yield server


def twilio_settings(fake: FakeTwilio, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "sms_transport": "twilio",
        "twilio_api_base": fake.url,
        "twilio_account_sid": ACCOUNT_SID,
        "twilio_auth_token": AUTH_TOKEN,
        "twilio_from": CLINIC_NUMBER,
        "public_base_url": PUBLIC_URL,
    }
    values.update(overrides)
    return values


@contextmanager
def twilio_runtime(
    tmp_path: Path, database_url: str, fake: FakeTwilio, clock: FixedClock, **overrides: Any
) -> Iterator[Runtime]:
    """The current runtime, on ``database_url``, its SMS going to ``fake`` (with settings
    ``overrides``); unset and disposed on the way out."""
    rt = Runtime(
        make_settings(tmp_path, database_url=database_url, **twilio_settings(fake, **overrides))
    )
    rt.clock = clock
    set_runtime(rt)
    try:
        yield rt
    finally:
        set_runtime(None)
        rt.db.dispose()


@pytest.fixture
def sms_rt(
    tmp_path: Path, database_url: str, clock: FixedClock, fake: FakeTwilio
) -> Iterator[Runtime]:
    """A runtime whose SMS goes to the fake Twilio; one welcome SMS is due now."""
    with twilio_runtime(tmp_path, database_url, fake, clock) as rt:
        enrol(rt, channels=("sms",), email=None)
        keep_only(rt, "welcome")
        yield rt


def expected_sms(rt: Runtime, reminder_id: int) -> SmsMessage:
    """The message delivery composes for this reminder (what Twilio should receive)."""
    deps = rt.delivery_deps()
    with rt.db.session() as s:
        reminder = s.get_one(Reminder, reminder_id)
        session = s.get_one(TreatmentSession, reminder.session_id)
        patient = s.get_one(Patient, session.patient_id)
        message = compose(
            reminder=reminder,
            session=session,
            patient=patient,
            registry=deps.registry,
            renderer=deps.renderer,
            quiet=deps.quiet,
            clinic=deps.clinic,
        )
    assert isinstance(message, SmsMessage)
    return message


def attempts(rt: Runtime) -> list[DeliveryAttempt]:
    with rt.db.session() as s:
        rows = s.scalars(select(DeliveryAttempt).order_by(DeliveryAttempt.id)).all()
        s.expunge_all()
        return list(rows)


def reminder(rt: Runtime, reminder_id: int) -> Reminder:
    with rt.db.session() as s:
        row = s.get_one(Reminder, reminder_id)
        s.expunge(row)
        return row


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Sending ------------------------------------------------------------------------------------


def test_reminder_delivered_reaches_twilio_once_with_sender_body_and_status_callback(
    sms_rt: Runtime, fake: FakeTwilio
) -> None:
    ids = claim_all(sms_rt)
    assert deliver_all(sms_rt, ids) == [states.SENT]
    [got] = fake.received
    assert got.answer == "201"
    assert (got.to, got.from_, got.messaging_service_sid) == (PATIENT_PHONE, CLINIC_NUMBER, None)
    assert got.body == expected_sms(sms_rt, ids[0]).body
    assert got.status_callback == STATUS_CALLBACK
    [attempt] = attempts(sms_rt)
    assert (attempt.transport, attempt.outcome) == ("twilio", "sent")
    assert (attempt.provider_id, attempt.provider_status) == (got.sid, "queued")
    assert attempt.provider_id is not None
    assert attempt.provider_id.startswith("SM")
    assert len(attempt.provider_id) == 34


def test_messaging_service_configured_then_sent_through_the_service_not_a_number(
    tmp_path: Path, sqlite_url: str, clock: FixedClock, fake: FakeTwilio
) -> None:
    settings = twilio_settings(fake, twilio_messaging_service_sid=SERVICE_SID)
    rt = Runtime(make_settings(tmp_path, database_url=sqlite_url, **settings))
    rt.clock = clock
    enrol(rt, channels=("sms",), email=None)
    keep_only(rt, "welcome")
    assert deliver_all(rt, claim_all(rt)) == [states.SENT]
    [got] = fake.received
    assert (got.messaging_service_sid, got.from_) == (SERVICE_SID, None)
    assert attempts(rt)[0].provider_status == "accepted"
    rt.db.dispose()


# Error classes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer", ["429:20429", "500:20500", "503:20503"], ids=["429", "500", "503"]
)
def test_transient_twilio_error_then_rescheduled_with_backoff_and_later_sent_once(
    sms_rt: Runtime, fake: FakeTwilio, clock: FixedClock, answer: str
) -> None:
    fake.script(answer)
    ids = claim_all(sms_rt)
    assert deliver_all(sms_rt, ids) == ["retry"]
    row = reminder(sms_rt, ids[0])
    assert row.state == states.SCHEDULED
    assert row.due_at > clock.now()
    [attempt] = attempts(sms_rt)
    assert (attempt.outcome, attempt.error_code) == ("transient", answer.split(":")[1])
    assert fake.stored() == []
    assert fake.list_requests == []  # not ambiguous: Twilio said no, nothing to look up
    clock.advance(timedelta(minutes=5))
    assert deliver_all(sms_rt, claim_all(sms_rt)) == [states.SENT]
    assert [r.answer for r in fake.received] == [answer, "201"]
    assert len(fake.stored()) == 1


@pytest.mark.parametrize("code", ["21211", "21614", "21612", "21408", "21610"])
def test_permanent_twilio_error_then_reminder_failed_at_once_without_the_number_stored(
    sms_rt: Runtime, fake: FakeTwilio, clock: FixedClock, code: str
) -> None:
    fake.script(f"400:{code}")
    ids = claim_all(sms_rt)
    assert deliver_all(sms_rt, ids) == [states.FAILED]
    assert reminder_states(sms_rt)[ids[0]] == states.FAILED
    [attempt] = attempts(sms_rt)
    assert (attempt.outcome, attempt.error_code) == ("permanent", code)
    assert attempt.error_detail is not None
    assert PATIENT_PHONE not in attempt.error_detail
    clock.advance(timedelta(hours=2))
    assert claim_all(sms_rt) == []
    assert len(fake.received) == 1


def test_unsubscribed_recipient_21610_then_error_says_opted_out(fake: FakeTwilio) -> None:
    transport = TwilioTransport(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        from_=CLINIC_NUMBER,
        status_callback=STATUS_CALLBACK,
        api_base=fake.url,
        limiter=LocalRateLimiter(mps=10),
    )
    fake.script("400:21610", "400:21211")
    with pytest.raises(TransportError) as opted_out:
        transport.send(SmsMessage(key="reminder-1", to=PATIENT_PHONE, body="Hello"))
    assert (opted_out.value.permanent, opted_out.value.opted_out) == (True, True)
    assert opted_out.value.code == "21610"
    with pytest.raises(TransportError) as invalid:
        transport.send(SmsMessage(key="reminder-2", to=PATIENT_PHONE, body="Hello"))
    assert (invalid.value.permanent, invalid.value.opted_out) == (True, False)
    assert "21211" in invalid.value.message
    assert PATIENT_PHONE not in invalid.value.message
    assert "7911123456" not in invalid.value.message


def test_wrong_credentials_then_transient_so_no_patient_is_failed_for_our_fault(
    fake: FakeTwilio,
) -> None:
    transport = TwilioTransport(
        account_sid=ACCOUNT_SID,
        auth_token="not-the-token",
        from_=CLINIC_NUMBER,
        status_callback=STATUS_CALLBACK,
        api_base=fake.url,
        limiter=LocalRateLimiter(mps=10),
    )
    with pytest.raises(TransportError) as refused:
        transport.send(SmsMessage(key="reminder-1", to=PATIENT_PHONE, body="Hello"))
    assert (refused.value.permanent, refused.value.code) == (False, "20003")


def test_connection_refused_before_sending_then_transient_and_not_ambiguous(
    tmp_path: Path, sqlite_url: str, clock: FixedClock, fake: FakeTwilio
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    settings = twilio_settings(fake, twilio_api_base=closed)
    rt = Runtime(make_settings(tmp_path, database_url=sqlite_url, **settings))
    rt.clock = clock
    enrol(rt, channels=("sms",), email=None)
    keep_only(rt, "welcome")
    assert deliver_all(rt, claim_all(rt)) == ["retry"]
    [attempt] = attempts(rt)
    assert (attempt.outcome, attempt.error_code) == ("transient", "connect")
    rt.db.dispose()


# Ambiguous sends: the request may have reached Twilio ---------------------------------------


def test_twilio_accepts_then_drops_connection_then_reconciled_by_lookup_and_sent_once(
    sms_rt: Runtime, fake: FakeTwilio, clock: FixedClock
) -> None:
    fake.script("drop")
    ids = claim_all(sms_rt)
    assert deliver_all(sms_rt, ids) == [states.SENT]
    [stored] = fake.stored()
    [attempt] = attempts(sms_rt)
    assert (attempt.outcome, attempt.provider_id) == ("reconciled", stored.sid)
    assert fake.list_requests[0]["To"] == PATIENT_PHONE
    assert "DateSent>" in fake.list_requests[0]
    # A later retry or recovery pass finds nothing to do and sends nothing.
    clock.advance(timedelta(minutes=10))
    assert dispatch.stale_sending(db=sms_rt.db, clock=clock, stale_after=timedelta(minutes=5)) == []
    deps = sms_rt.delivery_deps()
    assert delivery.reconcile(deps=deps, reminder_id=ids[0]) == "not-sending"
    assert deliver_all(sms_rt, [*ids, *claim_all(sms_rt)], deps) == ["not-queued"]
    assert len(fake.received) == 1
    assert reminder_states(sms_rt)[ids[0]] == states.SENT


def test_request_lost_before_twilio_accepted_it_then_sent_again_once(
    sms_rt: Runtime, fake: FakeTwilio
) -> None:
    fake.script("lost")
    ids = claim_all(sms_rt)
    # Not found straight away: Twilio's list may lag, so nothing is resent yet.
    assert deliver_all(sms_rt, ids) == ["unconfirmed"]
    assert reminder_states(sms_rt)[ids[0]] == states.SENDING
    assert claim_all(sms_rt) == []
    # The recovery pass asks again minutes later, still finds nothing, and sends it again.
    clock = sms_rt.clock
    assert isinstance(clock, FixedClock)
    clock.advance(timedelta(minutes=10))
    stale = dispatch.stale_sending(db=sms_rt.db, clock=clock, stale_after=timedelta(minutes=5))
    assert stale == ids
    assert delivery.reconcile(deps=sms_rt.delivery_deps(), reminder_id=ids[0]) == "resend"
    assert fake.stored() == []
    assert deliver_all(sms_rt, claim_all(sms_rt)) == [states.SENT]
    assert [r.answer for r in fake.received] == ["lost", "201"]
    assert len(fake.stored()) == 1
    assert [a.outcome for a in attempts(sms_rt)] == ["lost", "sent"]


def test_twilio_accepts_then_hangs_past_read_timeout_then_reconciled_and_sent_once(
    sms_rt: Runtime, fake: FakeTwilio
) -> None:
    fake.script("hang")
    deps = sms_rt.delivery_deps()
    deps.transports["sms"] = TwilioTransport.from_settings(
        sms_rt.settings, timeouts=Timeouts(connect=2.0, read=0.5)
    )
    ids = claim_all(sms_rt)
    assert deliver_all(sms_rt, ids, deps) == [states.SENT]
    assert len(fake.received) == len(fake.stored()) == 1
    assert attempts(sms_rt)[0].outcome == "reconciled"
    assert deliver_all(sms_rt, claim_all(sms_rt), deps) == []
    assert len(fake.received) == 1


def test_dropped_send_and_failed_lookup_then_recovery_reconciles_without_resending(
    sms_rt: Runtime, fake: FakeTwilio, clock: FixedClock
) -> None:
    fake.script("drop")
    fake.script_lists("500:20500")
    ids = claim_all(sms_rt)
    assert deliver_all(sms_rt, ids) == ["ambiguous"]
    assert reminder_states(sms_rt)[ids[0]] == states.SENDING
    clock.advance(timedelta(minutes=10))
    stale = dispatch.stale_sending(db=sms_rt.db, clock=clock, stale_after=timedelta(minutes=5))
    assert stale == ids
    assert delivery.reconcile(deps=sms_rt.delivery_deps(), reminder_id=ids[0]) == states.SENT
    assert deliver_all(sms_rt, claim_all(sms_rt)) == []
    assert len(fake.received) == 1
    assert reminder_states(sms_rt)[ids[0]] == states.SENT


def test_dropped_send_still_queued_at_twilio_then_found_among_recent_messages(
    sms_rt: Runtime, fake: FakeTwilio
) -> None:
    # Twilio has not handed it to the carrier yet: date_sent is null, so a DateSent filter
    # cannot see it.
    fake.send_immediately = False
    fake.script("drop")
    assert deliver_all(sms_rt, claim_all(sms_rt)) == [states.SENT]
    assert len(fake.received) == 1
    assert ["DateSent>" in q for q in fake.list_requests] == [True, False]


def test_lookup_ignores_failed_messages_other_bodies_and_older_messages(
    fake: FakeTwilio, clock: FixedClock
) -> None:
    transport = TwilioTransport(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        from_=CLINIC_NUMBER,
        status_callback=STATUS_CALLBACK,
        api_base=fake.url,
        limiter=LocalRateLimiter(mps=10),
    )
    since = clock.now()
    message = SmsMessage(key="reminder-1", to=PATIENT_PHONE, body="Wear your stockings today.")
    sent = transport.send(message)
    assert transport.lookup(message, since=since) == SendResult(sent.provider_id, "sent")
    other = SmsMessage(key="reminder-2", to=PATIENT_PHONE, body="Something else.")
    assert transport.lookup(other, since=since) is None
    assert transport.lookup(message, since=since + timedelta(hours=1)) is None
    fake.set_status(sent.provider_id, "undelivered")
    assert transport.lookup(message, since=since) is None


def test_lookup_fails_then_transient_error(
    tmp_path: Path, fake: FakeTwilio, clock: FixedClock
) -> None:
    transport = TwilioTransport.from_settings(make_settings(tmp_path, **twilio_settings(fake)))
    fake.script_lists("500:20500")
    with pytest.raises(TransportError) as failed:
        transport.lookup(SmsMessage(key="k", to=PATIENT_PHONE, body="x"), since=clock.now())
    assert (failed.value.permanent, failed.value.ambiguous) == (False, False)


def test_no_phone_number_in_logs_when_sending_failing_and_looking_up(
    sms_rt: Runtime, fake: FakeTwilio, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.script("400:21211", "drop")
    enrol(sms_rt, channels=("sms",), email=None, phone="07912 345678")
    keep_only(sms_rt, "welcome")
    ids = claim_all(sms_rt)
    assert sorted(deliver_all(sms_rt, ids)) == [states.FAILED, states.SENT]
    assert fake.list_requests  # the lookup ran (its filter names the number)
    assert caplog.records
    for value in (PATIENT_PHONE, "7911123456", "07911", "+447912345678", "7912345678"):
        assert value not in caplog.text


# aftercare check ----------------------------------------------------------------------------


@pytest.fixture
def check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Run ``aftercare check`` with only the given AFTERCARE_* variables set."""
    for name in list(os.environ):
        if name.startswith("AFTERCARE_") and not name.startswith("AFTERCARE_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env file

    def run(**env: str) -> Any:
        set_runtime(None)
        env.setdefault("AFTERCARE_DATA_DIR", str(tmp_path / "data"))
        result = CliRunner().invoke(cli, ["check"], env=env)
        set_runtime(None)
        return result

    yield run
    set_runtime(None)


def test_check_with_twilio_chosen_and_nothing_else_fails_naming_each_missing_variable(
    check: Any,
) -> None:
    result = check(AFTERCARE_SMS_TRANSPORT="twilio")
    assert result.exit_code != 0
    for name in (
        "AFTERCARE_TWILIO_ACCOUNT_SID",
        "AFTERCARE_TWILIO_AUTH_TOKEN",
        "AFTERCARE_TWILIO_FROM or AFTERCARE_TWILIO_MESSAGING_SERVICE_SID",
        "AFTERCARE_PUBLIC_BASE_URL",
    ):
        assert name in result.stderr


def test_check_with_complete_twilio_settings_but_local_http_url_warns_and_passes(
    check: Any,
) -> None:
    result = check(
        AFTERCARE_SMS_TRANSPORT="twilio",
        AFTERCARE_TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        AFTERCARE_TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        AFTERCARE_TWILIO_FROM=CLINIC_NUMBER,
    )
    assert result.exit_code == 0, result.output
    assert "WARNING AFTERCARE_PUBLIC_BASE_URL is not https" in result.stderr
    assert "FAULT" not in result.stderr


def test_check_with_complete_twilio_settings_and_public_https_url_is_silent(check: Any) -> None:
    result = check(
        AFTERCARE_SMS_TRANSPORT="twilio",
        AFTERCARE_TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        AFTERCARE_TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        AFTERCARE_TWILIO_MESSAGING_SERVICE_SID=SERVICE_SID,
        AFTERCARE_PUBLIC_BASE_URL=PUBLIC_URL,
    )
    assert result.exit_code == 0, result.output
    assert "AFTERCARE_" not in result.stderr


def test_check_with_smtp_chosen_and_nothing_else_names_smtp_url_and_sender(check: Any) -> None:
    result = check(AFTERCARE_EMAIL_TRANSPORT="smtp")
    assert result.exit_code != 0
    assert "AFTERCARE_SMTP_URL" in result.stderr
    assert "AFTERCARE_EMAIL_FROM" in result.stderr
