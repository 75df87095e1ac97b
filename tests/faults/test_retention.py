"""Data retention on SQLite and PostgreSQL, with an injected clock: a patient is anonymised once
their regimen (the due time of their last session's last reminder) ended more than the retention
period ago, exactly as staff erasure does it, with an anonymous audit event; never earlier, never
twice, and never while another of their sessions is still current."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from celery.schedules import crontab
from sqlalchemy import func, select

from aftercare.patients import retention
from aftercare.reminders import states
from aftercare.runtime import Runtime
from aftercare.sessions.service import record_session, validate_request
from aftercare.settings import Settings
from aftercare.storage.models import AuditEvent, InboundMessage, Patient, Reminder, TreatmentSession
from aftercare.worker import tasks
from aftercare.worker.celeryconfig import DISPATCH_QUEUE, celery_settings
from tests.conftest import REPO, make_settings
from tests.factories import PATIENT_EMAIL, PATIENT_NAME, PATIENT_PHONE, enrol, session_request
from tests.faults.corpus import table_snapshot

DAYS = 730
TREATED = datetime(2023, 1, 10, 10, 0, tzinfo=UTC)


def ended_at(rt: Runtime, patient_id: int) -> datetime:
    """When the patient's regimen ended, read from the stored plan."""
    with rt.db.session() as s:
        ended = s.scalar(
            select(func.max(Reminder.due_at))
            .join(TreatmentSession, TreatmentSession.id == Reminder.session_id)
            .where(TreatmentSession.patient_id == patient_id)
        )
    assert ended is not None
    return ended


def patient_of(rt: Runtime, session_id: int) -> int:
    with rt.db.session() as s:
        session = s.get(TreatmentSession, session_id)
        assert session is not None
        return session.patient_id


def enrol_patient(rt: Runtime, treated: datetime, **overrides: object) -> int:
    return patient_of(rt, enrol(rt, now=treated, **overrides))


def add_session(rt: Runtime, patient_id: int, treated: datetime) -> None:
    """A further session for an existing patient (a second course of treatment)."""
    valid = validate_request(
        session_request(treated_at=treated.isoformat()),
        registry=rt.registry,
        quiet=rt.quiet,
        now=treated,
    )
    with rt.db.session() as s:
        patient = s.get(Patient, patient_id)
        record_session(db_session=s, valid=valid, now=treated, patient=patient)


def patient(rt: Runtime, patient_id: int) -> Patient:
    with rt.db.session() as s:
        found = s.get(Patient, patient_id)
        assert found is not None
        return found


def run(rt: Runtime, now: datetime) -> dict[str, int]:
    return retention.anonymise_expired(db=rt.db, now=now, retention_days=DAYS)


def test_a_patient_just_inside_the_period_is_kept_and_one_just_past_it_is_anonymised(
    runtime: Runtime,
) -> None:
    first = enrol_patient(runtime, TREATED)
    later = enrol_patient(runtime, TREATED + timedelta(days=1), name="Second Patient")
    ended = ended_at(runtime, first)
    assert ended_at(runtime, later) > ended + timedelta(seconds=1)
    period = timedelta(days=DAYS)

    assert run(runtime, ended + period - timedelta(seconds=1))["erased"] == 0
    assert run(runtime, ended + period)["erased"] == 0  # "more than" the period: not yet
    assert patient(runtime, first).erased_at is None

    now = ended + period + timedelta(seconds=1)
    assert run(runtime, now) == {"erased": 1, "skipped": 0, "retention_days": DAYS}
    assert patient(runtime, first).erased_at == now
    assert patient(runtime, later).erased_at is None
    assert patient(runtime, later).name == "Second Patient"


def test_a_patient_with_one_old_and_one_current_session_is_kept(runtime: Runtime) -> None:
    recent = TREATED + timedelta(days=DAYS + 200)
    both = enrol_patient(runtime, TREATED)
    add_session(runtime, both, recent)
    only_old = enrol_patient(runtime, TREATED, name="Only Old")
    now = recent + timedelta(days=30)
    assert ended_at(runtime, only_old) + timedelta(days=DAYS) < now  # the old session expired

    assert run(runtime, now)["erased"] == 1
    assert patient(runtime, both).erased_at is None
    assert patient(runtime, both).name == PATIENT_NAME
    assert patient(runtime, only_old).erased_at == now


def test_anonymising_scrubs_as_staff_erasure_does_and_is_audited_without_an_actor(
    runtime: Runtime,
) -> None:
    patient_id = enrol_patient(runtime, TREATED)
    with runtime.db.session() as s:
        s.add(
            InboundMessage(
                provider_sid="SM" + "1" * 32,
                from_number=PATIENT_PHONE,
                patient_id=patient_id,
                body=f"Hello, this is {PATIENT_NAME}",
                received_at=TREATED + timedelta(days=3),
                kind="unrecognised",
            )
        )
    now = ended_at(runtime, patient_id) + timedelta(days=DAYS + 1)
    assert run(runtime, now)["erased"] == 1

    erased = patient(runtime, patient_id)
    assert (erased.name, erased.phone, erased.email) == ("erased", None, None)
    with runtime.db.session() as s:
        (message,) = s.scalars(select(InboundMessage))
        assert (message.body, message.from_number) == ("[erased]", "")
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "retention_erase")).all()
        pending = s.scalar(
            select(func.count()).select_from(Reminder).where(Reminder.state.in_(states.PENDING))
        )
    assert pending == 0
    assert [(e.actor_id, e.patient_id) for e in events] == [(None, patient_id)]
    detail = str(events[0].detail)
    for personal in (PATIENT_NAME, PATIENT_PHONE, PATIENT_EMAIL):
        assert personal not in detail


def test_a_second_run_changes_nothing(runtime: Runtime) -> None:
    old = enrol_patient(runtime, TREATED)
    enrol_patient(runtime, datetime(2026, 3, 1, 10, 0, tzinfo=UTC), name="Current Patient")
    now = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)
    assert run(runtime, now)["erased"] == 1
    before = table_snapshot(runtime.db)

    assert run(runtime, now + timedelta(days=1)) == {
        "erased": 0,
        "skipped": 0,
        "retention_days": DAYS,
    }
    assert table_snapshot(runtime.db) == before
    assert patient(runtime, old).erased_at == now


def test_a_patient_already_erased_by_staff_is_left_alone(runtime: Runtime) -> None:
    from aftercare.patients.service import erase_patient

    patient_id = enrol_patient(runtime, TREATED)
    staff_erased = datetime(2024, 1, 1, tzinfo=UTC)
    with runtime.db.session() as s:
        erase_patient(db_session=s, patient_id=patient_id, actor_id=None, now=staff_erased)
    assert run(runtime, datetime(2027, 1, 1, tzinfo=UTC))["erased"] == 0
    assert patient(runtime, patient_id).erased_at == staff_erased


def test_a_patient_with_no_session_is_judged_by_when_the_row_was_created(
    runtime: Runtime,
) -> None:
    with runtime.db.session() as s:
        lonely = Patient(
            public_id="f" * 32,
            name="No Session",
            phone=None,
            email="nosession@example.org",
            timezone="Europe/London",
            channels="email",
            created_at=TREATED,
        )
        s.add(lonely)
        s.flush()
        lonely_id = lonely.id
    assert run(runtime, TREATED + timedelta(days=DAYS, seconds=-1))["erased"] == 0
    assert run(runtime, TREATED + timedelta(days=DAYS, seconds=1))["erased"] == 1
    assert patient(runtime, lonely_id).name == "erased"


def test_the_daily_task_uses_the_configured_period_and_the_runtime_clock(
    runtime: Runtime,
) -> None:
    patient_id = enrol_patient(runtime, TREATED)
    runtime.settings = runtime.settings.model_copy(update={"retention_days": 30})
    runtime.clock.set(ended_at(runtime, patient_id) + timedelta(days=31))  # type: ignore[attr-defined]

    summary = tasks.anonymise_expired()

    assert summary == {"erased": 1, "skipped": 0, "retention_days": 30}
    assert patient(runtime, patient_id).erased_at == runtime.clock.now()


def test_beat_asks_for_the_retention_task_once_a_day_on_the_dispatch_queue(
    tmp_path: Path,
) -> None:
    conf = celery_settings(make_settings(tmp_path))
    entry = conf["beat_schedule"]["anonymise-expired-patients"]
    assert entry["task"] == "aftercare.retention"
    assert conf["task_routes"]["aftercare.retention"] == {"queue": DISPATCH_QUEUE}
    schedule = entry["schedule"]
    assert isinstance(schedule, crontab)
    assert (schedule.hour, schedule.minute) == ({3}, {30})  # daily, at a quiet hour (UTC)
    assert schedule.day_of_week == set(range(7))


def test_the_default_period_is_documented_with_its_reasons() -> None:
    default = Settings.model_fields["retention_days"].default
    assert default == DAYS
    text = (REPO / "docs" / "retention.md").read_text(encoding="utf-8")
    assert "AFTERCARE_RETENTION_DAYS" in text
    assert f"{default} days" in text


@pytest.mark.parametrize("bad", [0, -1, 36_501])
def test_a_retention_period_out_of_range_is_refused(tmp_path: Path, bad: int) -> None:
    with pytest.raises(ValueError, match="retention_days"):
        make_settings(tmp_path, retention_days=bad)
