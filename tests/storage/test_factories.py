"""Every factory in tests/factories.py writes a row the real schema accepts, on SQLite and
PostgreSQL, and the rows link up as the services' rows do."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from aftercare.runtime import Runtime
from aftercare.storage.models import AuditEvent, Flag, InboundMessage, Reminder
from tests.factories import (
    PATIENT_PHONE,
    add_audit,
    add_flag,
    add_inbound,
    add_patient,
    add_reminder,
    add_session,
    add_staff,
    enrol,
)

pytestmark = pytest.mark.rollback


def test_each_factory_writes_a_valid_row_linked_to_the_others(runtime: Runtime) -> None:
    now = runtime.clock.now()
    with runtime.db.session() as s:
        nurse = add_staff(s, now=now)
        patient = add_patient(s, now=now, phone=None, channels="email")
        session = add_session(s, patient_id=patient.id, now=now, created_by_id=nurse.id)
        reminder = add_reminder(s, session_id=session.id, now=now, channel="email")
        reply = add_inbound(
            s, body="Fine, thanks", received_at=now, patient_id=patient.id, session_id=session.id
        )
        flag = add_flag(
            s,
            kind="unrecognised_reply",
            text="Reply",
            now=now,
            patient_id=patient.id,
            inbound_id=reply.id,
        )
        add_audit(s, action="enrol", at=now, actor_id=nurse.id, patient_id=patient.id)
    with runtime.db.session() as s:
        assert s.get_one(Reminder, reminder.id).session.patient.email == patient.email
        assert s.get_one(Flag, flag.id).inbound_id == reply.id
        assert s.scalars(select(AuditEvent.actor_id)).one() == nurse.id


def test_enrol_and_the_rows_it_plans_sit_beside_hand_written_ones(runtime: Runtime) -> None:
    session_id = enrol(runtime)
    now = runtime.clock.now()
    with runtime.db.session() as s:
        add_inbound(s, body="one", received_at=now)
        add_inbound(s, body="two", received_at=now + timedelta(minutes=1))
    with runtime.db.session() as s:
        senders = s.scalars(select(InboundMessage.from_number)).all()
        assert senders == [PATIENT_PHONE, PATIENT_PHONE]
        assert s.scalars(select(Reminder).where(Reminder.session_id == session_id)).first()
