"""On-call paging, on SQLite and PostgreSQL: the rota CLI, pages stored with every emergency or
urgent flag and sent exactly once, acknowledgement by button and by SMS, escalation with the
injected clock, the rota exhausted to the admins, and no patient data in any page or log."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from aftercare.channels.base import SmsMessage
from aftercare.cli.main import cli
from aftercare.clock import FixedClock
from aftercare.flags.service import raise_flag
from aftercare.oncall import pages as p
from aftercare.oncall.run import paging_pass
from aftercare.oncall.send import PageDeps, recover_pages, send_page
from aftercare.planning.hours import OpeningHours
from aftercare.runtime import Runtime
from aftercare.settings import Settings
from aftercare.storage.models import AuditEvent, Flag, InboundMessage, Page, StaffUser
from aftercare.web.app import create_app
from aftercare.worker.paging import page_deps
from tests.factories import PATIENT_NAME, PATIENT_PHONE, enrol
from tests.inbound.test_inbound import AUTH_TOKEN, PUBLIC, FakeTwilio, assert_twiml, flags
from tests.web.test_pages import CSRF, log_in
from tests.web.test_pages import add_staff as add_page_staff

FIRST, SECOND, BOSS = "first@example.org", "second@example.org", "boss@example.org"
FIRST_PHONE, SECOND_PHONE = "+447911000111", "+447911000222"
AFTER = timedelta(seconds=900)
STALE = timedelta(seconds=300)
URGENT_TEXT = "my calf is swollen and painful"


def cli_run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["staff", *args])
    return result.exit_code, result.stdout, result.stderr


def add_staff(rt: Runtime, email: str, role: str = "staff") -> int:
    return add_page_staff(rt, email, role)


def on_call(rt: Runtime, email: str, phone: str) -> None:
    code, _out, err = cli_run("on-call", email, "--phone", phone)
    assert code == 0, err


def staff_row(rt: Runtime, email: str) -> StaffUser:
    with rt.db.session() as s:
        user = s.scalars(select(StaffUser).where(StaffUser.email == email)).one()
        s.expunge(user)
        return user


def rows_of(rt: Runtime) -> list[tuple[str, str | None, int | None]]:
    users = [staff_row(rt, email) for email in (FIRST, SECOND, BOSS)]
    return [(u.email, u.phone, u.on_call_position) for u in users]


def all_pages(rt: Runtime) -> list[Page]:
    with rt.db.session() as s:
        rows = list(s.scalars(select(Page).order_by(Page.id)))
        s.expunge_all()
        return rows


def who_was_paged(rt: Runtime) -> list[tuple[str, str]]:
    """(email, channel) of every page that went out, in order."""
    with rt.db.session() as s:
        rows = s.execute(
            select(StaffUser.email, Page.channel)
            .join(StaffUser, StaffUser.id == Page.staff_id)
            .where(Page.state == p.SENT)
            .order_by(Page.id)
        ).all()
    return [(email, channel) for email, channel in rows]


def run_paging(rt: Runtime, deps: PageDeps | None = None) -> list[str]:
    """One beat pass, then every published page sent (as the worker would)."""
    deps = deps or page_deps(rt, with_lease=False)
    published: list[int] = []
    paging_pass(deps=deps, publish=published.append, escalate_after=AFTER, stale_after=STALE)
    return [send_page(deps=deps, page_id=page_id) for page_id in published]


def outbox_pages(rt: Runtime) -> list[str]:
    """Every page as it reached the SMS and email outboxes (the bytes sent)."""
    found = []
    for channel in ("sms", "email"):
        folder = rt.settings.outbox_dir / channel
        if folder.exists():
            found += [path.read_text() for path in sorted(folder.glob("page-*"))]
    return found


@pytest.fixture
def rt(runtime: Runtime) -> Runtime:
    """The shared runtime, with a Twilio auth token and a public (proxied) base URL."""
    runtime.settings = runtime.settings.model_copy(
        update={"twilio_auth_token": AUTH_TOKEN, "public_base_url": PUBLIC}
    )
    return runtime


@pytest.fixture
def twilio(rt: Runtime) -> Iterator[FakeTwilio]:
    with TestClient(create_app(rt)) as client:
        yield FakeTwilio(client)


@pytest.fixture
def rota(rt: Runtime) -> Runtime:
    """Two staff on call (first, second) and an admin not on call."""
    for email in (FIRST, SECOND):
        add_staff(rt, email)
    add_staff(rt, BOSS, "admin")
    on_call(rt, FIRST, "07911 000111")
    on_call(rt, SECOND, SECOND_PHONE)
    return rt


# --- The rota ----------------------------------------------------------------------------------


def test_on_call_cli_adds_in_order_with_e164_and_readding_keeps_the_place(rota: Runtime) -> None:
    first, second = staff_row(rota, FIRST), staff_row(rota, SECOND)
    assert (first.phone, first.on_call_position) == (FIRST_PHONE, 1)
    assert (second.phone, second.on_call_position) == (SECOND_PHONE, 2)
    code, out, _ = cli_run("on-call", FIRST, "--phone", "+447911000333")
    assert code == 0
    assert "already on call" in out
    again = staff_row(rota, FIRST)
    assert (again.phone, again.on_call_position) == ("+447911000333", 1)


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["on-call", FIRST, "--phone", "not a number"], "phone"),
        (["on-call", FIRST, "--phone", "020 7946 0000"], "phone: is not a mobile"),
        (["on-call", "nobody@example.org", "--phone", FIRST_PHONE], "email: no staff account"),
        (["off-call", BOSS], "email: boss@example.org is not on call"),
    ],
)
def test_bad_rota_command_exits_2_with_one_line_naming_the_field_and_changes_nothing(
    rota: Runtime, args: list[str], names: str
) -> None:
    before = rows_of(rota)
    code, _, err = cli_run(*args)
    assert code == 2
    assert err.count("\n") == 1
    assert names in err
    assert rows_of(rota) == before


def test_off_call_removes_and_the_rest_close_up(rota: Runtime) -> None:
    code, out, _ = cli_run("off-call", FIRST)
    assert code == 0
    assert "off call" in out
    assert staff_row(rota, FIRST).on_call_position is None
    assert staff_row(rota, SECOND).on_call_position == 1
    with rota.db.session() as s:
        actions = [e.action for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert actions == ["on_call", "on_call", "off_call"]


# --- Paging ------------------------------------------------------------------------------------


def test_urgent_reply_pages_the_first_on_call_at_once_by_sms_and_email_without_patient_data(
    rota: Runtime, twilio: FakeTwilio, caplog: pytest.LogCaptureFixture
) -> None:
    enrol(rota)
    caplog.set_level(logging.DEBUG)
    assert_twiml(twilio.sms(URGENT_TEXT), "<Message>")
    [flag] = flags(rota)
    assert [(pg.staff_id, pg.channel, pg.state) for pg in all_pages(rota)] == [
        (staff_row(rota, FIRST).id, "sms", p.SCHEDULED),
        (staff_row(rota, FIRST).id, "email", p.SCHEDULED),
    ]

    assert run_paging(rota) == [p.SENT, p.SENT]

    assert who_was_paged(rota) == [(FIRST, "sms"), (FIRST, "email")]
    sms = json.loads(
        (rota.settings.outbox_dir / "sms" / f"page-{all_pages(rota)[0].id}.json").read_text()
    )
    assert sms["to"] == FIRST_PHONE
    assert f"{PUBLIC}/flags/{flag.id}" in sms["body"]
    assert "urgent reply needs a call back" in sms["body"]
    everything = "\n".join([*outbox_pages(rota), caplog.text])
    for secret in (PATIENT_NAME, "Philippa", PATIENT_PHONE, "7911123456", "swollen", "calf"):
        assert secret not in "\n".join(outbox_pages(rota)), secret
        assert secret not in caplog.text, secret
    assert everything


def test_every_emergency_or_urgent_flag_pages_whoever_raises_it_and_others_do_not(
    rota: Runtime,
) -> None:
    with rota.db.session() as s:
        for severity in ("emergency", "urgent", "concern", "info"):
            raise_flag(
                s,
                kind="delivery_failed",
                patient_id=None,
                text="x",
                now=rota.clock.now(),
                severity=severity,  # type: ignore[arg-type]
            )
    with rota.db.session() as s:
        paged = {f.severity for f in s.scalars(select(Flag).join(Page, Page.flag_id == Flag.id))}
    assert paged == {"emergency", "urgent"}


def test_page_sent_twice_goes_once(rota: Runtime, twilio: FakeTwilio) -> None:
    enrol(rota)
    twilio.sms(URGENT_TEXT)
    deps = page_deps(rota, with_lease=False)
    published: list[int] = []
    paging_pass(deps=deps, publish=published.append, escalate_after=AFTER, stale_after=STALE)
    outcomes = [send_page(deps=deps, page_id=i) for i in published + published]
    assert outcomes == [p.SENT, p.SENT, "not-queued", "not-queued"]
    assert len(outbox_pages(rota)) == 2


@pytest.mark.parametrize("reached_provider", [True, False], ids=["accepted", "never-sent"])
def test_page_left_sending_by_a_dead_worker_is_reconciled_never_duplicated_or_lost(
    rota: Runtime, twilio: FakeTwilio, clock: FixedClock, reached_provider: bool
) -> None:
    enrol(rota)
    twilio.sms(URGENT_TEXT)
    deps = page_deps(rota, with_lease=False)
    with rota.db.session() as s:
        ids = p.claim_due(s, now=clock.now())
        # A worker under a lease that is gone moved them to sending, then died.
        p.transition(
            s,
            ids,
            source=p.QUEUED,
            target=p.SENDING,
            now=clock.now(),
            attempts=Page.attempts + 1,
            attempt_at=clock.now(),
            claimed_by="gone-worker-lease",
        )
    if reached_provider:
        with rota.db.session() as s:
            for page in s.scalars(select(Page).where(Page.id.in_(ids))):
                staff = s.get_one(StaffUser, page.staff_id)
                from aftercare.oncall.send import _message

                message = _message(page, staff, PUBLIC)
                assert message is not None
                deps.transports[page.channel].send(message)
    summary = recover_pages(deps=deps, stale_after=STALE)
    assert summary.get(p.SENT if reached_provider else "resend") == 2
    run_paging(rota, deps)
    assert {pg.state for pg in all_pages(rota)} == {p.SENT}
    assert len(outbox_pages(rota)) == 2


def test_pages_ignore_quiet_hours(rota: Runtime, twilio: FakeTwilio, clock: FixedClock) -> None:
    enrol(rota)
    clock.set(datetime(2026, 3, 3, 2, 0, tzinfo=UTC))  # 02:00 in London
    twilio.sms(URGENT_TEXT)
    assert run_paging(rota) == [p.SENT, p.SENT]


# --- Acknowledgement and escalation ------------------------------------------------------------


def test_nobody_acknowledges_then_the_next_on_call_then_every_admin_then_nobody(
    rota: Runtime, twilio: FakeTwilio, clock: FixedClock
) -> None:
    enrol(rota)
    twilio.sms(URGENT_TEXT)
    run_paging(rota)
    clock.advance(AFTER - timedelta(seconds=1))
    assert run_paging(rota) == []
    clock.advance(timedelta(seconds=1))
    assert run_paging(rota) == [p.SENT, p.SENT]
    clock.advance(AFTER)
    assert run_paging(rota) == [p.SENT]  # the admin has no mobile: email only
    clock.advance(AFTER * 4)
    assert run_paging(rota) == []
    assert who_was_paged(rota) == [
        (FIRST, "sms"),
        (FIRST, "email"),
        (SECOND, "sms"),
        (SECOND, "email"),
        (BOSS, "email"),
    ]
    [flag] = flags(rota)
    assert (flag.page_round, flag.paged_at) == (3, None)


def test_empty_rota_pages_every_admin_at_once(rt: Runtime, twilio: FakeTwilio) -> None:
    add_staff(rt, BOSS, "admin")
    add_staff(rt, "other-admin@example.org", "admin")
    add_staff(rt, FIRST)
    enrol(rt)
    twilio.sms(URGENT_TEXT)
    run_paging(rt)
    assert who_was_paged(rt) == [(BOSS, "email"), ("other-admin@example.org", "email")]


def test_ack_by_sms_from_the_paged_phone_stops_escalation_and_is_audited(
    rota: Runtime, twilio: FakeTwilio, clock: FixedClock
) -> None:
    enrol(rota)
    twilio.sms(URGENT_TEXT)
    run_paging(rota)
    said = assert_twiml(twilio.sms("ack", sender=FIRST_PHONE), "you are calling back")
    assert "Nobody else will be paged" in said
    [flag] = flags(rota)
    assert flag.acknowledged_by_id == staff_row(rota, FIRST).id
    assert flag.acknowledged_at == clock.now()
    clock.advance(AFTER * 3)
    assert run_paging(rota) == []
    assert who_was_paged(rota) == [(FIRST, "sms"), (FIRST, "email")]
    with rota.db.session() as s:
        [event] = s.scalars(select(AuditEvent).where(AuditEvent.action == "page_ack")).all()
        assert (event.actor_id, event.detail["via"]) == (flag.acknowledged_by_id, "sms")
        kinds = [m.kind for m in s.scalars(select(InboundMessage).order_by(InboundMessage.id))]
    assert kinds == ["urgent", "page_ack"]
    assert len(flags(rota)) == 1  # the ACK raised no flag of its own


def test_ack_from_a_patient_or_with_nothing_paged_is_not_a_staff_ack(
    rota: Runtime, twilio: FakeTwilio
) -> None:
    enrol(rota)
    said = assert_twiml(twilio.sms("ACK", sender=SECOND_PHONE), "no page is waiting")
    assert "Aftercare" in said
    twilio.sms("ACK")  # the patient's number: handled as a patient's reply
    with rota.db.session() as s:
        kinds = [m.kind for m in s.scalars(select(InboundMessage).order_by(InboundMessage.id))]
    assert kinds[0] == "page_ack"
    assert kinds[1] != "page_ack"


def test_im_calling_button_acknowledges_cancels_pending_pages_and_shows_who(
    rota: Runtime, twilio: FakeTwilio, clock: FixedClock
) -> None:
    enrol(rota)
    twilio.sms(URGENT_TEXT)
    [flag] = flags(rota)
    with TestClient(create_app(rota), base_url=PUBLIC, follow_redirects=False) as client:
        assert log_in(client, SECOND).status_code == 303
        page = client.get(f"/flags/{flag.id}")
        assert page.status_code == 200
        assert "I&rsquo;m calling" in page.text
        token = CSRF.search(page.text)
        assert token is not None
        refused = client.post(f"/flags/{flag.id}/acknowledge", data={"csrf_token": "x"})
        assert refused.status_code in (400, 403)
        assert flags(rota)[0].acknowledged_at is None
        done = client.post(f"/flags/{flag.id}/acknowledge", data={"csrf_token": token.group(1)})
        assert done.status_code == 200
        assert "you are calling back" in done.text
        assert "Calling back:" in done.text
    # The first page had not gone yet: cancelled, and nobody is paged.
    assert run_paging(rota) == []
    assert {pg.state for pg in all_pages(rota)} == {p.CANCELLED}
    clock.advance(AFTER * 3)
    assert run_paging(rota) == []
    with rota.db.session() as s:
        [event] = s.scalars(select(AuditEvent).where(AuditEvent.action == "page_ack")).all()
    assert event.detail["via"] == "button"


def test_resolving_the_flag_stops_escalation(
    rota: Runtime, twilio: FakeTwilio, clock: FixedClock
) -> None:
    from aftercare.flags import resolution

    enrol(rota)
    twilio.sms(URGENT_TEXT)
    run_paging(rota)
    [flag] = flags(rota)
    with rota.db.session() as s:
        resolution.resolve_flag(db_session=s, flag_id=flag.id, actor_id=None, now=clock.now())
    clock.advance(AFTER * 3)
    assert run_paging(rota) == []
    assert len(who_was_paged(rota)) == 2


# --- Admin page, dashboard tile, metrics -------------------------------------------------------


def test_admin_rota_page_adds_reorders_and_removes_and_refuses_a_bad_phone(rota: Runtime) -> None:
    third = "third@example.org"
    add_staff(rota, third)
    with TestClient(create_app(rota), base_url=PUBLIC, follow_redirects=False) as client:
        assert log_in(client, BOSS).status_code == 303
        page = client.get("/staff/on-call")
        assert page.status_code == 200
        assert '<label for="oncall-phone">Mobile number</label>' in page.text
        token = CSRF.search(page.text).group(1)  # type: ignore[union-attr]
        bad = client.post(
            "/staff/on-call", data={"csrf_token": token, "email": third, "phone": "12"}
        )
        assert bad.status_code == 422
        assert "phone:" in bad.text
        assert staff_row(rota, third).on_call_position is None
        added = client.post(
            "/staff/on-call", data={"csrf_token": token, "email": third, "phone": "07911000333"}
        )
        assert added.status_code == 200
        assert "is now on call" in added.text
        third_id = staff_row(rota, third).id
        moved = client.post(
            f"/staff/on-call/{third_id}/move", data={"csrf_token": token, "direction": "up"}
        )
        assert moved.status_code == 303
        assert staff_row(rota, third).on_call_position == 2
        gone = client.post(
            f"/staff/on-call/{staff_row(rota, FIRST).id}/remove", data={"csrf_token": token}
        )
        assert gone.status_code == 303
    assert [staff_row(rota, e).on_call_position for e in (FIRST, third, SECOND)] == [None, 1, 2]


def test_rota_page_is_for_admins_only(rota: Runtime) -> None:
    with TestClient(create_app(rota), base_url=PUBLIC, follow_redirects=False) as client:
        assert log_in(client, FIRST).status_code == 303
        assert client.get("/staff/on-call").status_code == 403


def test_dashboard_tile_and_metrics_show_unacknowledged_flags_and_time_to_acknowledge(
    rota: Runtime, twilio: FakeTwilio, clock: FixedClock
) -> None:
    enrol(rota)
    twilio.sms(URGENT_TEXT)
    clock.advance(timedelta(minutes=7))
    with TestClient(create_app(rota), base_url=PUBLIC, follow_redirects=False) as client:
        assert log_in(client, FIRST).status_code == 303
        home = client.get("/")
        assert "Waiting for a call back" in home.text
        assert "7 min" in home.text
        metrics = client.get("/metrics").text
        assert re.search(r'aftercare_flags_unacknowledged\{severity="urgent"\} 1\.0', metrics)
        assert re.search(r"aftercare_flag_oldest_unacknowledged_seconds 420\.0", metrics)
        twilio.sms("ACK", sender=FIRST_PHONE)  # nothing was sent yet: nothing to ack
        run_paging(rota)
        twilio.sms("ACK", sender=FIRST_PHONE)
        metrics = client.get("/metrics").text
    assert re.search(r"aftercare_flag_time_to_acknowledge_seconds_count 1\.0", metrics)
    assert re.search(r"aftercare_flag_time_to_acknowledge_seconds_sum 420\.0", metrics)
    assert re.search(r"aftercare_flag_oldest_unacknowledged_seconds 0\.0", metrics)


# --- Opening hours -----------------------------------------------------------------------------

LONDON = ZoneInfo("Europe/London")
HOURS = "Mon-Fri 08:30-17:30; Sat 09:00-13:00"


@pytest.mark.parametrize(
    ("local", "phrase"),
    [
        (datetime(2026, 3, 2, 10, 0), "The clinic is open until 17:30 today."),  # Monday
        (datetime(2026, 3, 2, 7, 0), "The clinic opens again at 08:30 today."),
        (datetime(2026, 3, 2, 21, 0), "The clinic opens again at 08:30 tomorrow."),
        (datetime(2026, 3, 6, 18, 0), "The clinic opens again at 09:00 tomorrow."),  # Friday
        (datetime(2026, 3, 7, 14, 0), "The clinic opens again at 08:30 on Monday."),  # Saturday
    ],
)
def test_next_open_phrase(local: datetime, phrase: str) -> None:
    now = local.replace(tzinfo=LONDON).astimezone(UTC)
    assert OpeningHours.parse(HOURS).phrase(now, LONDON) == phrase


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("Mon-Fri 9-17", "is not a time"),
        ("Mo-Fr 09:00-17:00", "is not a day"),
        ("Mon-Fri 17:00-09:00", "closes before it opens"),
        ("Fri-Mon 09:00-17:00", "run backwards"),
        ("Mon 09:00-12:00; Mon 13:00-17:00", "given twice"),
        ("Mon-Fri", "write days then hours"),
    ],
)
def test_bad_opening_hours_refused_at_start_naming_the_part(text: str, names: str) -> None:
    with pytest.raises(ValueError, match=names):
        Settings(opening_hours=text)


def test_urgent_answer_says_when_the_clinic_is_next_open(rt: Runtime, clock: FixedClock) -> None:
    rt.settings = rt.settings.model_copy(update={"opening_hours": HOURS})
    clock.set(datetime(2026, 3, 2, 21, 0, tzinfo=UTC))
    enrol(rt, now=clock.now() - timedelta(hours=12))
    with TestClient(create_app(rt)) as client:
        said = assert_twiml(FakeTwilio(client).sms(URGENT_TEXT), "NHS 111")
    assert "The clinic opens again at 08:30 tomorrow." in said
    message = said.split("<Message>")[1].split("</Message>")[0]
    from aftercare.messages.gsm import sms_encoding

    found = sms_encoding(message.replace("&#x27;", "'").replace("&amp;", "&"))
    assert (found.encoding, found.segments) == ("GSM-7", 2)


def test_page_text_is_gsm7_one_segment_and_names_nothing_but_the_link() -> None:
    from aftercare.messages.gsm import sms_encoding
    from aftercare.oncall.text import sms_page

    message = sms_page(page_id=1, to=FIRST_PHONE, flag_id=123456, public_base_url=PUBLIC)
    assert isinstance(message, SmsMessage)
    assert sms_encoding(message.body).encoding == "GSM-7"
    assert re.sub(r"https://\S+", "", message.body) == (
        "Aftercare: an urgent reply needs a call back. Open  Reply ACK when you are calling."
    )


def test_round_whose_every_page_failed_escalates_at_once(
    rota: Runtime, twilio: FakeTwilio, clock: FixedClock
) -> None:
    """The first on call's mobile and address are refused for good: the second is paged at
    the next pass, not after ESCALATE_AFTER."""
    from aftercare.channels.base import Message, SendResult, TransportError

    class Refusing:
        name = "refusing"
        channel = "sms"

        def send(self, message: Message) -> SendResult:
            raise TransportError("refused", permanent=True, code="21211")

        def lookup(self, message: Message, *, since: datetime) -> SendResult | None:
            return None

    enrol(rota)
    twilio.sms(URGENT_TEXT)
    real = page_deps(rota, with_lease=False)
    refusing = PageDeps(
        db=real.db,
        clock=real.clock,
        transports={"sms": Refusing(), "email": Refusing()},  # type: ignore[dict-item]
        public_base_url=PUBLIC,
        escalate_after=AFTER,
    )
    assert run_paging(rota, refusing) == [p.FAILED, p.FAILED]
    assert run_paging(rota, real) == [p.SENT, p.SENT]
    assert who_was_paged(rota) == [(SECOND, "sms"), (SECOND, "email")]
