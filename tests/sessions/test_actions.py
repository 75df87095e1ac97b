"""What staff do to a recorded session or patient (pause, resume, cancel, edit, erase), through
the service functions the API and the staff pages share. Every test runs on SQLite and on
PostgreSQL (the ``runtime`` fixture); reminders are delivered by the real dispatcher and
delivery code to the outbox."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from aftercare.audit.service import list_events
from aftercare.clock import FixedClock
from aftercare.errors import Conflict, NotFound
from aftercare.flags import resolution
from aftercare.flags.service import raise_flag
from aftercare.patients import service as patient_service
from aftercare.planning.planner import plan
from aftercare.reminders import delivery, states
from aftercare.reminders.dispatch import claim_due
from aftercare.runtime import Runtime
from aftercare.sessions import actions
from aftercare.storage.models import AuditEvent, Patient, Reminder, TreatmentSession
from aftercare.validation import ValidationFailed
from tests.factories import PATIENT_EMAIL, PATIENT_NAME, PATIENT_PHONE, add_staff, enrol

# PostgreSQL work in one transaction rolled back after each test (tests/conftest.py).
pytestmark = pytest.mark.rollback

NOW = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)
LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")
Slot = tuple[str, int, str]


@pytest.fixture
def actor(runtime: Runtime) -> int:
    """A staff member's id, as the faces pass it (no password needed here)."""
    with runtime.db.session() as s:
        return add_staff(s, now=NOW, email="nurse@example.org", role="staff").id


def reminders(rt: Runtime, session_id: int) -> dict[Slot, Reminder]:
    with rt.db.session() as s:
        rows = s.scalars(select(Reminder).where(Reminder.session_id == session_id)).all()
        return {(r.step, r.occurrence, r.channel): r for r in rows}


def session_row(rt: Runtime, session_id: int) -> TreatmentSession:
    with rt.db.session() as s:
        return s.get_one(TreatmentSession, session_id)


def patient_row(rt: Runtime, session_id: int) -> Patient:
    with rt.db.session() as s:
        return s.get_one(Patient, s.get_one(TreatmentSession, session_id).patient_id)


def deliver_due(rt: Runtime) -> list[str]:
    """Claim everything due now and deliver it, as beat and a worker would."""
    with rt.db.session() as s:
        ids = claim_due(s, now=rt.clock.now(), limit=1000)
    deps = rt.delivery_deps()
    return [delivery.deliver(deps=deps, reminder_id=i) for i in ids]


def act(rt: Runtime, func: Any, **kwargs: Any) -> Any:
    with rt.db.session() as s:
        return func(db_session=s, now=rt.clock.now(), **kwargs)


def audit_actions(rt: Runtime) -> list[tuple[str, int | None]]:
    with rt.db.session() as s:
        return [(e.action, e.actor_id) for e in reversed(list_events(db_session=s))]


# Pause, resume, cancel -----------------------------------------------------------------------


def test_pause_holds_scheduled_and_queued_reminders_and_a_queued_one_is_then_not_sent(
    runtime: Runtime, actor: int
) -> None:
    session_id = enrol(runtime)
    with runtime.db.session() as s:
        queued = claim_due(s, now=runtime.clock.now(), limit=1000)
    assert queued, "the welcome messages are due at once"

    act(runtime, actions.pause_session, session_id=session_id, actor_id=actor)

    assert {r.state for r in reminders(runtime, session_id).values()} == {states.PAUSED}
    assert session_row(runtime, session_id).status == "paused"
    deps = runtime.delivery_deps()
    assert [delivery.deliver(deps=deps, reminder_id=i) for i in queued] == ["not-queued"] * len(
        queued
    )
    assert audit_actions(runtime) == [("pause", actor)]


@pytest.mark.commits  # delivers: record_sent writes on its own connection
def test_pause_leaves_sent_reminders_alone(runtime: Runtime, actor: int) -> None:
    session_id = enrol(runtime)
    assert set(deliver_due(runtime)) == {states.SENT}

    act(runtime, actions.pause_session, session_id=session_id, actor_id=actor)

    by_slot = reminders(runtime, session_id)
    assert by_slot[("welcome", 0, "sms")].state == states.SENT
    assert by_slot[("keep-moving", 0, "sms")].state == states.PAUSED


def test_resume_after_a_long_pause_expires_stale_reminders_and_defers_sms_past_quiet_hours(
    runtime: Runtime, clock: FixedClock, actor: int
) -> None:
    session_id = enrol(runtime)
    before = reminders(runtime, session_id)
    act(runtime, actions.pause_session, session_id=session_id, actor_id=actor)
    # Friday 6 March, 22:00 in London: inside quiet hours, four days after treatment.
    clock.set(datetime(2026, 3, 6, 22, 0, tzinfo=UTC))

    act(
        runtime,
        actions.resume_session,
        session_id=session_id,
        actor_id=actor,
        quiet=runtime.quiet,
    )

    after = reminders(runtime, session_id)
    next_morning = datetime(2026, 3, 7, 8, 0, tzinfo=UTC)
    # No validity window: goes out late, but never at night.
    assert after[("welcome", 0, "sms")].state == states.SCHEDULED
    assert after[("welcome", 0, "sms")].due_at == next_morning
    assert after[("welcome", 0, "email")].due_at == clock.now()
    # Valid for two days after Tuesday 10:00: too late now.
    assert after[("keep-moving", 0, "sms")].state == states.EXPIRED
    # Safety-critical (end of continuous wear): never expired, only deferred.
    assert after[("continuous-end", 0, "sms")].state == states.SCHEDULED
    assert after[("continuous-end", 0, "sms")].due_at == next_morning
    # Still in the future: back on the schedule at its planned time.
    assert after[("sun", 0, "sms")].state == states.SCHEDULED
    assert after[("sun", 0, "sms")].due_at == before[("sun", 0, "sms")].due_at
    assert session_row(runtime, session_id).status == "active"
    assert [a for a, _ in audit_actions(runtime)] == ["pause", "resume"]


@pytest.mark.commits  # delivers: record_sent writes on its own connection
def test_cancel_cancels_every_pending_reminder_and_leaves_sent_ones(
    runtime: Runtime, actor: int
) -> None:
    session_id = enrol(runtime)
    deliver_due(runtime)
    act(runtime, actions.pause_session, session_id=session_id, actor_id=actor)

    act(runtime, actions.cancel_session, session_id=session_id, actor_id=actor)

    by_state: dict[str, set[str]] = {}
    for (step, _, _), r in reminders(runtime, session_id).items():
        by_state.setdefault(r.state, set()).add(step)
    assert set(by_state) == {states.SENT, states.CANCELLED}
    assert by_state[states.SENT] == {"welcome"}
    session = session_row(runtime, session_id)
    assert (session.status, session.cancelled_at) == ("cancelled", NOW)


@pytest.mark.parametrize(
    ("setup", "change", "message"),
    [
        (["pause"], "pause", "already paused"),
        ([], "resume", "not paused"),
        (["cancel"], "resume", "cancelled"),
        (["cancel"], "pause", "cancelled"),
        (["cancel"], "cancel", "cancelled"),
    ],
    ids=["pause-twice", "resume-active", "resume-cancelled", "pause-cancelled", "cancel-twice"],
)
def test_a_change_that_makes_no_sense_is_a_conflict_and_changes_nothing(
    runtime: Runtime, actor: int, setup: list[str], change: str, message: str
) -> None:
    session_id = enrol(runtime)
    funcs: dict[str, Any] = {
        "pause": actions.pause_session,
        "cancel": actions.cancel_session,
        "resume": lambda **kw: actions.resume_session(quiet=runtime.quiet, **kw),
    }
    for step in setup:
        act(runtime, funcs[step], session_id=session_id, actor_id=actor)
    before = {k: r.state for k, r in reminders(runtime, session_id).items()}

    with pytest.raises(Conflict, match=message):
        act(runtime, funcs[change], session_id=session_id, actor_id=actor)

    assert {k: r.state for k, r in reminders(runtime, session_id).items()} == before
    assert len(audit_actions(runtime)) == len(setup)


def test_unknown_session_is_not_found(runtime: Runtime, actor: int) -> None:
    with pytest.raises(NotFound, match="session 4242"):
        act(runtime, actions.pause_session, session_id=4242, actor_id=actor)


# Edit a patient ------------------------------------------------------------------------------


def edit(rt: Runtime, session_id: int, actor: int, **changes: Any) -> Patient:
    patient_id = session_row(rt, session_id).patient_id
    with rt.db.session() as s:
        return patient_service.update_patient(
            db_session=s,
            patient_id=patient_id,
            changes=changes,
            actor_id=actor,
            now=rt.clock.now(),
            registry=rt.registry,
            quiet=rt.quiet,
        )


def expected_future(rt: Runtime, session_id: int, zone: str, channels: tuple[str, ...]) -> set[Any]:
    session = session_row(rt, session_id)
    planned = plan(
        regimen=rt.registry.get(session.regimen_id),
        treated_at=session.treated_at,
        timezone=zone,
        parameters=dict(session.parameters),
        channels=channels,  # type: ignore[arg-type]
        quiet=rt.quiet,
        recorded_at=session.recorded_at,
    )
    now = rt.clock.now()
    return {(p.step, p.occurrence, p.channel, p.due_utc) for p in planned if p.due_utc > now}


@pytest.mark.commits  # delivers: record_sent writes on its own connection
def test_new_timezone_replans_only_future_reminders_and_leaves_sent_ones_untouched(
    runtime: Runtime, clock: FixedClock, actor: int
) -> None:
    session_id = enrol(runtime)
    deliver_due(runtime)
    clock.set(datetime(2026, 3, 3, 11, 0, tzinfo=UTC))
    deliver_due(runtime)  # warning signs, keep moving
    before = reminders(runtime, session_id)
    sent = {k: (r.id, r.state, r.due_at, r.sent_at) for k, r in before.items() if r.sent_at}
    assert len(sent) == 6

    edit(runtime, session_id, actor, timezone="America/New_York")

    after = reminders(runtime, session_id)
    assert {k: (r.id, r.state, r.due_at, r.sent_at) for k, r in after.items() if r.sent_at} == sent
    scheduled = {(*k, r.due_at) for k, r in after.items() if r.state == states.SCHEDULED}
    planned = expected_future(runtime, session_id, "America/New_York", ("sms", "email"))
    # A step already sent is not sent again at its new local time.
    assert scheduled == {p for p in planned if p[:3] not in sent}
    first_wear = after[("daily-wear", 0, "sms")].due_at.astimezone(NEW_YORK)
    assert (first_wear.hour, first_wear.minute) == (8, 0)
    assert set(after) == set(before), "re-planned in place: no new rows, no duplicates"
    session = session_row(runtime, session_id)
    assert session.timezone == "America/New_York"
    [event] = [e for e in audit_events(runtime) if e.action == "edit"]
    assert event.actor_id == actor
    assert event.detail["fields"] == ["timezone"]


def audit_events(rt: Runtime) -> list[AuditEvent]:
    with rt.db.session() as s:
        return list(list_events(db_session=s))


@pytest.mark.commits  # delivers: record_sent writes on its own connection
def test_dropping_and_readding_a_channel_replans_in_place_without_duplicate_slots(
    runtime: Runtime, clock: FixedClock, actor: int
) -> None:
    session_id = enrol(runtime)
    deliver_due(runtime)
    clock.set(NOW + timedelta(days=1))
    original = reminders(runtime, session_id)

    edit(runtime, session_id, actor, channels=["email"])

    email_only = reminders(runtime, session_id)
    future_sms = [r for k, r in email_only.items() if k[2] == "sms" and r.due_at > clock.now()]
    assert future_sms
    assert {r.state for r in future_sms} == {states.CANCELLED}
    # Steps sent on one channel only (the daily ones) now go by email.
    assert email_only[("daily-wear", 0, "email")].state == states.SCHEDULED
    assert email_only[("welcome", 0, "sms")].state == states.SENT

    edit(runtime, session_id, actor, channels=["sms", "email"])

    both = reminders(runtime, session_id)
    assert set(both) == set(email_only)
    assert both[("daily-wear", 0, "sms")].id == original[("daily-wear", 0, "sms")].id
    assert both[("daily-wear", 0, "sms")].state == states.SCHEDULED
    assert both[("daily-wear", 0, "email")].state == states.CANCELLED
    scheduled = {
        (*k, r.due_at)
        for k, r in both.items()
        if r.state == states.SCHEDULED and r.due_at > clock.now()
    }
    assert scheduled == expected_future(runtime, session_id, "Europe/London", ("sms", "email"))


def test_editing_a_paused_session_keeps_its_future_reminders_paused(
    runtime: Runtime, actor: int
) -> None:
    session_id = enrol(runtime)
    act(runtime, actions.pause_session, session_id=session_id, actor_id=actor)

    edit(runtime, session_id, actor, timezone="Asia/Tokyo")

    assert {r.state for r in reminders(runtime, session_id).values()} <= {
        states.PAUSED,
        states.CANCELLED,
    }


def test_new_phone_number_lifts_an_sms_block(runtime: Runtime, actor: int) -> None:
    session_id = enrol(runtime)
    patient = patient_row(runtime, session_id)
    with runtime.db.session() as s:
        row = s.get_one(Patient, patient.id)
        row.sms_blocked_at = NOW
        row.sms_blocked_reason = "21211"

    edit(runtime, session_id, actor, phone="07912 345678")

    patient = patient_row(runtime, session_id)
    assert patient.phone == "+447912345678"
    assert (patient.sms_blocked_at, patient.sms_blocked_reason) == (None, None)


@pytest.mark.parametrize(
    ("changes", "loc"),
    [
        ({"phone": "12"}, ("phone",)),
        ({"phone": None}, ("phone",)),
        ({"email": "not-an-address"}, ("email",)),
        ({"email": None}, ("email",)),
        ({"timezone": "Mars/Olympus"}, ("timezone",)),
        ({"channels": ["fax"]}, ("channels", 0)),
        ({"channels": []}, ("channels",)),
        ({"name": "  "}, ("name",)),
        ({"treated_at": "2026-03-01T10:00+00:00"}, ("treated_at",)),
    ],
)
def test_bad_edit_names_the_field_and_changes_nothing(
    runtime: Runtime, actor: int, changes: dict[str, Any], loc: tuple[Any, ...]
) -> None:
    session_id = enrol(runtime)
    before = patient_row(runtime, session_id)

    with pytest.raises(ValidationFailed) as caught:
        edit(runtime, session_id, actor, **changes)

    assert caught.value.errors[0].loc == loc
    after = patient_row(runtime, session_id)
    assert (after.phone, after.email, after.timezone, after.channels) == (
        before.phone,
        before.email,
        before.timezone,
        before.channels,
    )


def test_phone_may_be_removed_when_sms_is_no_longer_chosen(runtime: Runtime, actor: int) -> None:
    session_id = enrol(runtime)

    edit(runtime, session_id, actor, channels=["email"], phone=None)

    patient = patient_row(runtime, session_id)
    assert (patient.phone, patient.channels) == (None, "email")


# Erase ---------------------------------------------------------------------------------------


@pytest.mark.commits  # delivers: record_sent writes on its own connection
def test_erase_replaces_personal_data_cancels_pending_reminders_and_keeps_an_anonymous_record(
    runtime: Runtime, actor: int
) -> None:
    session_id = enrol(runtime)
    deliver_due(runtime)
    patient_id = session_row(runtime, session_id).patient_id

    act(runtime, patient_service.erase_patient, patient_id=patient_id, actor_id=actor)

    patient = patient_row(runtime, session_id)
    assert (patient.name, patient.phone, patient.email, patient.erased_at) == (
        "erased",
        None,
        None,
        NOW,
    )
    assert {r.state for r in reminders(runtime, session_id).values()} == {
        states.SENT,
        states.CANCELLED,
    }
    assert session_row(runtime, session_id).status == "cancelled"
    [event] = [e for e in audit_events(runtime) if e.action == "erase"]
    assert (event.actor_id, event.patient_id) == (actor, patient_id)
    text = repr(event.detail)
    for personal in (PATIENT_NAME, PATIENT_PHONE, PATIENT_EMAIL):
        assert personal not in text

    with pytest.raises(Conflict, match="already been erased"):
        act(runtime, patient_service.erase_patient, patient_id=patient_id, actor_id=actor)
    with pytest.raises(Conflict, match="erased"):
        edit(runtime, session_id, actor, timezone="Europe/Paris")


def test_every_action_is_audited_with_its_actor_and_ids_only(runtime: Runtime, actor: int) -> None:
    session_id = enrol(runtime)
    patient_id = session_row(runtime, session_id).patient_id
    act(runtime, actions.pause_session, session_id=session_id, actor_id=actor)
    act(runtime, actions.resume_session, session_id=session_id, actor_id=actor, quiet=runtime.quiet)
    edit(runtime, session_id, actor, email="new.address@example.org")
    act(runtime, actions.cancel_session, session_id=session_id, actor_id=actor)
    act(runtime, patient_service.erase_patient, patient_id=patient_id, actor_id=actor)

    events = list(reversed(audit_events(runtime)))
    assert [(e.action, e.actor_id, e.patient_id) for e in events] == [
        ("pause", actor, patient_id),
        ("resume", actor, patient_id),
        ("edit", actor, patient_id),
        ("cancel", actor, patient_id),
        ("erase", actor, patient_id),
    ]
    assert "new.address" not in repr([e.detail for e in events])


def test_resolving_a_flag_is_audited_and_twice_is_a_conflict(runtime: Runtime, actor: int) -> None:
    session_id = enrol(runtime)
    patient_id = session_row(runtime, session_id).patient_id
    with runtime.db.session() as s:
        flag_id = raise_flag(
            s, kind="checkin_concern", patient_id=patient_id, text="still dark", now=NOW
        ).id

    flag = act(runtime, resolution.resolve_flag, flag_id=flag_id, actor_id=actor, note="called")

    assert (flag.resolved_at, flag.resolved_by_id, flag.resolution_note) == (NOW, actor, "called")
    assert audit_actions(runtime) == [("resolve_flag", actor)]
    with pytest.raises(Conflict, match="already resolved"):
        act(runtime, resolution.resolve_flag, flag_id=flag_id, actor_id=actor)
    with pytest.raises(NotFound, match="flag 999"):
        act(runtime, resolution.resolve_flag, flag_id=999, actor_id=actor)
