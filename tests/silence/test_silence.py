"""Silence detection, on SQLite and PostgreSQL with the injected clock: a safety-critical message
that failed (by the provider's error or by the signed status callback) is an urgent flag; a
check-in unanswered for the regimen's number of days, or not texted because the patient had
opted out, is an info flag. Each is raised once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from aftercare.channels.base import TransportError
from aftercare.clock import FixedClock
from aftercare.regimens.loader import RegimenError, parse_regimen
from aftercare.regimens.model import Regimen
from aftercare.reminders import states
from aftercare.runtime import Runtime
from aftercare.silence.checkins import find_silent_checkins
from aftercare.storage.models import DeliveryAttempt, Flag, Reminder, TreatmentSession
from aftercare.web.app import create_app
from aftercare.worker import tasks
from aftercare.worker.celeryconfig import DISPATCH_QUEUE, SILENCE_INTERVAL, celery_settings
from tests.conftest import REPO, _truncate, make_settings
from tests.factories import enrol
from tests.inbound.test_inbound import AUTH_TOKEN, PUBLIC, FakeTwilio
from tests.reminders.test_delivery import EdgeTransport, claim_all, deliver_all, keep_only
from tests.web.test_api import add_staff

SHIPPED = REPO / "schedules" / "micro-sclerotherapy.yaml"


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


def regimen(rt: Runtime) -> Regimen:
    return rt.registry.get("micro-sclerotherapy")


def critical_step(rt: Runtime) -> str:
    """The step the regimen declares critical (the tests do not name it either)."""
    [step] = [s.id for s in regimen(rt).steps if s.critical]
    return step


def checkin_step(rt: Runtime) -> tuple[str, int]:
    checkin = regimen(rt).checkin
    assert checkin is not None
    [step] = checkin.steps
    return step, checkin.unanswered_after_days


def flags_of(rt: Runtime, kind: str) -> list[Flag]:
    with rt.db.session() as s:
        return list(s.scalars(select(Flag).where(Flag.kind == kind).order_by(Flag.id)))


def find(rt: Runtime) -> dict[str, int]:
    with rt.db.session() as s:
        return find_silent_checkins(
            db_session=s, registry=rt.registry, now=rt.clock.now()
        ).as_dict()


def send_sms(rt: Runtime, step: str, **enrol_args: Any) -> tuple[int, str]:
    """Enrol, play time forward to ``step``'s SMS and send it through the real outbox; returns
    (reminder id, provider SID)."""
    enrol(rt, **enrol_args)
    keep_only(rt, step)
    with rt.db.session() as s:
        s.execute(update(Reminder).where(Reminder.channel == "email").values(state=states.SKIPPED))
        due = s.scalar(
            select(Reminder.due_at).where(Reminder.step == step, Reminder.state == states.SCHEDULED)
        )
    assert due is not None
    rt.clock.set(due)  # type: ignore[attr-defined]
    [reminder_id] = claim_all(rt)
    assert deliver_all(rt, [reminder_id]) == [states.SENT]
    with rt.db.session() as s:
        sid = s.scalar(
            select(DeliveryAttempt.provider_id).where(DeliveryAttempt.reminder_id == reminder_id)
        )
    assert sid
    return reminder_id, sid


def ask_checkin(rt: Runtime, clock: FixedClock) -> None:
    """Play the session forward until its check-in question has gone out on every channel."""
    step, _days = checkin_step(rt)
    keep_only(rt, step)
    with rt.db.session() as s:
        due = s.scalar(select(Reminder.due_at).where(Reminder.step == step))
    assert due is not None
    clock.set(due)
    assert set(deliver_all(rt, claim_all(rt))) == {states.SENT}


# --- The regimen declares it -----------------------------------------------------------------


def test_shipped_regimen_declares_one_critical_step_and_its_checkin(runtime: Runtime) -> None:
    step, days = checkin_step(runtime)
    assert step in {s.id for s in regimen(runtime).steps}
    assert 1 <= days <= 60
    assert critical_step(runtime)


@pytest.mark.parametrize(
    ("block", "where"),
    [
        ("check_in:\n  unanswered_after_days: 0\n", "unanswered_after_days"),
        ("check_in:\n  unanswered_after_days: -3\n", "unanswered_after_days"),
        ("check_in:\n  unanswered_after_days: '14'\n", "unanswered_after_days"),
        ("check_in:\n  unanswered_after_days: true\n", "unanswered_after_days"),
        ("check_in:\n  unanswered_after_days: 400\n", "unanswered_after_days"),
        ("check_in:\n  step: checkin\n  unanswered_after_days: 14\n", "check_in.step"),
        ("check_in:\n  unanswered_after_days: 14\n  soon: 1\n", "check_in.soon"),
        ("check_in: 14\n", "check_in"),
    ],
    ids=[
        "zero",
        "negative",
        "text",
        "boolean",
        "too-long",
        "step-named-here",
        "extra",
        "bare",
    ],
)
def test_loader_refuses_a_bad_checkin_setting_naming_the_key(block: str, where: str) -> None:
    shipped = SHIPPED.read_text(encoding="utf-8")
    head, _sep, _old = shipped.partition("\ncheck_in:\n")
    with pytest.raises(RegimenError) as caught:
        parse_regimen(head + "\n" + block, file="r.yaml")
    assert where in str(caught.value)
    assert caught.value.line is not None


def test_check_command_refuses_a_bad_checkin_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from aftercare.cli.main import cli

    schedules = tmp_path / "schedules"
    (schedules / "triage").mkdir(parents=True)
    for path in (REPO / "schedules" / "triage").iterdir():
        (schedules / "triage" / path.name).write_bytes(path.read_bytes())
    shipped = SHIPPED.read_text(encoding="utf-8")
    assert shipped.count("unanswered_after_days: 14") == 1
    target = schedules / SHIPPED.name
    target.write_text(shipped.replace("unanswered_after_days: 14", "unanswered_after_days: 0"))
    monkeypatch.setenv("AFTERCARE_SCHEDULES_DIR", str(schedules))
    monkeypatch.setenv("AFTERCARE_DATA_DIR", str(tmp_path / "data"))

    result = CliRunner().invoke(cli, ["check"])

    assert result.exit_code != 0
    assert f"{target}" in result.stderr
    assert "check_in.unanswered_after_days: must be a positive whole number" in result.stderr


# --- A critical message that did not arrive --------------------------------------------------


@pytest.mark.parametrize("sequence", [["undelivered"], ["failed"], ["undelivered", "failed"]])
def test_critical_sms_reported_undelivered_by_signed_callback_then_one_urgent_flag(
    rt: Runtime, twilio: FakeTwilio, sequence: list[str]
) -> None:
    reminder_id, sid = send_sms(rt, critical_step(rt))
    for status in [*sequence, *sequence]:  # Twilio retries a callback: still one flag
        assert twilio.status(sid, status, "30003").status_code == 200

    [flag] = flags_of(rt, "critical_undelivered")
    assert (flag.reminder_id, flag.severity, flag.urgent) == (reminder_id, "urgent", True)
    assert flag.patient_id is not None
    assert flag.session_id is not None
    assert "safety-critical" in flag.text
    # One flag for staff, the urgent one, not a routine "delivery failed" as well.
    assert flags_of(rt, "delivery_failed") == []


def test_critical_sms_callback_with_a_bad_signature_then_403_and_no_flag(
    rt: Runtime, twilio: FakeTwilio
) -> None:
    _reminder_id, sid = send_sms(rt, critical_step(rt))
    params = {"MessageSid": sid, "MessageStatus": "undelivered", "ErrorCode": "30003"}
    assert twilio.post("/webhooks/twilio/status", params, signature="bad").status_code == 403
    assert flags_of(rt, "critical_undelivered") == []


def test_critical_sms_delivered_then_no_flag(rt: Runtime, twilio: FakeTwilio) -> None:
    _reminder_id, sid = send_sms(rt, critical_step(rt))
    assert twilio.status(sid, "delivered").status_code == 200
    assert flags_of(rt, "critical_undelivered") == []


def test_non_critical_sms_undelivered_then_routine_flag_not_urgent(
    rt: Runtime, twilio: FakeTwilio
) -> None:
    [other] = [s.id for s in regimen(rt).steps if not s.critical][:1]
    _reminder_id, sid = send_sms(rt, other)
    twilio.status(sid, "undelivered", "30003")
    assert flags_of(rt, "critical_undelivered") == []
    [flag] = flags_of(rt, "delivery_failed")
    assert flag.urgent is False


def test_critical_email_refused_by_provider_then_one_urgent_flag(rt: Runtime) -> None:
    enrol(rt, channels=("email",), phone=None)
    step = critical_step(rt)
    keep_only(rt, step)
    with rt.db.session() as s:
        s.execute(update(Reminder).values(due_at=rt.clock.now()))
    deps = rt.delivery_deps()
    edge = EdgeTransport(deps.transports["email"])
    edge.fail_with = [TransportError("no such mailbox", permanent=True, code="550")]
    deps.transports["email"] = edge

    assert deliver_all(rt, claim_all(rt), deps) == [states.FAILED]

    [flag] = flags_of(rt, "critical_undelivered")
    assert (flag.severity, flag.urgent) == ("urgent", True)
    assert "provider error 550" in flag.text


# --- A check-in nobody answered --------------------------------------------------------------


def test_checkin_unanswered_for_the_regimen_days_then_one_info_flag(
    rt: Runtime, clock: FixedClock
) -> None:
    session_id = enrol(rt)
    ask_checkin(rt, clock)
    _step, days = checkin_step(rt)

    clock.advance(timedelta(days=days) - timedelta(minutes=1))
    assert find(rt) == {"unanswered": 0, "opted_out": 0}
    clock.advance(timedelta(minutes=1))
    assert find(rt) == {"unanswered": 1, "opted_out": 0}
    clock.advance(timedelta(days=3))
    assert find(rt) == {"unanswered": 0, "opted_out": 0}  # once per session

    [flag] = flags_of(rt, "checkin_unanswered")
    assert (flag.session_id, flag.severity, flag.urgent) == (session_id, "info", False)
    assert flag.created_at == clock.now() - timedelta(days=3)


def test_checkin_answered_by_text_then_no_flag(
    rt: Runtime, twilio: FakeTwilio, clock: FixedClock
) -> None:
    enrol(rt)
    ask_checkin(rt, clock)
    assert twilio.sms("1").status_code == 200
    clock.advance(timedelta(days=checkin_step(rt)[1] + 1))
    assert find(rt)["unanswered"] == 0
    assert flags_of(rt, "checkin_unanswered") == []


def test_checkin_of_a_cancelled_session_then_no_flag(rt: Runtime, clock: FixedClock) -> None:
    session_id = enrol(rt)
    ask_checkin(rt, clock)
    with rt.db.session() as s:
        s.get_one(TreatmentSession, session_id).status = "cancelled"
    clock.advance(timedelta(days=checkin_step(rt)[1] + 1))
    assert find(rt)["unanswered"] == 0


def test_checkin_not_yet_sent_then_no_flag(rt: Runtime, clock: FixedClock) -> None:
    enrol(rt)
    clock.advance(timedelta(weeks=20))  # nothing delivered: nothing was asked
    assert find(rt) == {"unanswered": 0, "opted_out": 0}


# --- A patient who opted out of SMS before their check-in ------------------------------------


def test_opted_out_before_checkin_then_one_info_flag_saying_the_email_went(
    rt: Runtime, twilio: FakeTwilio, clock: FixedClock
) -> None:
    session_id = enrol(rt)
    assert twilio.sms("STOP").status_code == 200
    step, _days = checkin_step(rt)
    keep_only(rt, step)
    with rt.db.session() as s:
        nominal = s.scalar(select(Reminder.nominal_at).where(Reminder.step == step))
    assert nominal is not None

    clock.set(nominal - timedelta(minutes=1))
    assert find(rt)["opted_out"] == 0  # not yet the check-in's time
    clock.set(nominal)
    deliver_all(rt, claim_all(rt))  # the SMS is held back, the email goes
    assert find(rt)["opted_out"] == 1
    clock.advance(timedelta(hours=1))
    assert find(rt)["opted_out"] == 0

    [flag] = flags_of(rt, "opted_out_before_checkin")
    assert (flag.session_id, flag.severity, flag.urgent) == (session_id, "info", False)
    assert "email version was sent" in flag.text


def test_opted_out_sms_only_patient_then_flag_says_nothing_else_went(
    rt: Runtime, twilio: FakeTwilio, clock: FixedClock
) -> None:
    enrol(rt, channels=("sms",))
    twilio.sms("STOP")
    clock.advance(timedelta(weeks=14))
    assert find(rt)["opted_out"] == 1
    [flag] = flags_of(rt, "opted_out_before_checkin")
    assert "No other version has been sent" in flag.text


def test_opted_out_then_back_in_before_checkin_then_no_flag(
    rt: Runtime, twilio: FakeTwilio, clock: FixedClock
) -> None:
    enrol(rt)
    twilio.sms("STOP")
    twilio.sms("START")
    clock.advance(timedelta(weeks=14))
    assert find(rt)["opted_out"] == 0


# --- The beat task -----------------------------------------------------------------------------


def test_silence_task_takes_no_arguments_and_flags_through_the_runtime(
    rt: Runtime, clock: FixedClock
) -> None:
    enrol(rt)
    ask_checkin(rt, clock)
    clock.advance(timedelta(days=checkin_step(rt)[1]))
    assert tasks.find_silence() == {"unanswered": 1, "opted_out": 0}
    assert tasks.find_silence() == {"unanswered": 0, "opted_out": 0}


def test_beat_asks_for_silence_detection_on_the_dispatch_queue(tmp_path: Path) -> None:
    conf = celery_settings(make_settings(tmp_path))
    entry = conf["beat_schedule"]["find-silent-checkins"]
    assert entry["task"] == "aftercare.silence"
    assert entry["schedule"] == SILENCE_INTERVAL
    assert conf["task_routes"]["aftercare.silence"] == {"queue": DISPATCH_QUEUE}


# --- What staff see -----------------------------------------------------------------------------


def test_silence_flags_are_listed_by_the_api_urgent_first_with_their_kinds(
    rt: Runtime, twilio: FakeTwilio, clock: FixedClock
) -> None:
    enrol(rt)
    ask_checkin(rt, clock)
    clock.advance(timedelta(days=checkin_step(rt)[1]))
    assert find(rt)["unanswered"] == 1
    _reminder_id, sid = send_sms(rt, critical_step(rt), name="Other Patient", phone="07912 345678")
    twilio.status(sid, "undelivered", "30003")
    _nurse_id, token = add_staff(rt, "nurse@example.org", "staff")

    response = twilio.client.get("/api/v1/flags", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 200
    assert [(f["kind"], f["severity"]) for f in response.json()] == [
        ("critical_undelivered", "urgent"),
        ("checkin_unanswered", "info"),
    ]


@pytest.fixture
def pg_runtime(tmp_path: Path, pg_url: str, clock: FixedClock) -> Iterator[Runtime]:
    rt = Runtime(make_settings(tmp_path, database_url=pg_url))
    rt.clock = clock
    yield rt
    _truncate(rt.db)
    rt.db.dispose()


def test_two_passes_at_once_on_postgres_flag_a_session_once(
    pg_runtime: Runtime, clock: FixedClock
) -> None:
    rt = pg_runtime
    enrol(rt)
    ask_checkin(rt, clock)
    clock.advance(timedelta(days=checkin_step(rt)[1]))
    results: list[dict[str, int]] = []
    with rt.db.session() as first:
        summary = find_silent_checkins(db_session=first, registry=rt.registry, now=clock.now())
        assert summary.as_dict() == {"unanswered": 1, "opted_out": 0}
        # A second pass starts while the first has not committed: it must wait for the
        # session's row lock, then see the first pass's flag.
        second = threading.Thread(target=lambda: results.append(find(rt)))
        second.start()
        waiting = False
        for _ in range(1000):
            waiting = bool(
                first.connection()
                .exec_driver_sql(
                    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                    " WHERE NOT l.granted AND a.datname = current_database()"
                )
                .scalar()
            )
            if waiting:
                break
            second.join(timeout=0.01)
        assert waiting, "the second pass never waited for the first"
    second.join(timeout=30)
    assert results == [{"unanswered": 0, "opted_out": 0}]
    assert len(flags_of(rt, "checkin_unanswered")) == 1
