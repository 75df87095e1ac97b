"""``/api/v1/patients``: read, fix contact details (only the future is re-planned) and erase
(no personal data left in any table). SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from aftercare.clock import FixedClock
from aftercare.flags.service import raise_flag
from aftercare.reminders import states
from aftercare.runtime import Runtime
from aftercare.storage.models import (
    AuditEvent,
    Base,
    InboundMessage,
    Patient,
    Reminder,
    TreatmentSession,
)
from tests.web.test_api import EMAIL, NAME, PHONE, Api, RefusingSms, deliver_due, make_api

PATIENT_KEYS = {
    "id",
    "name",
    "phone",
    "email",
    "timezone",
    "channels",
    "created_at",
    "sms_opted_out_at",
    "email_opted_out_at",
    "sms_blocked_at",
    "erased_at",
    "sessions",
}


@pytest.fixture
def api(runtime: Runtime) -> Iterator[Api]:
    yield from make_api(runtime)


def slots(api: Api, session_id: int) -> dict[tuple[str, int, str], Reminder]:
    with api.rt.db.session() as s:
        rows = s.scalars(select(Reminder).where(Reminder.session_id == session_id))
        return {(r.step, r.occurrence, r.channel): r for r in rows}


def test_read_patient(api: Api) -> None:
    created = api.enrol()

    response = api.client.get(f"/api/v1/patients/{created['patient_id']}")

    assert response.status_code == 200
    patient = response.json()
    assert set(patient) == PATIENT_KEYS
    assert (patient["name"], patient["phone"], patient["email"]) == (NAME, PHONE, EMAIL)
    assert patient["channels"] == ["sms", "email"]
    assert [s["id"] for s in patient["sessions"]] == [created["id"]]


def test_patch_timezone_replans_future_reminders_and_leaves_sent_ones_untouched(
    api: Api, clock: FixedClock
) -> None:
    created = api.enrol()
    deliver_due(api.rt)
    clock.advance(timedelta(days=1))
    before = slots(api, created["id"])
    sent = {k: (r.id, r.state, r.due_at, r.sent_at) for k, r in before.items() if r.sent_at}
    assert sent

    response = api.client.patch(
        f"/api/v1/patients/{created['patient_id']}", json={"timezone": "Australia/Sydney"}
    )

    assert response.status_code == 200, response.text
    assert response.json()["timezone"] == "Australia/Sydney"
    after = slots(api, created["id"])
    assert {k: (r.id, r.state, r.due_at, r.sent_at) for k, r in after.items() if r.sent_at} == sent
    assert set(after) == set(before)
    first_wear = after[("daily-wear", 0, "sms")].due_at
    assert first_wear != before[("daily-wear", 0, "sms")].due_at
    timeline = api.client.get(f"/api/v1/sessions/{created['id']}").json()
    wear = next(r for r in timeline["reminders"] if r["step"] == "daily-wear")
    assert wear["due_local"][11:16] == "08:00"
    assert wear["due_local"][-6:] in {"+11:00", "+10:00"}
    with api.rt.db.session() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "edit")).one()
    assert (event.actor_id, event.patient_id) == (api.nurse_id, created["patient_id"])
    assert event.detail["fields"] == ["timezone"]


def test_patch_phone_lifts_the_sms_block_and_is_returned_in_e164(api: Api) -> None:
    created = api.enrol()
    deliver_due(api.rt, {"sms": RefusingSms()})
    with api.rt.db.session() as s:
        patient = s.get_one(Patient, created["patient_id"])
        assert patient.sms_blocked_at is not None, "the refused number blocks SMS"

    response = api.client.patch(
        f"/api/v1/patients/{created['patient_id']}", json={"phone": "07912 345678"}
    )

    assert response.status_code == 200
    assert (response.json()["phone"], response.json()["sms_blocked_at"]) == ("+447912345678", None)


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"phone": "not a number"}, ["body", "phone"]),
        ({"phone": None}, ["body", "phone"]),
        ({"email": "nobody"}, ["body", "email"]),
        ({"timezone": "Moon/Tranquility"}, ["body", "timezone"]),
        ({"timezone": None}, ["body", "timezone"]),
        ({"channels": ["pager"]}, ["body", "channels", 0]),
        ({"channels": []}, ["body", "channels"]),
        ({"name": ""}, ["body", "name"]),
        ({"treated_at": "2026-03-01T10:00:00+00:00"}, ["body", "treated_at"]),
    ],
)
def test_bad_patch_is_422_naming_the_field_and_changes_nothing(
    api: Api, body: dict[str, Any], loc: list[Any]
) -> None:
    created = api.enrol()
    before = api.client.get(f"/api/v1/patients/{created['patient_id']}").json()

    response = api.client.patch(f"/api/v1/patients/{created['patient_id']}", json=body)

    assert response.status_code == 422
    assert loc in [item["loc"] for item in response.json()["detail"]]
    assert api.client.get(f"/api/v1/patients/{created['patient_id']}").json() == before


def test_patch_with_nothing_to_change_changes_nothing(api: Api) -> None:
    created = api.enrol()

    response = api.client.patch(
        f"/api/v1/patients/{created['patient_id']}", json={"phone": "07911 123456"}
    )

    assert response.status_code == 200
    with api.rt.db.session() as s:
        assert s.scalars(select(AuditEvent.action)).all() == ["enrol"]


def test_patch_or_erase_an_erased_patient_is_409(api: Api) -> None:
    patient_id = api.enrol()["patient_id"]
    assert api.client.delete(f"/api/v1/patients/{patient_id}").status_code == 204

    patched = api.client.patch(f"/api/v1/patients/{patient_id}", json={"timezone": "UTC"})
    erased = api.client.delete(f"/api/v1/patients/{patient_id}")

    assert (patched.status_code, erased.status_code) == (409, 409)


# Erasure ---------------------------------------------------------------------------------------

PERSONAL = [
    NAME,
    "Philippa",
    "Quennell",
    PHONE,
    "7911123456",
    "07911 123456",
    EMAIL,
    "philippa.quennell",
]


def every_value(rt: Runtime) -> Iterator[tuple[str, str, str]]:
    """(table, column, value as text) for every column of every row of every table."""
    with rt.db.session() as s:
        for table in Base.metadata.sorted_tables:
            for row in s.execute(select(table)).mappings():
                for column, value in row.items():
                    text = json.dumps(value) if isinstance(value, dict | list) else str(value)
                    yield table.name, column, text


def test_erasure_leaves_no_personal_data_in_any_table(api: Api, clock: FixedClock) -> None:
    created = api.enrol()
    patient_id, session_id = created["patient_id"], created["id"]
    # Everything that can hold the patient's details: failed attempts quoting the number,
    # replies (matched and unmatched), flags with notes, a free-text check-in answer.
    deliver_due(api.rt, {"sms": RefusingSms()})
    with api.rt.db.session() as s:
        reply = InboundMessage(
            provider_sid="SM" + "1" * 32,
            from_number=PHONE,
            patient_id=patient_id,
            session_id=session_id,
            body=f"This is {NAME}, {EMAIL}, my leg is sore",
            received_at=clock.now(),
            kind="urgent",
            response_text=f"Thanks {NAME}, we will call you on {PHONE}",
        )
        stray = InboundMessage(
            provider_sid="SM" + "2" * 32,
            from_number=PHONE,
            patient_id=None,
            body="Philippa again",
            received_at=clock.now(),
            kind="unrecognised",
        )
        s.add_all([reply, stray])
        s.flush()
        flag = raise_flag(
            s,
            kind="urgent_reply",
            patient_id=patient_id,
            session_id=session_id,
            inbound_id=reply.id,
            text=f"{NAME} ({PHONE}) reports pain",
            now=clock.now(),
        )
        flag.resolved_at = clock.now()
        flag.resolution_note = f"Called {NAME} on 07911 123456"
        s.execute(
            update(TreatmentSession)
            .where(TreatmentSession.id == session_id)
            .values(checkin_answer="Philippa: fine")
        )
    assert any(p in text for _, _, text in every_value(api.rt) for p in PERSONAL), (
        "the test data must hold personal data before erasure"
    )

    response = api.client.delete(f"/api/v1/patients/{patient_id}")

    assert response.status_code == 204
    assert response.content == b""
    leftovers = [
        (table, column, personal)
        for table, column, text in every_value(api.rt)
        for personal in PERSONAL
        if personal.lower() in text.lower()
    ]
    assert leftovers == []
    patient = api.client.get(f"/api/v1/patients/{patient_id}").json()
    assert (patient["name"], patient["phone"], patient["email"]) == ("erased", None, None)
    assert patient["erased_at"] is not None
    timeline = api.client.get(f"/api/v1/sessions/{session_id}").json()
    assert timeline["status"] == "cancelled"
    assert {r["state"] for r in timeline["reminders"]} <= {
        states.SENT,
        states.FAILED,
        states.CANCELLED,
    }
    assert not any(r["state"] == states.SCHEDULED for r in timeline["reminders"])
    with api.rt.db.session() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "erase")).one()
    assert (event.actor_id, event.patient_id) == (api.nurse_id, patient_id)
