"""A course of treatment in a real browser (Chromium, no JavaScript): a returning patient whose
check-in asked for another session, recorded from the booking flag and from the patient page;
the warning when the person may already be known; the course on the patient page.
Screenshots are saved (see conftest); the one of a patient with two sessions is in the docs."""

from __future__ import annotations

import re
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import func, select

from aftercare.clock import FixedClock
from aftercare.flags.service import raise_flag
from aftercare.inbound.replies import Replies
from aftercare.inbound.service import receive_sms
from aftercare.reminders import delivery, states
from aftercare.reminders.dispatch import claim_due
from aftercare.storage.models import Patient, Reminder, TreatmentSession
from tests.browser.conftest import NOW, LiveApp, log_in, screenshot
from tests.factories import enrol

NAME = "Sam Lee"
TREATED = NOW - timedelta(days=58)
PHONE = "07911 123458"
CHECKS = (
    "No history of deep vein thrombosis",
    "Not pregnant or breastfeeding",
    "No flight or long period of immobility",
    "No untreated varicose veins",
)


def _play(app: LiveApp, until: object) -> None:
    """Deliver everything due up to ``until`` through the real dispatcher and delivery."""
    clock = app.rt.clock
    assert isinstance(clock, FixedClock)
    deps = app.rt.delivery_deps()
    while True:
        with app.rt.db.session() as s:
            due = s.scalar(
                select(func.min(Reminder.due_at)).where(Reminder.state == states.SCHEDULED)
            )
        if due is None or due > until:  # type: ignore[operator]
            break
        clock.set(due)
        with app.rt.db.session() as s:
            ids = claim_due(s, now=due, limit=100)
        for reminder_id in ids:
            delivery.deliver(deps=deps, reminder_id=reminder_id)


@pytest.fixture(scope="module")
def returning(live_app: LiveApp) -> int:
    """Sam Lee, treated 58 days before NOW with the check-in at week 8; it went out, Sam
    answered "2" (still fading) and asked for another session (a booking_request flag); the
    last sun advice is still to come. Their patient id."""
    clock = live_app.rt.clock
    assert isinstance(clock, FixedClock)
    treated = TREATED
    clock.set(treated)
    session_id = enrol(
        live_app.rt,
        name=NAME,
        phone=PHONE,
        email="sam.lee@example.org",
        treated_at=treated.isoformat(),
        parameters={"daily_days": 7, "checkin_week": 8},
    )
    _play(live_app, NOW - timedelta(days=1))
    clock.set(NOW - timedelta(days=1))
    replies = Replies(
        renderer=live_app.rt.renderer,
        clinic_name=live_app.rt.settings.clinic_name,
        clinic_phone=live_app.rt.settings.clinic_phone,
    )
    with live_app.rt.db.session() as s:
        receive_sms(
            db_session=s,
            sid="SM" + "5" * 32,
            from_number="+447911123458",
            body="2",
            now=clock.now(),
            replies=replies,
        )
        patient_id = s.get_one(TreatmentSession, session_id).patient_id
        raise_flag(
            s,
            kind="booking_request",
            patient_id=patient_id,
            session_id=session_id,
            text="Replied “BOOK”: would like another session",
            now=clock.now(),
        )
    clock.set(NOW)
    return patient_id


def _confirm_checks(page: Page) -> None:
    for check in CHECKS:
        page.get_by_label(check).check()
    page.get_by_label("The patient agrees to receive aftercare messages").check()


def _sessions_of(app: LiveApp, patient_id: int) -> int:
    with app.rt.db.session() as s:
        return int(
            s.scalar(select(func.count()).where(TreatmentSession.patient_id == patient_id)) or 0
        )


def test_booking_request_is_recorded_as_another_session_and_the_patient_page_tells_the_course(
    page: Page, live_app: LiveApp, returning: int
) -> None:
    log_in(page, live_app)
    page.goto(live_app.url("/flags"))
    card = page.locator("li.card", has_text=NAME)
    expect(card).to_contain_text("Wants another session")
    card.get_by_role("link", name="Record the session").click()

    expect(page.get_by_role("heading", name="Record another session")).to_contain_text(NAME)
    expect(page.get_by_label("Patient name")).to_have_value(NAME)
    expect(page.get_by_label("Mobile phone")).to_have_value("+447911123458")
    expect(page.get_by_text("Saving it resolves that flag")).to_be_visible()
    _confirm_checks(page)
    page.get_by_role("button", name="Preview timeline").click()
    replaces = page.locator("#preview .replaces")
    treated = TREATED.astimezone(ZoneInfo("Europe/London"))
    expect(replaces).to_contain_text(re.compile(r"Replaces \d+ reminders? of the session on "))
    expect(replaces).to_contain_text(f"{treated.day} {treated:%B}")
    screenshot(page, "10-record-another-session", docs=True)

    page.get_by_role("button", name="Save and start reminders").click()
    expect(page).to_have_url(re.compile(rf"/patients/{returning}\?done=course"))
    expect(page.get_by_role("status")).to_contain_text("added to the patient's course")
    course = page.locator("#course")
    expect(course.locator(".course-list li")).to_have_count(_sessions_of(live_app, returning))
    first = course.locator(".course-list li").first
    expect(first).to_contain_text("Session 1")
    expect(first).to_contain_text("Still fading")
    expect(first).to_contain_text("replaced by a later session")
    expect(course.locator(".course-list li").nth(1)).to_contain_text("no answer yet")
    upcoming = course.locator("table.course-upcoming")
    expect(upcoming).to_contain_text("Welcome, continuous wear")
    expect(upcoming.locator("tbody tr")).to_have_count(6)
    # The booking flag is resolved and points at the new session.
    expect(page.get_by_text("the session booked")).to_be_visible()
    # Session 1's timeline shows what the new session replaced, and why.
    older = page.locator("section.session").nth(1)
    expect(older.get_by_role("heading", level=2)).to_contain_text("Session 1")
    expect(older).to_contain_text("Replaced")
    expect(older).to_contain_text("superseded by session")
    screenshot(page, "11-patient-course-full", full_page=True)
    course.scroll_into_view_if_needed()
    screenshot(page, "11-patient-course", docs=True)

    # "Record another session" from the patient page opens the form filled in.
    page.get_by_role("link", name="Record another session").click()
    expect(page.get_by_label("Patient name")).to_have_value(NAME)
    expect(page.get_by_label("Email address")).to_have_value("sam.lee@example.org")


def test_record_form_warns_of_a_known_patient_and_staff_choose(
    page: Page, live_app: LiveApp, returning: int
) -> None:
    log_in(page, live_app)
    before = _sessions_of(live_app, returning)
    page.goto(live_app.url("/sessions/new"))
    page.get_by_label("Patient name").fill("sam  LEE")
    page.get_by_label("Mobile phone").fill(PHONE)
    page.get_by_label("Email address").fill("sam.lee@example.org")
    _confirm_checks(page)
    page.get_by_role("button", name="Save and start reminders").click()

    summary = page.get_by_role("alert").filter(has_text="Please check")
    expect(summary).to_contain_text("This may be a patient you already know")
    known = page.locator("#patient_choice")
    expect(known).to_contain_text(NAME)
    expect(known).to_contain_text("same person")
    expect(page.locator(f"#patient-choice-{returning}")).not_to_be_checked()
    known.scroll_into_view_if_needed()
    screenshot(page, "12-record-known-patient", docs=True)
    assert _sessions_of(live_app, returning) == before  # nothing saved yet

    # A relative on the same phone is offered the same way but not chosen for them.
    page.get_by_label("Patient name").fill("Rosa Lee")
    page.get_by_role("button", name="Preview timeline").click()
    expect(known).to_contain_text("same phone")
    expect(page.locator(f"#patient-choice-{returning}")).not_to_be_checked()
    page.get_by_label("A new patient").check()
    page.get_by_role("button", name="Save and start reminders").click()
    expect(page.get_by_role("heading", name="Rosa Lee", level=1)).to_be_visible()
    with live_app.rt.db.session() as s:
        rosa = s.scalar(select(Patient).where(Patient.name == "Rosa Lee"))
        assert rosa is not None
        assert rosa.id != returning
    assert _sessions_of(live_app, returning) == before
