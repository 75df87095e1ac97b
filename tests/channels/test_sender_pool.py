"""A pool of Twilio numbers (``AFTERCARE_TWILIO_FROM`` as a comma-separated list): each patient
always texted from the same number, each number paced on its own, against the fake Twilio."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from aftercare.channels.base import SmsMessage, TransportError
from aftercare.channels.twilio.ratelimit import LocalRateLimiter
from aftercare.channels.twilio.senders import parse_senders, pick_sender
from aftercare.channels.twilio.transport import TwilioTransport
from aftercare.cli.main import cli
from aftercare.clock import FixedClock
from aftercare.reminders import delivery, states
from aftercare.runtime import Runtime, set_runtime
from aftercare.settings import Settings
from aftercare.storage.models import DeliveryAttempt, Reminder
from tests.channels.test_twilio import PUBLIC_URL, twilio_runtime
from tests.factories import enrol
from tests.fakes.twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio, window_counts
from tests.reminders.test_delivery import claim_all, keep_only

POOL = ("+15005550006", "+15005550007", "+15005550008")
PHONES = [f"+4479111230{i:02d}" for i in range(30)]
NOW = datetime(2026, 3, 20, 10, 0, tzinfo=UTC)  # 10:00 in London: not quiet hours


def test_parse_when_one_sender_then_kept_exactly_as_given() -> None:
    assert parse_senders("+15005550006") == ("+15005550006",)
    assert parse_senders("RIVERSIDE") == ("RIVERSIDE",)  # an alphanumeric sender ID, as before
    assert parse_senders("") == ()


def test_parse_when_a_list_then_every_number_in_order() -> None:
    assert parse_senders("+15005550006, +15005550007,+15005550008") == POOL


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("+15005550006,07700900123", "entry 2 ('07700900123')"),
        ("+15005550006,RIVERSIDE", "entry 2 ('RIVERSIDE')"),
        ("+15005550006,,+15005550007", "entry 2 of the list is empty"),
        ("+15005550006,", "entry 2 of the list is empty"),
        ("+15005550006,+15005550006", "+15005550006 is listed twice"),
    ],
)
def test_parse_when_an_entry_is_bad_then_the_error_names_it(value: str, named: str) -> None:
    with pytest.raises(ValueError, match="AFTERCARE_TWILIO_FROM") as caught:
        parse_senders(value)
    assert named in str(caught.value)
    with pytest.raises(ValueError, match="AFTERCARE_TWILIO_FROM"):
        Settings(twilio_from=value)


def test_check_when_a_pool_entry_is_bad_then_fails_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("AFTERCARE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    set_runtime(None)
    try:
        result = CliRunner().invoke(
            cli,
            ["check"],
            env={
                "AFTERCARE_DATA_DIR": str(tmp_path / "data"),
                "AFTERCARE_SMS_TRANSPORT": "twilio",
                "AFTERCARE_TWILIO_FROM": "+15005550006,+1 500 555 0007",
            },
        )
    finally:
        set_runtime(None)
    assert result.exit_code != 0
    assert "entry 2 ('+1 500 555 0007')" in result.output


def test_pick_when_same_number_then_same_sender_in_every_process() -> None:
    picks = {phone: pick_sender(POOL, phone) for phone in PHONES}
    assert set(picks.values()) == set(POOL)  # the pool is used, not one number
    # Stable: sha256, not Python's per-process hash (PYTHONHASHSEED); fixed values.
    assert pick_sender(POOL, "+447911123456") == pick_sender(POOL, "+447911123456")
    assert [pick_sender(POOL, p) for p in PHONES[:3]] == [picks[p] for p in PHONES[:3]]
    assert pick_sender(("+15005550006",), "+447911123456") == "+15005550006"


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as server:
        yield server


def pool_transport(fake: FakeTwilio, *, mps: float = 5) -> TwilioTransport:
    return TwilioTransport(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        from_=",".join(POOL),
        status_callback=f"{PUBLIC_URL}/webhooks/twilio/status",
        api_base=fake.url,
        limiter=LocalRateLimiter(mps=mps),
    )


def test_send_when_pool_then_each_patient_always_from_the_same_number(fake: FakeTwilio) -> None:
    transport = pool_transport(fake, mps=1000)
    for round_ in range(2):
        for i, phone in enumerate(PHONES):
            transport.send(SmsMessage(key=f"reminder-{round_}-{i}", to=phone, body="Hello"))
    by_patient: dict[str, set[str | None]] = {}
    for received in fake.received:
        assert received.answer == "201"
        by_patient.setdefault(received.to or "", set()).add(received.from_)
    assert by_patient == {phone: {pick_sender(POOL, phone)} for phone in PHONES}


def test_lookup_when_sent_from_a_pool_number_then_found(fake: FakeTwilio) -> None:
    transport = pool_transport(fake, mps=1000)
    phone = PHONES[0]
    message = SmsMessage(key="reminder-1", to=phone, body="Hello from the pool")
    sent = transport.send(message)
    found = transport.lookup(message, since=datetime.now(UTC))
    assert found is not None
    assert found.provider_id == sent.provider_id
    other = SmsMessage(key="reminder-2", to=PHONES[1], body="Hello from the pool")
    assert transport.lookup(other, since=datetime.now(UTC)) is None


def test_send_when_pool_then_each_number_paced_at_the_mps() -> None:
    """The fake answers 429 to a sender above 5 per second: none of 30 SMS over three numbers
    at AFTERCARE_SMS_MPS=5 is refused, and each number is held to its own limit."""
    with FakeTwilio(mps=5) as limited:
        transport = pool_transport(limited, mps=5)
        for i, phone in enumerate(PHONES):
            try:
                transport.send(SmsMessage(key=f"reminder-{i}", to=phone, body="Hello"))
            except TransportError as exc:
                pytest.fail(f"refused: {exc.code}")
    assert [r.answer for r in limited.received] == ["201"] * len(PHONES)
    for sender in POOL:
        assert max(window_counts([r.at for r in limited.received if r.from_ == sender])) <= 5


def test_delivery_when_pool_then_a_batch_goes_out_concurrently_and_recorded(
    tmp_path: Path, database_url: str
) -> None:
    clock = FixedClock(NOW)
    with (
        FakeTwilio(clock=clock.now) as server,
        twilio_runtime(
            tmp_path, database_url, server, clock, twilio_from=",".join(POOL), sms_mps="1000"
        ) as rt,
    ):
        for i, phone in enumerate(PHONES[:12]):
            enrol(rt, now=NOW, name=f"Patient {i}", phone=phone, email=None, channels=("sms",))
        keep_only(rt, "welcome")
        ids = claim_all(rt)
        assert len(ids) == 12
        outcomes = delivery.deliver_batch(deps=rt.delivery_deps(), reminder_ids=ids)
        assert outcomes == [states.SENT] * 12
        with rt.db.session() as s:
            sids = dict(
                s.execute(select(DeliveryAttempt.reminder_id, DeliveryAttempt.provider_id)).all()
            )
            assert set(s.scalars(select(Reminder.state).where(Reminder.id.in_(ids)))) == {
                states.SENT
            }
    assert sorted(sids.values()) == sorted(r.sid for r in server.received if r.sid)
    assert sorted(r.to or "" for r in server.received) == sorted(PHONES[:12])
    assert {r.to: r.from_ for r in server.received} == {
        phone: pick_sender(POOL, phone) for phone in PHONES[:12]
    }


@pytest.mark.parametrize("pool_number", POOL)
def test_reply_to_any_pool_number_then_handled_for_the_patient(
    runtime: Runtime, clock: FixedClock, pool_number: str
) -> None:
    """Replies arrive at whichever pool number texted the patient: STOP to any of them
    withdraws the patient's SMS consent (the webhook goes by ``From``, not ``To``)."""
    from fastapi.testclient import TestClient

    from aftercare.web.app import create_app
    from tests.factories import PATIENT_PHONE
    from tests.inbound.test_inbound import AUTH_TOKEN, PUBLIC, patient
    from tests.inbound.test_inbound import FakeTwilio as Webhooks

    runtime.settings = runtime.settings.model_copy(
        update={
            "twilio_auth_token": AUTH_TOKEN,
            "public_base_url": PUBLIC,
            "twilio_from": ",".join(POOL),
        }
    )
    enrol(runtime)
    with TestClient(create_app(runtime)) as client:
        webhooks = Webhooks(client)
        params = webhooks.sms_params("STOP", sender=PATIENT_PHONE)
        params["To"] = pool_number
        response = webhooks.post("/webhooks/twilio/inbound", params)
    assert response.status_code == 200
    assert patient(runtime).sms_opted_out_at == clock.now()


def test_pool_when_a_number_is_added_or_removed_then_only_its_patients_move() -> None:
    """Rendezvous hashing: a 21st number takes about one patient in 21 and moves nobody else;
    removing a number moves only the patients it texted."""
    pool = tuple(f"+1500555{i:04d}" for i in range(20))
    phones = [f"+4479111{i:05d}" for i in range(4_000)]
    before = {phone: pick_sender(pool, phone) for phone in phones}
    added = "+15005550020"
    after = {phone: pick_sender((*pool, added), phone) for phone in phones}
    moved = [phone for phone in phones if after[phone] != before[phone]]
    assert all(after[phone] == added for phone in moved)
    assert 4_000 / 21 * 0.7 < len(moved) < 4_000 / 21 * 1.3
    removed = pool[3]
    smaller = tuple(sender for sender in pool if sender != removed)
    for phone in phones:
        if before[phone] != removed:
            assert pick_sender(smaller, phone) == before[phone]
        else:
            assert pick_sender(smaller, phone) in smaller
    counts = Counter(before.values())
    assert set(counts) == set(pool)
    assert max(counts.values()) < 4_000 / 20 * 1.3  # spread evenly enough
