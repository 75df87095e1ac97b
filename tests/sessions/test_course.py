"""A course of treatment, on SQLite and PostgreSQL: one patient across sessions (API, CLI, CSV
import), a later session superseding what an earlier one has not sent (at every point of the
first plan, and for a send task already queued), the check-in outcome and booking link.

Time moves on the runtime's injected clock; reminders go through the real dispatcher and
delivery (outbox transports), in process.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from aftercare.clock import FixedClock
from aftercare.flags.service import raise_flag
from aftercare.inbound.replies import Replies
from aftercare.inbound.service import receive_sms
from aftercare.reminders import states
from aftercare.runtime import Runtime
from aftercare.sessions import actions, course, enrolment, import_store, importer
from aftercare.storage.db import Database
from aftercare.storage.models import Flag, Patient, Reminder, TreatmentSession
from aftercare.validation import ValidationFailed
from tests.cli.test_cli import Aftercare, aftercare, enrol_args, succeeded
from tests.factories import PATIENT_EMAIL, PATIENT_NAME, session_request
from tests.reminders.test_delivery import claim_all, deliver_all, sent_log
from tests.web.test_api import Api, make_api
from tests.web.test_pages import Pages, pages, text_of

T0 = datetime.fromisoformat("2026-03-02T10:30:00+00:00")
LONDON = ZoneInfo("Europe/London")


@pytest.fixture
def api(runtime: Runtime) -> Iterator[Api]:
    yield from make_api(runtime)


def record(rt: Runtime, *, at: datetime | None = None, **overrides: Any) -> enrolment.Enrolled:
    """Record a session treated (and recorded) at ``at`` through the staff action."""
    at = at or rt.clock.now()
    overrides.setdefault("treated_at", at.isoformat())
    patient_id = overrides.pop("patient_id", None)
    with rt.db.session() as s:
        enrolled = enrolment.enrol_planned(
            db_session=s,
            request=session_request(**overrides),
            registry=rt.registry,
            quiet=rt.quiet,
            now=max(at, rt.clock.now()),
            actor_id=None,
            patient_id=patient_id,
        )
        s.expunge_all()
    return enrolled


def play_until(rt: Runtime, clock: FixedClock, until: datetime) -> None:
    """Move the clock from one due time to the next up to ``until``, dispatching and
    delivering everything due on the way (the real dispatcher and delivery)."""
    while True:
        with rt.db.session() as s:
            next_due = s.scalar(
                select(func.min(Reminder.due_at)).where(Reminder.state == states.SCHEDULED)
            )
        if next_due is None or next_due > until:
            break
        clock.set(max(next_due, clock.now()))
        deliver_all(rt, claim_all(rt))
    clock.set(max(until, clock.now()))


def reminders_of(rt: Runtime, session_id: int) -> list[Reminder]:
    with rt.db.session() as s:
        rows = s.scalars(
            select(Reminder).where(Reminder.session_id == session_id).order_by(Reminder.id)
        ).all()
        s.expunge_all()
    return list(rows)


# --- One patient across sessions ---------------------------------------------------------------


def test_second_session_with_same_phone_and_name_in_other_case_and_spacing_joins_the_patient(
    api: Api,
) -> None:
    first = api.enrol()
    second = api.enrol(
        patient__name="  philippa   QUENNELL ", treated_at="2026-03-03T10:00:00+00:00"
    )

    assert first["matched_existing"] is False
    assert second["matched_existing"] is True
    assert second["patient_id"] == first["patient_id"]
    assert api.count(Patient) == 1
    assert api.count(TreatmentSession) == 2


def test_relative_on_the_same_phone_with_another_name_is_a_different_patient(api: Api) -> None:
    mother = api.enrol()
    daughter = api.enrol(patient__name="Rosa Quennell", treated_at="2026-03-03T10:00:00+00:00")

    assert daughter["matched_existing"] is False
    assert daughter["patient_id"] != mother["patient_id"]
    # Nothing of the mother's plan is superseded by her daughter's session.
    with api.rt.db.session() as s:
        superseded = s.scalar(select(func.count()).where(Reminder.state == states.SUPERSEDED))
    assert superseded == 0


def test_patient_with_no_phone_is_matched_by_email_and_name(api: Api) -> None:
    first = api.enrol(patient__phone=..., patient__channels=["email"])
    second = api.enrol(
        patient__phone=...,
        patient__channels=["email"],
        patient__email=PATIENT_EMAIL.upper(),
        treated_at="2026-03-03T10:00:00+00:00",
    )

    assert second["matched_existing"] is True
    assert second["patient_id"] == first["patient_id"]


def test_erased_patient_is_never_matched(api: Api) -> None:
    first = api.enrol()
    erased = api.client.delete(f"/api/v1/patients/{first['patient_id']}", headers=api.as_admin)
    assert erased.status_code in (200, 204), erased.text

    again = api.enrol(treated_at="2026-03-03T10:00:00+00:00")

    assert again["matched_existing"] is False
    assert again["patient_id"] != first["patient_id"]
    refused = api.client.post(
        "/api/v1/sessions",
        json={**_body_without_patient(), "patient_id": first["patient_id"]},
    )
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "patient_id"]


def _body_without_patient() -> dict[str, Any]:
    from tests.web.test_api import session_body

    body = session_body(treated_at="2026-03-03T09:00:00+00:00")
    del body["patient"]
    return body


def test_patient_id_instead_of_patient_adds_the_session_to_that_patient(api: Api) -> None:
    first = api.enrol()

    response = api.client.post(
        "/api/v1/sessions", json={**_body_without_patient(), "patient_id": first["patient_id"]}
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["patient_id"] == first["patient_id"]
    assert body["matched_existing"] is True
    both = api.client.post(
        "/api/v1/sessions",
        json={**_body_without_patient(), "patient_id": 1, "patient": {"name": "X"}},
    )
    neither = api.client.post("/api/v1/sessions", json=_body_without_patient())
    unknown = api.client.post(
        "/api/v1/sessions", json={**_body_without_patient(), "patient_id": 999}
    )
    assert both.status_code == neither.status_code == unknown.status_code == 422
    assert unknown.json()["detail"] == [{"loc": ["body", "patient_id"], "msg": "no patient 999"}]
    assert api.count(TreatmentSession) == 2


def test_cli_enrol_twice_for_the_same_person_adds_to_one_patient(aftercare: Aftercare) -> None:
    succeeded(aftercare("migrate"))
    first = aftercare(*enrol_args(), "--json")
    relative = aftercare(*enrol_args({"--name": "Joan Doe"}), "--json")
    again = aftercare(
        *enrol_args({"--name": "JANE  doe", "--treated-at": "2026-03-02T11:00+00:00"})
    )

    assert json.loads(succeeded(first).stdout)["matched_existing"] is False
    assert json.loads(succeeded(relative).stdout)["matched_existing"] is False
    assert "already known: added to their course" in succeeded(again).stdout
    assert "Superseded" in again.stdout
    db = Database(aftercare.database_url)
    try:
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(Patient)) == 2
            assert s.scalar(select(func.count()).select_from(TreatmentSession)) == 3
    finally:
        db.dispose()


def test_csv_import_adds_sessions_to_known_patients_and_settles_their_course(
    runtime: Runtime,
) -> None:
    earlier = record(runtime, at=T0)
    header = "name,phone,channels,treated_at,consent,contraindications_checked\n"
    rows = [
        # The known patient, three weeks later: supersedes the first session's plan.
        f"philippa quennell,07911 123456,sms,{(T0 + timedelta(days=21)).isoformat()},yes,yes",
        # A relative on the same phone: someone else.
        f"Rosa Quennell,07911 123456,sms,{(T0 + timedelta(days=20)).isoformat()},yes,yes",
        # A new patient twice in the file: one patient, the later session superseding.
        f"Sam Lee,07911 123458,sms,{(T0 + timedelta(days=10)).isoformat()},yes,yes",
        f"Sam  Lee,07911 123458,sms,{(T0 + timedelta(days=19)).isoformat()},yes,yes",
    ]
    read = importer.read_csv(
        (header + "\n".join(rows) + "\n").encode(),
        columns=importer.known_columns(runtime.registry),
    )
    now = T0 + timedelta(days=21, hours=1)
    checked = importer.check_rows(
        read,
        registry=runtime.registry,
        quiet=runtime.quiet,
        now=now,
        default_timezone="Europe/London",
    )
    assert checked.errors == []

    stored = import_store.store(
        checked.good, db=runtime.db, now=now, registry=runtime.registry, chunk_size=2
    )

    assert stored == 4
    with runtime.db.session() as s:
        patients = {p.name: p.id for p in s.scalars(select(Patient))}
        sessions = Counter(s.scalars(select(TreatmentSession.patient_id)))
        states_of = dict(
            s.execute(
                select(Reminder.session_id, func.count())
                .where(Reminder.state == states.SUPERSEDED)
                .group_by(Reminder.session_id)
            ).all()
        )
    assert set(patients) == {PATIENT_NAME, "Rosa Quennell", "Sam Lee"}
    assert sessions == {
        earlier.session.patient_id: 2,
        patients["Rosa Quennell"]: 1,
        patients["Sam Lee"]: 2,
    }
    # The first session of each course has reminders superseded; no other session has.
    with runtime.db.session() as s:
        firsts = {
            s.scalar(
                select(func.min(TreatmentSession.id)).where(TreatmentSession.patient_id == pid)
            )
            for pid in (earlier.session.patient_id, patients["Sam Lee"])
        }
    assert set(states_of) == firsts


# --- Superseding at every point of the first plan -----------------------------------------------


@pytest.mark.parametrize(
    "gap",
    [
        pytest.param(timedelta(hours=30), id="during-72-hours"),
        pytest.param(timedelta(days=9), id="mid-daily-phase"),
        pytest.param(timedelta(days=25), id="after-completion"),
        pytest.param(timedelta(days=80), id="after-checkin"),
    ],
)
def test_later_session_supersedes_what_the_earlier_has_not_sent_at_every_point(
    runtime: Runtime, clock: FixedClock, gap: timedelta
) -> None:
    first = record(runtime, at=T0)
    play_until(runtime, clock, T0 + gap)
    before = {r.id: r for r in reminders_of(runtime, first.session.id)}
    pending = {i for i, r in before.items() if r.state in states.PENDING}

    second = record(runtime, at=T0 + gap)

    assert second.matched_existing
    after = {r.id: r for r in reminders_of(runtime, first.session.id)}
    superseded = {i for i, r in after.items() if r.state == states.SUPERSEDED}
    assert superseded == pending
    assert second.superseded == ({first.session.id: len(pending)} if pending else {})
    treated = (T0 + gap).astimezone(LONDON)
    reason = f"superseded by session {second.session.id} (treated {treated.day} {treated:%b %Y})"
    assert {after[i].reason for i in superseded} <= {reason}
    # What had gone out stays as it was.
    assert all(after[i].state == before[i].state for i in after if i not in pending)
    assert all(r.state != states.SUPERSEDED for r in reminders_of(runtime, second.session.id))

    play_until(runtime, clock, T0 + gap + timedelta(days=200))
    _assert_one_plan(runtime, first.session.id, second.session.id, since=T0 + gap)


def _assert_one_plan(runtime: Runtime, first_id: int, second_id: int, since: datetime) -> None:
    """No day with two daily-wear messages; after the later session is recorded, one check-in
    (the later session's) and sun advice only from it."""
    both = reminders_of(runtime, first_id) + reminders_of(runtime, second_id)
    sent = [r for r in both if r.state == states.SENT]
    days = Counter(
        (r.channel, r.sent_at.astimezone(LONDON).date())
        for r in sent
        if r.step == "daily-wear" and r.sent_at
    )
    assert days
    assert max(days.values()) == 1
    checkins = [r for r in sent if r.step == "checkin" and r.due_at > since]
    assert {r.session_id for r in checkins} == {second_id}
    assert len(checkins) == 2  # the question, once by SMS and once by email
    late_sun = {r.session_id for r in sent if r.step == "sun" and r.due_at > since}
    assert late_sun <= {second_id}
    keys = sent_log(runtime, "sms") + sent_log(runtime, "email")
    assert sorted(keys) == sorted(f"reminder-{r.id}" for r in sent if r.fallback_of_id is None)


def test_superseded_reminder_already_queued_is_never_sent(
    runtime: Runtime, clock: FixedClock
) -> None:
    first = record(runtime, at=T0)
    play_until(runtime, clock, T0 + timedelta(hours=71))
    clock.set(T0 + timedelta(hours=72))
    queued = claim_all(runtime)  # the end of continuous wear, on both channels
    assert queued

    second = record(runtime, at=T0 + timedelta(hours=72))

    assert deliver_all(runtime, queued) == ["not-queued"] * len(queued)
    rows = {r.id: r for r in reminders_of(runtime, first.session.id)}
    assert {rows[i].state for i in queued} == {states.SUPERSEDED}
    keys = set(sent_log(runtime, "sms") + sent_log(runtime, "email"))
    assert not keys & {f"reminder-{i}" for i in queued}
    assert second.superseded[first.session.id] >= len(queued)


def test_late_enrolment_of_an_older_session_never_reactivates_anything(
    runtime: Runtime, clock: FixedClock
) -> None:
    clock.set(T0 + timedelta(days=21))
    later = record(runtime, at=T0 + timedelta(days=21))
    clock.set(T0 + timedelta(days=21, hours=2))

    older = record(runtime, at=T0)

    assert older.matched_existing
    assert older.superseded.get(older.session.id)
    assert later.session.id not in older.superseded
    waiting = [r for r in reminders_of(runtime, older.session.id) if r.state in states.PENDING]
    assert waiting == []
    assert all(
        r.state == states.SCHEDULED
        for r in reminders_of(runtime, later.session.id)
        if r.due_at > clock.now()
    )
    # Pausing and resuming the older session, or recording yet another older one, brings
    # nothing back.
    with runtime.db.session() as s:
        actions.pause_session(
            db_session=s, session_id=older.session.id, actor_id=None, now=clock.now()
        )
        actions.resume_session(
            db_session=s,
            session_id=older.session.id,
            actor_id=None,
            now=clock.now(),
            quiet=runtime.quiet,
        )
    record(runtime, at=T0 - timedelta(days=1))
    assert [r for r in reminders_of(runtime, older.session.id) if r.state in states.PENDING] == []


def test_cancelling_the_later_session_leaves_the_earlier_superseded_and_per_session_actions_work(
    runtime: Runtime, clock: FixedClock
) -> None:
    first = record(runtime, at=T0)
    clock.set(T0 + timedelta(days=5))
    second = record(runtime, at=T0 + timedelta(days=5))
    with runtime.db.session() as s:
        actions.pause_session(
            db_session=s, session_id=second.session.id, actor_id=None, now=clock.now()
        )
        actions.cancel_session(
            db_session=s, session_id=first.session.id, actor_id=None, now=clock.now()
        )
    firsts = Counter(r.state for r in reminders_of(runtime, first.session.id))
    seconds = Counter(r.state for r in reminders_of(runtime, second.session.id))
    assert firsts[states.SCHEDULED] == firsts[states.PAUSED] == 0
    assert firsts[states.SUPERSEDED] > 0
    assert seconds[states.PAUSED] > 0
    assert seconds[states.SCHEDULED] == 0


def test_preview_names_what_a_new_session_would_replace(runtime: Runtime) -> None:
    first = record(runtime, at=T0)
    pending = sum(1 for r in reminders_of(runtime, first.session.id) if r.state in states.PENDING)
    with runtime.db.engine.connect() as connection:
        later = course.preview_replacements(
            connection,
            patient_id=first.session.patient_id,
            regimen_id="micro-sclerotherapy",
            treated_at=T0 + timedelta(days=1),
            registry=runtime.registry,
        )
        older = course.preview_replacements(
            connection,
            patient_id=first.session.patient_id,
            regimen_id="micro-sclerotherapy",
            treated_at=T0 - timedelta(days=1),
            registry=runtime.registry,
        )
    assert [(r.session.id, r.reminders, r.by_new) for r in later] == [
        (first.session.id, pending, True)
    ]
    assert [(r.session.id, r.by_new) for r in older] == [(first.session.id, False)]


def test_shipped_regimen_is_superseded_only_by_a_session_of_the_same_regimen(
    runtime: Runtime,
) -> None:
    regimen = runtime.registry.get("micro-sclerotherapy")
    assert regimen.superseded_by("micro-sclerotherapy") == regimen.course.supersede  # type: ignore[union-attr]
    assert regimen.superseded_by("another-regimen") == frozenset()


# --- Outcome and booking -----------------------------------------------------------------------


def test_checkin_answer_is_stored_as_the_sessions_outcome(
    runtime: Runtime, clock: FixedClock
) -> None:
    first = record(runtime, at=T0)
    play_until(runtime, clock, T0 + timedelta(weeks=10, days=1))
    replies = Replies(
        renderer=runtime.renderer,
        clinic_name=runtime.settings.clinic_name,
        clinic_phone=runtime.settings.clinic_phone,
    )
    with runtime.db.session() as s:
        receive_sms(
            db_session=s,
            sid="SM" + "1" * 32,
            from_number="+447911123456",
            body="2",
            now=clock.now(),
            replies=replies,
        )
    with runtime.db.session() as s:
        stored = s.get_one(TreatmentSession, first.session.id)
        assert (stored.checkin_answer, stored.checkin_outcome) == ("2", "fading")


def test_recording_the_session_a_booking_request_asked_for_resolves_and_links_it(
    runtime: Runtime, clock: FixedClock
) -> None:
    first = record(runtime, at=T0)
    with runtime.db.session() as s:
        flag_id = raise_flag(
            s,
            kind="booking_request",
            patient_id=first.session.patient_id,
            session_id=first.session.id,
            text="Replied BOOK",
            now=T0 + timedelta(weeks=10),
        ).id
    clock.set(T0 + timedelta(weeks=11))
    with runtime.db.session() as s:
        session = enrolment.enrol(
            db_session=s,
            request=session_request(treated_at=clock.now().isoformat()),
            registry=runtime.registry,
            quiet=runtime.quiet,
            now=clock.now(),
            actor_id=None,
            patient_id=first.session.patient_id,
            booking_flag_id=flag_id,
        )
        session_id = session.id
    with runtime.db.session() as s:
        flag = s.get_one(Flag, flag_id)
        assert flag.resolved_at is not None
        assert flag.booked_session_id == session_id
    # A flag already resolved, or another patient's, is refused and nothing is stored.
    with pytest.raises(ValidationFailed), runtime.db.session() as s:
        enrolment.enrol(
            db_session=s,
            request=session_request(treated_at=clock.now().isoformat()),
            registry=runtime.registry,
            quiet=runtime.quiet,
            now=clock.now(),
            actor_id=None,
            booking_flag_id=flag_id,
        )
    with runtime.db.session() as s:
        assert s.scalar(select(func.count()).select_from(TreatmentSession)) == 2


__all__ = ["aftercare", "pages"]  # fixtures, used by name


# --- Staff pages ---------------------------------------------------------------------------------


def test_record_form_saves_only_once_staff_choose_a_known_patient_or_a_new_one(
    pages: Pages,
) -> None:
    first = pages.enrol()
    assert first.status_code == 303
    patient_id = int(first.headers["location"].split("/patients/")[1].split("?")[0])
    before = pages.counts()

    unanswered = pages.enrol(name="philippa  quennell", treated_time="11:00")

    assert unanswered.status_code == 422
    assert "This may be a patient you already know" in text_of(unanswered)
    assert f'id="patient-choice-{patient_id}"' in unanswered.text
    assert "same person" in text_of(unanswered)
    assert re.search(r"Replaces \d+ reminders of the session on 2 March", text_of(unanswered))
    assert pages.counts() == before

    chosen = pages.enrol(
        name="philippa  quennell", treated_time="11:00", patient_choice=str(patient_id)
    )
    assert chosen.status_code == 303
    assert chosen.headers["location"] == f"/patients/{patient_id}?done=course"
    relative = pages.enrol(name="Rosa Quennell", treated_time="11:30", patient_choice="new")
    assert relative.status_code == 303
    assert relative.headers["location"] != f"/patients/{patient_id}?done=enrolled"
    with pages.rt.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Patient)) == 2
        by_patient = Counter(s.scalars(select(TreatmentSession.patient_id)))
    assert by_patient[patient_id] == 2

    page = pages.client.get(f"/patients/{patient_id}")
    text = text_of(page)
    assert "Course of treatment 2 sessions" in text
    assert "replaced by a later session" in text
    assert "Record another session" in text
    another = pages.client.get(f"/sessions/new?patient={patient_id}")
    assert 'value="Philippa Quennell"' in another.text
    assert "Record another session for Philippa Quennell" in text_of(another)


def test_dashboard_counts_sessions_by_checkin_outcome_this_month_and_all_time(
    pages: Pages,
) -> None:
    ids = [
        record(pages.rt, at=T0, name=f"Patient {n}", phone=f"07911 12346{n}").session.id
        for n in range(4)
    ]
    answered = [
        ("1", T0 - timedelta(days=40)),  # last month
        ("2", T0 - timedelta(days=1)),
        ("2", T0 - timedelta(days=40)),
        ("3", T0 - timedelta(hours=1)),
    ]
    with pages.rt.db.session() as s:
        for session_id, (answer, at) in zip(ids, answered, strict=True):
            stored = s.get_one(TreatmentSession, session_id)
            stored.checkin_answer = answer
            stored.checkin_outcome = course.checkin_outcome(answer)
            stored.checkin_answered_at = at

    text = text_of(pages.client.get("/"))

    assert "Check-in outcomes" in text
    assert "Faded well 0 1" in text
    assert "Still fading 1 2" in text
    assert "Still dark, painful or worried 1 1" in text
    assert "Answered 2 4" in text
