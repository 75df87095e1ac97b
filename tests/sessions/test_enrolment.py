"""Enrolment: a valid session is stored whole with its reminders; bad input is refused by field
and changes nothing. Every test runs on SQLite and on PostgreSQL (the ``runtime`` fixture)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from aftercare.clock import FixedClock
from aftercare.planning.planner import PlannedReminder, plan
from aftercare.regimens.model import Channel
from aftercare.runtime import Runtime
from aftercare.sessions.service import SessionRequest, record_session, validate_request
from aftercare.storage.models import Base, Reminder, TreatmentSession
from aftercare.validation import ValidationFailed

# The ``clock`` fixture's instant (conftest.py): a Monday morning, before the DST change.
# PostgreSQL work in one transaction rolled back after each test (tests/conftest.py).
pytestmark = pytest.mark.rollback

NOW = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)
LONDON = ZoneInfo("Europe/London")
ALWAYS_CAUGHT_UP = {"welcome", "warning-signs"}

VALID: dict[str, Any] = {
    "name": "Jane Doe",
    "phone": "07911 123456",
    "email": "Jane.Doe@Example.COM",
    "timezone": "Europe/London",
    "channels": ["sms", "email"],
    "treated_at": NOW.isoformat(),
}


@pytest.fixture(autouse=True)
def _clock_is_now(runtime: Runtime) -> None:
    assert runtime.clock.now() == NOW, "the tests below are written for the clock fixture's time"


def make_request(**changes: Any) -> SessionRequest:
    return SessionRequest(**{**VALID, **changes})


def enrol(rt: Runtime, request: SessionRequest) -> int:
    """Validate and record in one transaction, as the API and the CLI do; the session's id."""
    now = rt.clock.now()
    with rt.db.session() as db_session:
        valid = validate_request(request, registry=rt.registry, quiet=rt.quiet, now=now)
        return record_session(db_session=db_session, valid=valid, now=now).id


def row_counts(rt: Runtime) -> dict[str, int]:
    with rt.db.session() as db_session:
        return {
            table.name: db_session.scalar(select(func.count()).select_from(table)) or 0
            for table in Base.metadata.sorted_tables
        }


def stored_reminders(rt: Runtime, session_id: int) -> list[Reminder]:
    with rt.db.session() as db_session:
        query = select(Reminder).where(Reminder.session_id == session_id)
        return list(db_session.scalars(query.order_by(Reminder.id)))


def slots(reminders: list[Reminder]) -> set[tuple[str, int, str, datetime, str]]:
    return {(r.step, r.occurrence, r.channel, r.due_at, r.state) for r in reminders}


def plan_for(
    rt: Runtime, *, treated_at: datetime, recorded_at: datetime, channels: tuple[Channel, ...]
) -> list[PlannedReminder]:
    regimen = rt.registry.get("micro-sclerotherapy")
    return plan(
        regimen=regimen,
        treated_at=treated_at,
        timezone="Europe/London",
        parameters=regimen.resolve_parameters({}),
        channels=channels,
        quiet=rt.quiet,
        recorded_at=recorded_at,
    )


# --- a valid session --------------------------------------------------------------------------


def test_valid_request_when_enrolled_then_patient_session_and_every_reminder_are_stored(
    runtime: Runtime,
) -> None:
    session_id = enrol(runtime, make_request())

    expected = plan_for(runtime, treated_at=NOW, recorded_at=NOW, channels=("sms", "email"))
    counts = row_counts(runtime)
    assert counts["patients"] == 1
    assert counts["treatment_sessions"] == 1
    assert counts["reminders"] == len(expected)
    assert counts["delivery_attempts"] == 0
    reminders = stored_reminders(runtime, session_id)
    assert slots(reminders) == {
        (p.step, p.occurrence, p.channel, p.due_utc, p.state) for p in expected
    }
    assert all(r.state == "scheduled" and r.attempts == 0 for r in reminders)
    assert {r.due_at for r in reminders if r.step == "welcome"} == {NOW}


def test_late_session_when_enrolled_then_every_reminder_column_is_stored_as_planned(
    runtime: Runtime,
) -> None:
    treated = NOW - timedelta(days=5)
    valid = validate_request(
        make_request(treated_at=treated.isoformat()),
        registry=runtime.registry,
        quiet=runtime.quiet,
        now=NOW,
    )
    with runtime.db.session() as db_session:
        session = record_session(db_session=db_session, valid=valid, now=NOW)
        # Read back in the same transaction, as a caller of record_session would.
        in_transaction = len(session.reminders)

    expected = plan_for(runtime, treated_at=treated, recorded_at=NOW, channels=("sms", "email"))
    assert in_transaction == len(expected)
    assert {"scheduled", "skipped"} <= {p.state for p in expected}
    columns = [c.name for c in Reminder.__table__.columns if c.name != "id"]
    with runtime.db.session() as db_session:
        stored = {
            (r.step, r.occurrence, r.channel): {c: getattr(r, c) for c in columns}
            for r in db_session.scalars(select(Reminder))
        }
    assert stored == {
        (p.step, p.occurrence, p.channel): {
            "session_id": session.id,
            "step": p.step,
            "occurrence": p.occurrence,
            "channel": p.channel,
            "template": p.template,
            "nominal_at": p.nominal_utc,
            "due_at": p.due_utc,
            "expires_at": p.expires_utc,
            "critical": p.critical,
            "state": p.state,
            "attempts": 0,
            "updated_at": NOW,
            "sent_at": None,
            "reason": "catch-up: superseded before enrolment" if p.state == "skipped" else None,
            "fallback_of_id": None,
            "claimed_by": None,
        }
        for p in expected
    }


def test_record_session_when_it_returns_then_the_session_object_holds_what_was_stored(
    runtime: Runtime,
) -> None:
    valid = validate_request(
        make_request(), registry=runtime.registry, quiet=runtime.quiet, now=NOW
    )
    columns = [c.name for c in TreatmentSession.__table__.columns]
    with runtime.db.session() as db_session:
        session = record_session(db_session=db_session, valid=valid, now=NOW, created_by_id=None)
        returned = {c: getattr(session, c) for c in columns}
        patient_name = session.patient.name

    with runtime.db.session() as db_session:
        stored = db_session.get_one(TreatmentSession, returned["id"])
        assert {c: getattr(stored, c) for c in columns} == returned
    assert patient_name == "Jane Doe"
    assert returned["status"] == "active"
    assert returned["created_by_id"] is None


def test_valid_request_when_enrolled_then_contact_details_are_normalised(
    runtime: Runtime,
) -> None:
    session_id = enrol(runtime, make_request(name="  Jane   Doe "))

    with runtime.db.session() as db_session:
        session = db_session.get_one(TreatmentSession, session_id)
        patient = session.patient
        assert patient.name == "Jane Doe"
        assert patient.phone == "+447911123456"
        assert patient.email == "Jane.Doe@example.com"
        assert patient.timezone == "Europe/London"
        assert patient.channel_list == ["sms", "email"]
        assert session.treated_at == NOW
        assert session.recorded_at == NOW
        assert session.parameters == {
            "daily_days": 14,
            "checkin_week": 10,
            "garment": "lower-leg",
            "evening_reminders": "first_and_last",
            # Optional advice (issue 16): on by default, stored like every parameter.
            "walking_advice": "include",
            "washing_advice": "include",
            "pain_relief_advice": "include",
            "lumpy_veins_advice": "include",
        }
        assert session.consent is True
        assert session.contraindications_checked is True


def test_enrolment_when_the_transaction_fails_after_recording_then_nothing_is_stored(
    runtime: Runtime,
) -> None:
    valid = validate_request(
        make_request(), registry=runtime.registry, quiet=runtime.quiet, now=NOW
    )

    def record_then_fail() -> None:
        with runtime.db.session() as db_session:
            record_session(db_session=db_session, valid=valid, now=NOW)
            raise RuntimeError("the connection dropped after the flush")

    with pytest.raises(RuntimeError, match="after the flush"):
        record_then_fail()

    assert set(row_counts(runtime).values()) == {0}


@pytest.mark.parametrize(
    ("channels", "missing"),
    [
        pytest.param(["email"], "phone", id="email-only-needs-no-phone"),
        pytest.param(["sms"], "email", id="sms-only-needs-no-email"),
    ],
)
def test_single_channel_patient_when_the_other_contact_is_absent_then_enrols_on_that_channel(
    runtime: Runtime, channels: list[str], missing: str
) -> None:
    session_id = enrol(runtime, make_request(channels=channels, **{missing: None}))

    with runtime.db.session() as db_session:
        patient = db_session.get_one(TreatmentSession, session_id).patient
        assert getattr(patient, missing) is None
        assert patient.channel_list == channels
    reminders = stored_reminders(runtime, session_id)
    assert {r.channel for r in reminders} == set(channels)
    # Steps sent on only the first chosen channel (daily wear) still reach this patient.
    assert sum(r.step == "daily-wear" for r in reminders) == 14


# --- bad input --------------------------------------------------------------------------------

PATIENT = "patient"
BAD_INPUTS = [
    pytest.param({"name": ""}, (PATIENT, "name"), "is required", id="name-empty"),
    pytest.param({"name": "   "}, (PATIENT, "name"), "is required", id="name-blank"),
    pytest.param({"name": "Jane\x00Doe"}, (PATIENT, "name"), "control or invisible", id="name-nul"),
    pytest.param(
        {"name": "Jane\u202eeoD"}, (PATIENT, "name"), "control or invisible", id="name-rtl"
    ),
    pytest.param({"name": "Jane\x7fDoe"}, (PATIENT, "name"), "control or invisible", id="name-del"),
    pytest.param(
        {"name": "Jane\u00a0\u200bDoe"}, (PATIENT, "name"), "control or invisible", id="name-zwsp"
    ),
    pytest.param({"name": "J" * 10_000}, (PATIENT, "name"), "longer than 200", id="name-10k-chars"),
    pytest.param(
        {"phone": "12345"}, (PATIENT, "phone"), "not a valid phone number", id="phone-short"
    ),
    pytest.param(
        {"phone": "+44 20 7946 0000"}, (PATIENT, "phone"), "not a mobile", id="phone-landline"
    ),
    pytest.param(
        {"phone": "+44 7911 12345"}, (PATIENT, "phone"), "not a valid phone", id="phone-one-short"
    ),
    pytest.param(
        {"phone": "+800 1234 5678"}, (PATIENT, "phone"), "not a mobile", id="phone-freephone"
    ),
    pytest.param(
        {"phone": "not a number"}, (PATIENT, "phone"), "not a phone number", id="phone-words"
    ),
    pytest.param({"phone": None}, (PATIENT, "phone"), "required for SMS", id="phone-missing"),
    pytest.param({"email": "nope"}, (PATIENT, "email"), "not a valid email", id="email-no-at"),
    pytest.param({"email": "a@b"}, (PATIENT, "email"), "not a valid email", id="email-no-dot"),
    pytest.param({"email": None}, (PATIENT, "email"), "required for email", id="email-missing"),
    pytest.param(
        {"timezone": "Mars/Olympus"}, (PATIENT, "timezone"), "not an IANA", id="zone-unknown"
    ),
    pytest.param({"timezone": ""}, (PATIENT, "timezone"), "is required", id="zone-empty"),
    pytest.param(
        {"timezone": "../../etc/passwd"},
        (PATIENT, "timezone"),
        "not an IANA",
        id="zone-path-traversal",
    ),
    pytest.param(
        {"timezone": "Europe/London\n"},
        (PATIENT, "timezone"),
        "control or invisible",
        id="zone-newline",
    ),
    pytest.param({"channels": []}, (PATIENT, "channels"), "at least one", id="channels-none"),
    pytest.param(
        {"channels": ["fax"]}, (PATIENT, "channels", 0), "'sms' or 'email'", id="channels-fax"
    ),
    pytest.param(
        {"channels": ["sms", "sms"]}, (PATIENT, "channels", 1), "twice", id="channels-repeated"
    ),
    pytest.param(
        {"treated_at": "yesterday"}, ("treated_at",), "not an ISO-8601", id="treated-words"
    ),
    pytest.param(
        {"treated_at": "2026-03-02T10:00"}, ("treated_at",), "UTC offset", id="treated-naive"
    ),
    pytest.param(
        {"treated_at": "2026-02-30T10:00+00:00"},
        ("treated_at",),
        "not an ISO-8601",
        id="treated-impossible-date",
    ),
    pytest.param(
        {"treated_at": "2026-03-02T10:00+00:00" + " " * 60 + "x"},
        ("treated_at",),
        "not an ISO-8601",
        id="treated-too-long",
    ),
    pytest.param(
        {"treated_at": (NOW + timedelta(days=1, minutes=1)).isoformat()},
        ("treated_at",),
        "more than a day in the future",
        id="treated-future",
    ),
    pytest.param(
        {"treated_at": (NOW - timedelta(days=200)).isoformat()},
        ("treated_at",),
        "older than the regimen",
        id="treated-200-days-ago",
    ),
    pytest.param({"regimen": "botox"}, ("regimen",), "unknown regimen 'botox'", id="regimen"),
    pytest.param(
        {"parameters": {"daily_days": 10}},
        ("parameters", "daily_days"),
        "one of 7, 14",
        id="daily-days-10",
    ),
    pytest.param(
        {"parameters": {"checkin_week": 7}},
        ("parameters", "checkin_week"),
        "at least 8",
        id="checkin-week-7",
    ),
    pytest.param(
        {"parameters": {"checkin_week": 14}},
        ("parameters", "checkin_week"),
        "at most 13",
        id="checkin-week-14",
    ),
    pytest.param(
        {"parameters": {"colour": "blue"}},
        ("parameters", "colour"),
        "not a parameter",
        id="unknown-parameter",
    ),
    pytest.param({"consent": False}, ("consent",), "consent", id="no-consent"),
    pytest.param(
        {"contraindications_checked": False},
        ("contraindications_checked",),
        "contraindication checklist",
        id="contraindications-unchecked",
    ),
]


@pytest.mark.parametrize(("changes", "loc", "reason"), BAD_INPUTS)
def test_bad_input_when_enrolled_then_refused_naming_the_field_and_nothing_is_stored(
    runtime: Runtime, changes: dict[str, Any], loc: tuple[str | int, ...], reason: str
) -> None:
    with pytest.raises(ValidationFailed) as failure:
        enrol(runtime, make_request(**changes))

    assert [error.loc for error in failure.value.errors] == [loc]
    assert reason in failure.value.errors[0].msg
    assert set(row_counts(runtime).values()) == {0}


def test_several_bad_fields_when_enrolled_then_every_one_is_reported(runtime: Runtime) -> None:
    request = make_request(
        name="",
        phone="12345",
        email="nope",
        timezone="Mars/Olympus",
        treated_at="yesterday",
        parameters={"daily_days": 10},
        consent=False,
        contraindications_checked=False,
    )

    with pytest.raises(ValidationFailed) as failure:
        enrol(runtime, request)

    assert {error.loc for error in failure.value.errors} == {
        (PATIENT, "name"),
        (PATIENT, "phone"),
        (PATIENT, "email"),
        (PATIENT, "timezone"),
        ("treated_at",),
        ("parameters", "daily_days"),
        ("consent",),
        ("contraindications_checked",),
    }
    assert all(error.msg for error in failure.value.errors)
    assert set(row_counts(runtime).values()) == {0}


# --- catch-up ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recorded_at", "sms_due"),
    [
        pytest.param(NOW, NOW, id="recorded-in-the-morning"),
        pytest.param(
            datetime(2026, 3, 2, 22, 15, tzinfo=UTC),
            datetime(2026, 3, 3, 8, 0, tzinfo=UTC),
            id="recorded-in-quiet-hours",
        ),
    ],
)
def test_session_when_recorded_five_days_late_then_only_safe_reminders_are_brought_forward(
    runtime: Runtime, clock: FixedClock, recorded_at: datetime, sms_due: datetime
) -> None:
    treated_at = NOW - timedelta(days=5)
    clock.set(recorded_at)
    session_id = enrol(runtime, make_request(treated_at=treated_at.isoformat()))

    due_now = {"sms": sms_due, "email": recorded_at}
    on_time = plan_for(
        runtime, treated_at=treated_at, recorded_at=treated_at, channels=("sms", "email")
    )
    stored = {(r.step, r.occurrence, r.channel): r for r in stored_reminders(runtime, session_id)}
    assert len(stored) == len(on_time)
    missed = [p for p in on_time if p.due_utc < recorded_at]
    assert {p.step for p in missed} >= ALWAYS_CAUGHT_UP | {"keep-moving", "continuous-end"}

    for p in on_time:
        reminder = stored[p.step, p.occurrence, p.channel]
        if p.due_utc >= recorded_at:
            assert (reminder.state, reminder.due_at) == ("scheduled", p.due_utc), p
        elif p.step in ALWAYS_CAUGHT_UP:
            assert (reminder.state, reminder.due_at) == ("scheduled", due_now[p.channel]), p
    for channel in ("sms", "email"):
        others = [
            stored[p.step, p.occurrence, p.channel]
            for p in missed
            if p.channel == channel and p.step not in ALWAYS_CAUGHT_UP
        ]
        brought_forward = [r for r in others if r.state == "scheduled"]
        # At 22:15 the latest SMS ("take them off tonight") would only go out at 08:00, when it
        # is no longer true: nothing is brought forward then. Otherwise exactly one is.
        expected = 0 if (channel == "sms" and sms_due != recorded_at) else 1
        assert len(brought_forward) == expected, channel
        assert all(r.due_at == due_now[channel] for r in brought_forward)
        assert all(r.expires_at is None or r.expires_at > r.due_at for r in brought_forward)
        skipped = [r for r in others if r.state == "skipped"]
        assert len(skipped) == len(others) - expected
        assert all(r.reason and "catch-up" in r.reason for r in skipped)
    assert all(r.due_at >= recorded_at for r in stored.values() if r.state == "scheduled")


def test_sql_names_when_not_a_plain_name_then_refused() -> None:
    """The driver-level INSERTs interpolate column and table names; only plain names pass."""
    from aftercare.storage.pgcopy import sql_names

    assert sql_names(("patient_id", "due_at")) == "patient_id, due_at"
    for bad in ("name; DROP TABLE patients", "Name", "a b", "", "x)--"):
        with pytest.raises(ValueError, match="not a plain SQL name"):
            sql_names(("id", bad))
