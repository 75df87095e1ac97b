"""Late and stale work: a reminder whose moment has passed is expired, visibly, never sent late;
a patient who was cancelled, opted out, unsubscribed, paused or erased receives nothing, even
when the send task was already waiting in the broker.

Real worker and beat processes on PostgreSQL + Redis, a shared file clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from aftercare.patients.service import erase_patient
from aftercare.patients.unsubscribe import unsubscribe_email
from aftercare.reminders import states
from aftercare.reminders.consent import withdraw_sms_consent
from aftercare.sessions.actions import cancel_session, pause_session
from aftercare.staff.service import hash_password, issue_token
from aftercare.storage.models import Patient, Reminder, StaffUser, TreatmentSession
from aftercare.web.app import create_app
from tests.faults.conftest import Recorder
from tests.faults.harness import (
    Fleet,
    all_ids,
    broker_send_ids,
    enrol_many,
    make_burst,
    not_sent,
    outbox_sends,
    reminders,
    settle,
    states_of,
)
from tests.faults.report import tally
from tests.stacks import TREATED, Stack

pytestmark = pytest.mark.e2e

LONDON = ZoneInfo("Europe/London")


def _timeline(stack: Stack, session_id: int) -> list[dict[str, object]]:
    """The session's timeline as staff see it: GET /api/v1/sessions/{id}."""
    now = stack.clock.now()
    with stack.rt.db.session() as s:
        nurse = StaffUser(
            email="nurse@riverside.example",
            password_hash=hash_password("a long enough password"),
            role="staff",
            created_at=now,
        )
        s.add(nurse)
        s.flush()
        token = issue_token(db_session=s, staff_id=nurse.id, now=now)[1]
    with TestClient(create_app(stack.rt)) as client:
        response = client.get(
            f"/api/v1/sessions/{session_id}", headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 200, response.text
    timeline: list[dict[str, object]] = response.json()["reminders"]
    return timeline


def _local(day: int, hour: int, minute: int = 0) -> datetime:
    """A wall time in London, ``day`` days after the treatment date."""
    date = TREATED.astimezone(LONDON).date() + timedelta(days=day)
    return datetime(date.year, date.month, date.day, hour, minute, tzinfo=LONDON)


def test_take_them_off_tonight_a_day_late_is_expired_and_shown_to_staff_not_sent(
    fault_stack: Stack, fleet: Fleet, fault_table: Recorder
) -> None:
    """The service is down from before the first evening "take them off tonight" (day 4,
    20:00, valid 3 h) until 20:30 the next evening. It comes back: that evening's message
    (still valid) goes; the day-late one, and both missed mornings, are expired with a reason
    that staff see on the timeline, and not sent."""
    # An evening text every day (by default only the first and last days have one).
    (session_id,) = enrol_many(fault_stack, 1, parameters={"evening_reminders": "all"})
    first_evening = _local(4, 20)
    with fault_stack.rt.db.session() as s:
        s.execute(
            update(Reminder)
            .where(Reminder.due_at < _local(4, 7))
            .values(state=states.SKIPPED, reason="sent before this scenario")
        )
    back = first_evening + timedelta(days=1, minutes=30)
    fault_stack.clock.set(back)
    fleet.up()
    assert settle(fault_stack, idle=5.0)

    overdue = [r for r in reminders(fault_stack) if r.state != states.SKIPPED and r.due_at <= back]
    late = [r.id for r in overdue if r.step == "daily-off" and r.due_at == first_evening]
    stale = [r.id for r in overdue if r.expires_at is not None and r.expires_at < back]
    useful = [r.id for r in overdue if r.id not in stale]
    result = tally(expected=useful, sends=outbox_sends(fault_stack), withheld=stale)
    fault_table.record(
        "'take them off tonight' a day late (service down 24.5 h)",
        faults=1,
        tally=result,
    )
    assert result.unwanted == 0, "a stale reminder was sent late"
    assert result.duplicates == 0
    assert result.lost == 0, not_sent(fault_stack, useful)
    assert len(late) == 1
    assert {r.step for r in reminders(fault_stack, stale)} == {"daily-wear", "daily-off"}
    assert [r.step for r in reminders(fault_stack, useful)] == ["daily-off"]
    shown = {(row["step"], row["due_utc"]): row for row in _timeline(fault_stack, session_id)}
    row = shown[("daily-off", first_evening.astimezone(TREATED.tzinfo).isoformat())]
    assert (row["state"], row["reason"], row["sent_at"]) == (
        states.EXPIRED,
        "too late to be useful",
        None,
    )


def test_cancelled_opted_out_unsubscribed_paused_or_erased_patients_get_nothing_queued(
    fault_stack: Stack, fleet: Fleet, fault_table: Recorder
) -> None:
    """Send tasks for six patients are already in Redis when staff and patients act: cancel,
    STOP, unsubscribe, pause, erasure. Only what each patient still wants is sent."""
    sessions = enrol_many(fault_stack, 6)
    burst = make_burst(fault_stack, steps=("welcome", "warning-signs", "keep-moving"))
    assert fleet.dispatch().wait(timeout=60) == 0
    queued = set(
        all_ids(broker_send_ids(redis.Redis.from_url(fault_stack.env["AFTERCARE_BROKER_URL"])))
    )
    assert queued == set(burst)
    now = fault_stack.clock.now()
    with fault_stack.rt.db.session() as s:
        patient_of = dict(
            s.execute(
                select(TreatmentSession.id, TreatmentSession.patient_id).where(
                    TreatmentSession.id.in_(sessions)
                )
            ).all()  # type: ignore[arg-type,unused-ignore]
        )
        cancelled, stopped, unsubscribed, paused, erased, _control = sessions
        cancel_session(db_session=s, session_id=cancelled, actor_id=None, now=now)
        phone = s.get_one(Patient, patient_of[stopped]).phone
        assert phone is not None
        withdraw_sms_consent(db_session=s, phone=phone, source="sms:STOP", now=now)
        unsubscribe_email(db_session=s, patient_id=patient_of[unsubscribed], now=now)
        pause_session(db_session=s, session_id=paused, actor_id=None, now=now)
        erase_patient(db_session=s, patient_id=patient_of[erased], actor_id=None, now=now)
    fleet.up()
    assert settle(fault_stack, idle=5.0)

    rows = reminders(fault_stack, burst)

    def unwanted(r: Reminder) -> bool:
        return (
            r.session_id in (cancelled, paused, erased)
            or (r.session_id == stopped and r.channel == "sms")
            or (r.session_id == unsubscribed and r.channel == "email")
        )

    withheld = [r.id for r in rows if unwanted(r)]
    wanted = [r.id for r in rows if not unwanted(r)]
    result = tally(expected=wanted, sends=outbox_sends(fault_stack), withheld=withheld)
    fault_table.record(
        "cancel / STOP / unsubscribe / pause / erase with send tasks already queued",
        faults=5,
        tally=result,
    )
    assert result.unwanted == 0, "a patient got a message they should not have"
    assert result.duplicates == 0
    assert result.lost == 0, not_sent(fault_stack, wanted)
    reasons = {(r.session_id, r.channel): (r.state, r.reason) for r in rows if unwanted(r)}
    assert reasons == {
        (cancelled, "sms"): (states.CANCELLED, "session cancelled"),
        (cancelled, "email"): (states.CANCELLED, "session cancelled"),
        (stopped, "sms"): (states.CANCELLED, "patient opted out of SMS"),
        (unsubscribed, "email"): (states.CANCELLED, "patient unsubscribed from email"),
        (paused, "sms"): (states.PAUSED, "session paused"),
        (paused, "email"): (states.PAUSED, "session paused"),
        (erased, "sms"): (states.CANCELLED, "patient erased"),
        (erased, "email"): (states.CANCELLED, "patient erased"),
    }
    assert set(states_of(fault_stack, wanted).values()) == {states.SENT}
