"""End to end: on-call paging through real worker and beat processes, PostgreSQL + Redis, and
the fake Twilio. Two staff are on call; an emergency reply pages the first within seconds and,
when nobody acknowledges, the second once AFTERCARE_ESCALATE_AFTER has passed on the shared
file clock; a flag acknowledged with "I'm calling" pages nobody else; no page, email page or log
line carries patient data."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import timedelta
from functools import partial

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from aftercare.oncall import pages as p
from aftercare.oncall.rota import put_on_call
from aftercare.runtime import Runtime, set_runtime
from aftercare.settings import Settings
from aftercare.storage.models import Flag, Page, StaffUser
from aftercare.web.app import create_app
from tests.factories import PATIENT_EMAIL, PATIENT_NAME, PATIENT_PHONE, enrol
from tests.fakes.twilio import AUTH_TOKEN, FakeTwilio
from tests.faults.harness import PUBLIC_URL, twilio_env, wait_for
from tests.inbound.test_inbound import FakeTwilio as Webhooks
from tests.stacks import TREATED, Stack, start_aftercare
from tests.web.test_pages import CSRF, log_in
from tests.web.test_pages import add_staff as add_page_staff

pytestmark = pytest.mark.e2e

FIRST, SECOND = "first.oncall@example.org", "second.oncall@example.org"
FIRST_PHONE, SECOND_PHONE = "+447911000111", "+447911000222"
OTHER_PATIENT = ("Second Patient", "07912 345678", "+447912345678", "second.patient@example.org")
PATIENT_DATA = [
    PATIENT_NAME,
    PATIENT_NAME.split()[0],
    PATIENT_PHONE,
    "7911123456",
    PATIENT_EMAIL,
    *OTHER_PATIENT,
    "7912345678",
    "breathe",
    "calf",
    "swollen",
]
ESCALATE_AFTER = timedelta(seconds=900)


@pytest.fixture
def paging(pg_redis_stack: Stack) -> Iterator[tuple[Stack, FakeTwilio, Runtime]]:
    """The stack with SMS through the fake Twilio, two staff on call, two patients enrolled."""
    stack = pg_redis_stack
    with FakeTwilio(clock=stack.clock.now) as fake:
        stack.env.update(twilio_env(fake))
        rt = Runtime(Settings.from_environment(stack.env))
        rt.clock = stack.clock
        for email, phone in ((FIRST, FIRST_PHONE), (SECOND, SECOND_PHONE)):
            add_page_staff(rt, email, "staff")
            with rt.db.session() as s:
                put_on_call(db_session=s, email=email, phone=phone, now=rt.clock.now())
        set_runtime(rt)
        try:
            enrol(rt, now=TREATED)
            name, local, _, email = OTHER_PATIENT
            enrol(rt, now=TREATED, name=name, phone=local, email=email)
        finally:
            set_runtime(None)
        yield stack, fake, rt
        rt.db.dispose()


def _pages_to(fake: FakeTwilio, phone: str) -> list[str]:
    return [m.body for m in fake.stored() if m.to == phone]


def _count_at_least(fake: FakeTwilio, phone: str, count: int) -> bool:
    return len(_pages_to(fake, phone)) >= count


def _paged(rt: Runtime, flag_id: int) -> list[tuple[str, str, str]]:
    with rt.db.session() as s:
        rows = s.execute(
            select(StaffUser.email, Page.channel, Page.state)
            .join(StaffUser, StaffUser.id == Page.staff_id)
            .where(Page.flag_id == flag_id)
            .order_by(Page.id)
        ).all()
    return [(e, c, st) for e, c, st in rows]


def test_emergency_pages_first_then_escalates_to_second_and_an_acknowledged_flag_pages_no_one(
    paging: tuple[Stack, FakeTwilio, Runtime],
    processes: list[subprocess.Popen[bytes]],
) -> None:
    stack, fake, rt = paging
    processes.append(start_aftercare(stack, "worker", name="worker"))
    processes.append(start_aftercare(stack, "beat", name="beat"))
    with TestClient(create_app(rt), base_url=PUBLIC_URL, follow_redirects=False) as client:
        webhooks = Webhooks(client, token=AUTH_TOKEN)
        assert "999" in webhooks.sms("I suddenly can't breathe", sender=PATIENT_PHONE).text
        assert "111" in webhooks.sms("my calf is swollen and painful", sender=OTHER_PATIENT[2]).text
        with rt.db.session() as s:
            emergency, urgent = s.scalars(select(Flag).order_by(Flag.id)).all()
            assert (emergency.severity, urgent.severity) == ("emergency", "urgent")

        # Within seconds (of real time; the clock has not moved): the first on call, once each.
        wait_for(partial(_count_at_least, fake, FIRST_PHONE, 2), timeout=60, what="two pages")
        assert _pages_to(fake, SECOND_PHONE) == []

        # The first on call takes the urgent one: "I'm calling" on its page.
        assert log_in(client, FIRST).status_code == 303
        flag_page = client.get(f"/flags/{urgent.id}")
        token = CSRF.search(flag_page.text)
        assert token is not None
        done = client.post(f"/flags/{urgent.id}/acknowledge", data={"csrf_token": token.group(1)})
        assert "you are calling back" in done.text

    # Nobody acknowledged the emergency: once ESCALATE_AFTER has passed, the second on call.
    stack.clock.set(TREATED + ESCALATE_AFTER + timedelta(seconds=1))
    wait_for(partial(_count_at_least, fake, SECOND_PHONE, 1), timeout=60, what="escalation")

    first_sms = _pages_to(fake, FIRST_PHONE)
    second_sms = _pages_to(fake, SECOND_PHONE)
    assert sorted(first_sms) == sorted(
        f"Aftercare: an urgent reply needs a call back. Open {PUBLIC_URL}/flags/{f} "
        "Reply ACK when you are calling."
        for f in (emergency.id, urgent.id)
    )
    assert len(second_sms) == 1
    assert f"/flags/{emergency.id} " in second_sms[0]
    # The acknowledged flag paged the first on call only, and nobody after.
    assert [(e, c) for e, c, _ in _paged(rt, urgent.id)] == [(FIRST, "sms"), (FIRST, "email")]
    wait_for(
        lambda: {st for _, _, st in _paged(rt, emergency.id)} == {p.SENT},
        timeout=30,
        what="the emergency's pages to be recorded",
    )
    assert [(e, c) for e, c, _ in _paged(rt, emergency.id)] == [
        (FIRST, "sms"),
        (FIRST, "email"),
        (SECOND, "sms"),
        (SECOND, "email"),
    ]

    # No page, email page or log line names a patient, their number or their words.
    emails = sorted((stack.data_dir / "outbox" / "email").glob("page-*.eml"))
    assert len(emails) == 3  # the first on call: both flags; the second: the emergency
    staff_facing = "\n".join([*first_sms, *second_sms, *(e.read_text() for e in emails)])
    logs = "\n".join(path.read_text(errors="replace") for path in stack.logs.glob("*.log"))
    for secret in PATIENT_DATA:
        assert secret not in staff_facing, secret
        assert secret not in logs, secret
