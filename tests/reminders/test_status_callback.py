"""Twilio's status callbacks through the real app, on SQLite and PostgreSQL: duplicated,
reordered, unknown, and failed deliveries (flag, opt-out, email instead)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from aftercare.clock import FixedClock
from aftercare.reminders import states
from aftercare.runtime import Runtime
from aftercare.storage.models import DeliveryAttempt, Flag, Patient, Reminder
from aftercare.web.app import create_app
from tests.factories import enrol
from tests.inbound.test_inbound import AUTH_TOKEN, EMPTY_TWIML, PUBLIC, FakeTwilio
from tests.reminders.test_delivery import claim_all, deliver_all, keep_only, sent_log


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


def send_one_sms(rt: Runtime, *, step: str = "welcome", **enrol_args: Any) -> tuple[int, str]:
    """Enrol, then send ``step``'s SMS through the real outbox; returns (reminder id, SID)."""
    enrol(rt, **enrol_args)
    keep_only(rt, step)
    with rt.db.session() as s:
        s.execute(
            update(Reminder)
            .where(Reminder.channel == "email", Reminder.state == states.SCHEDULED)
            .values(state=states.SKIPPED)
        )
    [reminder_id] = claim_all(rt)
    assert deliver_all(rt, [reminder_id]) == [states.SENT]
    with rt.db.session() as s:
        attempt = s.scalars(
            select(DeliveryAttempt).where(DeliveryAttempt.reminder_id == reminder_id)
        ).one()
    assert attempt.provider_id
    return reminder_id, attempt.provider_id


def state_of(rt: Runtime, reminder_id: int) -> tuple[str, str | None]:
    """(reminder state, provider status of its attempt)."""
    with rt.db.session() as s:
        reminder = s.get_one(Reminder, reminder_id)
        attempt = s.scalars(
            select(DeliveryAttempt).where(DeliveryAttempt.reminder_id == reminder_id)
        ).one()
        return reminder.state, attempt.provider_status


def failure_flags(rt: Runtime) -> list[Flag]:
    with rt.db.session() as s:
        return list(s.scalars(select(Flag).where(Flag.kind == "delivery_failed")))


def email_reminders(rt: Runtime, step: str) -> list[Reminder]:
    with rt.db.session() as s:
        return list(
            s.scalars(select(Reminder).where(Reminder.channel == "email", Reminder.step == step))
        )


def test_delivered_callback_then_reminder_delivered_and_attempt_updated(
    rt: Runtime, twilio: FakeTwilio, clock: FixedClock
) -> None:
    reminder_id, sid = send_one_sms(rt)
    response = twilio.status(sid, "delivered")
    assert response.status_code == 200
    assert response.text == EMPTY_TWIML
    assert state_of(rt, reminder_id) == (states.DELIVERED, "delivered")
    with rt.db.session() as s:
        attempt = s.scalars(select(DeliveryAttempt)).one()
    assert attempt.status_updated_at == clock.now()


ORDERINGS = [
    (["delivered", "sent"], (states.DELIVERED, "delivered"), 0),
    (["sent", "undelivered", "delivered"], (states.DELIVERED, "delivered"), 1),
    (["delivered", "undelivered"], (states.DELIVERED, "delivered"), 0),
    (["delivered", "delivered"], (states.DELIVERED, "delivered"), 0),
    (["queued", "sending", "sent", "sent"], (states.SENT, "sent"), 0),
    (["sent", "queued"], (states.SENT, "sent"), 0),
    (["read"], (states.DELIVERED, "delivered"), 0),
    (["undelivered", "failed", "undelivered"], (states.FAILED, "undelivered"), 1),
]


@pytest.mark.parametrize(
    ("sequence", "final", "flagged"), ORDERINGS, ids=["-".join(c[0]) for c in ORDERINGS]
)
def test_callbacks_duplicated_or_out_of_order_then_right_final_state(
    rt: Runtime, twilio: FakeTwilio, sequence: list[str], final: tuple[str, str], flagged: int
) -> None:
    reminder_id, sid = send_one_sms(rt)
    for status in sequence:
        code = "30003" if status == "undelivered" else None
        assert twilio.status(sid, status, code).status_code == 200
    assert state_of(rt, reminder_id) == final
    assert len(failure_flags(rt)) == flagged


def test_unknown_sid_then_200_and_ignored(rt: Runtime, twilio: FakeTwilio) -> None:
    reminder_id, _sid = send_one_sms(rt)
    response = twilio.status("SM" + "f" * 32, "undelivered", "30003")
    assert response.status_code == 200
    assert state_of(rt, reminder_id) == (states.SENT, "sent")
    assert failure_flags(rt) == []


def test_status_we_do_not_track_then_200_and_ignored(rt: Runtime, twilio: FakeTwilio) -> None:
    reminder_id, sid = send_one_sms(rt)
    assert twilio.status(sid, "receiving").status_code == 200
    assert state_of(rt, reminder_id) == (states.SENT, "sent")


def test_undelivered_then_failed_with_code_flagged_once_and_number_not_blocked(
    rt: Runtime, twilio: FakeTwilio
) -> None:
    reminder_id, sid = send_one_sms(rt)
    twilio.status(sid, "undelivered", "30003")
    twilio.status(sid, "undelivered", "30003")
    with rt.db.session() as s:
        reminder = s.get_one(Reminder, reminder_id)
        attempt = s.scalars(select(DeliveryAttempt)).one()
        who = s.scalars(select(Patient)).one()
    assert reminder.state == states.FAILED
    assert reminder.reason == "provider status undelivered (error 30003)"
    assert attempt.error_code == "30003"
    # A phone that is switched off (30003) is not a bad number: SMS carries on.
    assert (who.sms_blocked_at, who.sms_opted_out_at) == (None, None)
    [flag] = failure_flags(rt)
    assert (flag.reminder_id, flag.urgent) == (reminder_id, False)


def test_undelivered_for_sms_only_patient_then_email_version_sent_once(
    rt: Runtime, twilio: FakeTwilio, clock: FixedClock
) -> None:
    reminder_id, sid = send_one_sms(rt, channels=("sms",))
    for status in ("undelivered", "failed", "undelivered"):
        twilio.status(sid, status, "30003")
    [email] = email_reminders(rt, "welcome")
    assert (email.fallback_of_id, email.state, email.due_at) == (
        reminder_id,
        states.SCHEDULED,
        clock.now(),
    )
    for _ in range(2):
        deliver_all(rt, claim_all(rt))
    assert sent_log(rt, "email") == [f"reminder-{email.id}"]
    [flag] = failure_flags(rt)
    assert "email version is being sent instead" in flag.text


def test_opted_out_error_in_callback_then_opt_out_recorded_and_no_email_instead(
    rt: Runtime, twilio: FakeTwilio, clock: FixedClock
) -> None:
    _reminder_id, sid = send_one_sms(rt, channels=("sms",))
    twilio.status(sid, "failed", "21610")
    with rt.db.session() as s:
        who = s.scalars(select(Patient)).one()
    assert (who.sms_opted_out_at, who.sms_opt_out_source) == (clock.now(), "provider:21610")
    assert email_reminders(rt, "welcome") == []
    assert len(failure_flags(rt)) == 1


def test_late_delivered_after_failure_then_delivered_and_flag_kept_for_staff(
    rt: Runtime, twilio: FakeTwilio
) -> None:
    reminder_id, sid = send_one_sms(rt)
    twilio.status(sid, "undelivered", "30003")
    twilio.status(sid, "delivered")
    assert state_of(rt, reminder_id) == (states.DELIVERED, "delivered")
    assert len(failure_flags(rt)) == 1
