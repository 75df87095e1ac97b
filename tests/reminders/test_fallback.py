"""A failed SMS: staff flagged, the number stopped, and the email version sent instead, once.

Failures are raised at the network edge by a wrapper round the real outbox transport (as in
test_delivery.py); everything else is the real dispatcher, delivery and database.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from aftercare.channels.base import TransportError
from aftercare.clock import FixedClock
from aftercare.reminders import delivery, states
from aftercare.reminders.fallback import after_failure
from aftercare.reminders.retry import BASE, CAP, MAX_ATTEMPTS
from aftercare.reminders.status import apply_status
from aftercare.runtime import Runtime
from aftercare.storage.models import (
    AuditEvent,
    DeliveryAttempt,
    Flag,
    Patient,
    Reminder,
    TreatmentSession,
)
from tests.factories import enrol
from tests.reminders.test_delivery import EdgeTransport, claim_all, deliver_all, keep_only, sent_log

INVALID_NUMBER = TransportError("invalid 'To' number", permanent=True, code="21211")


def failing_sms(rt: Runtime, *errors: TransportError) -> delivery.Deps:
    deps = rt.delivery_deps()
    edge = EdgeTransport(deps.transports["sms"])
    edge.fail_with = list(errors)
    deps.transports["sms"] = edge
    return deps


def daily_wear_due(rt: Runtime, clock: FixedClock, **enrol_args: Any) -> list[int]:
    """Enrol and play on to the first daily-wear reminder: SMS only, whatever the channels
    (the regimen sends daily reminders on the first chosen channel)."""
    enrol(rt, **enrol_args)
    keep_only(rt, "daily-wear")
    with rt.db.session() as s:
        s.execute(
            update(Reminder)
            .where(Reminder.occurrence > 0, Reminder.state == states.SCHEDULED)
            .values(state=states.SKIPPED)
        )
    clock.advance(timedelta(days=3, hours=22))  # past the first 08:00 after the 72 hours
    return claim_all(rt)


def rows(rt: Runtime, model: type[Any], *where: Any) -> list[Any]:
    with rt.db.session() as s:
        return list(s.scalars(select(model).where(*where).order_by(model.id)))


def the_patient(rt: Runtime) -> Patient:
    [patient] = rows(rt, Patient)
    assert isinstance(patient, Patient)
    return patient


def emails(rt: Runtime) -> list[Reminder]:
    return rows(rt, Reminder, Reminder.channel == "email", Reminder.state != states.SKIPPED)


def failure_flags(rt: Runtime) -> list[Flag]:
    return rows(rt, Flag, Flag.kind == "delivery_failed")


def test_permanent_sms_failure_then_flagged_number_blocked_and_email_sent_once(
    runtime: Runtime, clock: FixedClock
) -> None:
    [sms_id] = daily_wear_due(runtime, clock)
    deps = failing_sms(runtime, INVALID_NUMBER)
    assert deliver_all(runtime, [sms_id], deps) == [states.FAILED]

    patient = the_patient(runtime)
    assert (patient.sms_blocked_at, patient.sms_blocked_reason) == (clock.now(), "21211")
    assert patient.sms_opted_out_at is None
    [flag] = failure_flags(runtime)
    assert (flag.reminder_id, flag.urgent) == (sms_id, False)
    assert "21211" in flag.text
    assert "+44" not in flag.text  # the provider's message is not copied into the flag
    [email] = emails(runtime)
    assert (email.step, email.occurrence, email.fallback_of_id) == ("daily-wear", 0, sms_id)
    assert (email.state, email.due_at) == (states.SCHEDULED, clock.now())
    [audit] = rows(runtime, AuditEvent, AuditEvent.action == "sms_blocked")
    assert audit.detail == {"code": "21211"}

    # The same failure reported again (as a late "undelivered" callback would).
    with runtime.db.session() as s:
        again = after_failure(
            db_session=s, reminder_id=sms_id, now=clock.now(), code="30005", cause="undelivered"
        )
    assert again is None
    for _ in range(2):
        deliver_all(runtime, claim_all(runtime), deps)
    assert sent_log(runtime, "email") == [f"reminder-{email.id}"]
    assert sent_log(runtime, "sms") == []
    assert len(failure_flags(runtime)) == 1
    assert len(emails(runtime)) == 1
    assert rows(runtime, Reminder, Reminder.id == email.id)[0].state == states.SENT


def test_sms_only_patient_with_an_email_address_then_email_fallback_still_sent(
    runtime: Runtime, clock: FixedClock
) -> None:
    [sms_id] = daily_wear_due(runtime, clock, channels=("sms",))
    deliver_all(runtime, [sms_id], failing_sms(runtime, INVALID_NUMBER))
    deliver_all(runtime, claim_all(runtime))
    [email] = emails(runtime)
    assert email.state == states.SENT
    assert sent_log(runtime, "email") == [f"reminder-{email.id}"]


def test_failed_sms_when_step_already_has_an_email_version_then_no_second_email(
    runtime: Runtime,
) -> None:
    enrol(runtime)  # the welcome goes by SMS and by email
    ids = claim_all(runtime)
    deliver_all(runtime, ids, failing_sms(runtime, INVALID_NUMBER))
    welcome_emails = rows(
        runtime, Reminder, Reminder.channel == "email", Reminder.step == "welcome"
    )
    assert len(welcome_emails) == 1
    assert welcome_emails[0].fallback_of_id is None
    [flag] = failure_flags(runtime)
    assert "planned as well" in flag.text


def test_failed_sms_without_email_address_then_flagged_with_no_fallback(
    runtime: Runtime, clock: FixedClock
) -> None:
    [sms_id] = daily_wear_due(runtime, clock, channels=("sms",), email=None)
    deliver_all(runtime, [sms_id], failing_sms(runtime, INVALID_NUMBER))
    assert emails(runtime) == []
    [flag] = failure_flags(runtime)
    assert "no email address" in flag.text


def test_failed_sms_when_patient_unsubscribed_from_email_then_no_fallback(
    runtime: Runtime, clock: FixedClock
) -> None:
    [sms_id] = daily_wear_due(runtime, clock)
    with runtime.db.session() as s:
        s.execute(update(Patient).values(email_opted_out_at=clock.now()))
    deliver_all(runtime, [sms_id], failing_sms(runtime, INVALID_NUMBER))
    assert emails(runtime) == []
    assert len(failure_flags(runtime)) == 1


def test_provider_says_opted_out_then_consent_withdrawn_not_blocked_and_no_email(
    runtime: Runtime, clock: FixedClock
) -> None:
    [sms_id] = daily_wear_due(runtime, clock)
    opted_out = TransportError("unsubscribed", permanent=True, code="21610", opted_out=True)
    assert deliver_all(runtime, [sms_id], failing_sms(runtime, opted_out)) == [states.FAILED]
    patient = the_patient(runtime)
    assert (patient.sms_opted_out_at, patient.sms_opt_out_source) == (
        clock.now(),
        "provider:21610",
    )
    assert patient.sms_blocked_at is None
    assert emails(runtime) == []
    assert len(rows(runtime, AuditEvent, AuditEvent.action == "opt_out")) == 1
    assert len(failure_flags(runtime)) == 1


def test_permanent_error_not_about_the_number_then_email_sent_but_sms_not_blocked(
    runtime: Runtime, clock: FixedClock
) -> None:
    # 21408: the clinic's account may not text that country. The number is not wrong, so it is
    # not blocked (staff would be asked to fix numbers that were never wrong).
    [sms_id] = daily_wear_due(runtime, clock)
    config = TransportError("region not enabled", permanent=True, code="21408")
    deliver_all(runtime, [sms_id], failing_sms(runtime, config))
    assert the_patient(runtime).sms_blocked_at is None
    assert len(emails(runtime)) == 1
    assert len(failure_flags(runtime)) == 1


def test_transient_errors_until_attempts_run_out_then_flagged_and_email_sent(
    runtime: Runtime, clock: FixedClock
) -> None:
    ids = daily_wear_due(runtime, clock)
    busy = TransportError("busy", permanent=False, code="20429")
    deps = failing_sms(runtime, *[busy] * MAX_ATTEMPTS)
    outcomes = deliver_all(runtime, ids, deps)
    for attempt in range(1, MAX_ATTEMPTS):
        # The longest backoff after this attempt (30 minutes flaked: the 7th waits up to 32).
        clock.advance(min(CAP, BASE * 2 ** (attempt - 1)))
        outcomes += deliver_all(runtime, claim_all(runtime), deps)
    assert outcomes == ["retry"] * (MAX_ATTEMPTS - 1) + [states.FAILED]
    assert the_patient(runtime).sms_blocked_at is None  # busy is not a bad number
    assert len(emails(runtime)) == 1
    assert len(failure_flags(runtime)) == 1


def test_blocked_number_then_later_sms_cancelled_and_their_email_versions_sent(
    runtime: Runtime, clock: FixedClock
) -> None:
    enrol(runtime, channels=("sms",))
    keep_only(runtime, "daily-wear")
    clock.advance(timedelta(days=3, hours=22))
    deps = failing_sms(runtime, INVALID_NUMBER)
    deliver_all(runtime, claim_all(runtime), deps)  # day 1 fails: the number is blocked
    deliver_all(runtime, claim_all(runtime), deps)  # day 1's email
    clock.advance(timedelta(days=1))
    deliver_all(runtime, claim_all(runtime), deps)  # day 2's SMS is held, its email planned
    deliver_all(runtime, claim_all(runtime), deps)
    days = [(r.occurrence, r.state) for r in emails(runtime)]
    assert days == [(0, states.SENT), (1, states.SENT)]
    [day_2_sms] = rows(
        runtime,
        Reminder,
        Reminder.channel == "sms",
        Reminder.step == "daily-wear",
        Reminder.occurrence == 1,
    )
    assert day_2_sms.state == states.CANCELLED
    assert sent_log(runtime, "sms") == []
    assert len(failure_flags(runtime)) == 1  # staff fix the number once


def test_undelivered_after_the_session_was_cancelled_then_no_email_instead(
    runtime: Runtime, clock: FixedClock
) -> None:
    [sms_id] = daily_wear_due(runtime, clock)
    assert deliver_all(runtime, [sms_id]) == [states.SENT]
    with runtime.db.session() as s:
        s.execute(update(TreatmentSession).values(status="cancelled"))
    with runtime.db.session() as s:
        provider_id = s.scalars(
            select(DeliveryAttempt.provider_id).where(DeliveryAttempt.reminder_id == sms_id)
        ).one()
        outcome = apply_status(
            db_session=s,
            provider_id=str(provider_id),
            status="undelivered",
            error_code="30003",
            now=clock.now(),
        )
    assert outcome == "updated"
    assert emails(runtime) == []
    assert len(failure_flags(runtime)) == 1
