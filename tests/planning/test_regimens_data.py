"""Regimens are data: no step of any regimen is named in the code, a second (made-up) regimen
in tests/regimens is planned, rendered, checked and delivered through the same code, the
evening texts are a parameter, and ``aftercare check`` names the file, key and reason of a
clinic's mistakes."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from icalendar import Calendar
from sqlalchemy import select

from aftercare.cli.checks import run_checks
from aftercare.clock import FixedClock
from aftercare.inbound.replies import Replies
from aftercare.inbound.service import receive_sms
from aftercare.messages.calendar import sample_calendar
from aftercare.messages.context import context_keys, sample_context
from aftercare.messages.render import MessageRenderer
from aftercare.planning.planner import plan
from aftercare.planning.quiet import QuietHours
from aftercare.regimens.loader import RegimenError, RegimenRegistry, load_regimen, parse_regimen
from aftercare.regimens.model import Regimen
from aftercare.reminders import states
from aftercare.runtime import Runtime, set_runtime
from aftercare.storage.models import Reminder, TreatmentSession
from tests.conftest import make_settings
from tests.factories import PATIENT_PHONE, enrol
from tests.reminders.test_delivery import claim_all, deliver_all

REPO = Path(__file__).resolve().parents[2]
TEST_REGIMENS = REPO / "tests" / "regimens"
SHIPPED = REPO / "schedules" / "micro-sclerotherapy.yaml"
QUIET = QuietHours.parse("21:00-08:00")
TREATED = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)


def regimen_files() -> list[Path]:
    return sorted((REPO / "schedules").glob("*.yaml")) + sorted(TEST_REGIMENS.glob("*.yaml"))


# --- No step id in the code --------------------------------------------------------------------

# (file, literal, why it is not a step): SQLAlchemy's pool event is called "checkin".
NOT_A_STEP = {("aftercare/storage/db.py", '"checkin"')}


def _pattern(name: str) -> re.Pattern[str]:
    """A hyphenated id is found anywhere it stands alone; a one-word id ("sun", "welcome") is an
    English word in comments, so only as a quoted string literal."""
    if "-" in name:
        return re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
    return re.compile(rf"[\"']{re.escape(name)}[\"']")


def test_no_step_or_template_of_any_regimen_is_named_in_the_code() -> None:
    names = {
        name
        for path in regimen_files()
        for step in load_regimen(path).steps
        for name in (step.id, step.template)
    }
    assert {"continuous-end", "daily-wear", "checkin", "gel-review"} <= names
    files = [
        p
        for p in (REPO / "aftercare").rglob("*")
        if p.suffix in {".py", ".html", ".txt", ".yaml"} and "migrations" not in p.parts
    ] + list((REPO / "templates" / "web").rglob("*.html"))
    hits = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        relative = str(path.relative_to(REPO))
        for name in sorted(names):
            for match in _pattern(name).finditer(text):
                if (relative, match.group(0)) in NOT_A_STEP:
                    continue
                line = text.count("\n", 0, match.start()) + 1
                hits.append(f"{relative}:{line}: {match.group(0)}")
    assert hits == []


# --- Fewer texts --------------------------------------------------------------------------------


def _sms_count(regimen: Regimen, channels: tuple[str, ...], **parameters: object) -> int:
    planned = plan(
        regimen=regimen,
        treated_at=TREATED,
        timezone="Europe/London",
        parameters=regimen.resolve_parameters(parameters),
        channels=channels,  # type: ignore[arg-type]
        quiet=QUIET,
    )
    return sum(1 for p in planned if p.channel == "sms" and p.state == "scheduled")


@pytest.mark.parametrize("channels", [("sms", "email"), ("sms",)], ids=["both", "sms-only"])
def test_sms_over_the_whole_regimen_then_at_most_28_with_14_days_and_fewer_with_7(
    channels: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    regimen = load_regimen(SHIPPED)
    fourteen = _sms_count(regimen, channels, daily_days=14)
    seven = _sms_count(regimen, channels, daily_days=7)
    every_evening = _sms_count(regimen, channels, daily_days=14, evening_reminders="all")
    with capsys.disabled():
        print(
            f"\nSMS ({'+'.join(channels)}): 14 days {fourteen}, 7 days {seven}, "
            f"14 days with every evening {every_evening}"
        )
    assert fourteen <= 28
    assert seven < fourteen
    # The clinic can have the evening text every day: 12 more over 14 days.
    assert every_evening == fourteen + 12


def test_evening_texts_when_first_and_last_then_the_first_and_last_daytime_days_only() -> None:
    regimen = load_regimen(SHIPPED)
    planned = plan(
        regimen=regimen,
        treated_at=TREATED,
        timezone="Europe/London",
        parameters=regimen.resolve_parameters({"daily_days": 7}),
        channels=("sms",),
        quiet=QUIET,
    )
    zone = ZoneInfo("Europe/London")
    mornings = [p for p in planned if p.template == "daily-wear"]
    evenings = [p for p in planned if p.template == "daily-off"]
    assert len(mornings) == 7
    # Numbered as days of the series, so the last reads "day 7 of 7".
    assert [p.occurrence for p in evenings] == [0, 6]
    assert [p.due_local(zone).date() for p in evenings] == [
        mornings[0].due_local(zone).date(),
        mornings[-1].due_local(zone).date(),
    ]
    # The completion still follows the last evening.
    completion = next(p for p in planned if p.template == "completion")
    assert completion.due_utc > evenings[-1].due_utc


def test_evening_reminders_when_not_an_allowed_value_then_refused_naming_it() -> None:
    regimen = load_regimen(SHIPPED)
    with pytest.raises(ValueError, match="evening_reminders: must be one of first_and_last, all"):
        regimen.resolve_parameters({"evening_reminders": "never"})


# --- The second regimen: planned, rendered, checked, delivered ---------------------------------


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """The shipped schedules and templates with the test regimen and its templates added."""
    schedules, templates = tmp_path / "schedules", tmp_path / "templates"
    shutil.copytree(REPO / "schedules", schedules)
    shutil.copytree(REPO / "templates", templates)
    for path in TEST_REGIMENS.glob("*.yaml"):
        shutil.copy(path, schedules / path.name)
    shutil.copytree(TEST_REGIMENS / "templates", templates, dirs_exist_ok=True)
    return schedules, templates


def test_second_regimen_when_planned_then_its_own_steps_parameters_and_selection() -> None:
    regimen = load_regimen(TEST_REGIMENS / "gel-soothe.yaml")
    planned = plan(
        regimen=regimen,
        treated_at=TREATED,
        timezone="Europe/London",
        parameters=regimen.resolve_parameters({"patch_days": 4}),
        channels=("sms", "email"),
        quiet=QUIET,
    )
    steps = [(p.step, p.occurrence, p.channel) for p in planned]
    assert [s for s in steps if s[0] == "gel-patch"] == [("gel-patch", i, "sms") for i in range(4)]
    # bedtime_texts defaults to "last": only the fourth evening.
    assert [s for s in steps if s[0] == "gel-bedtime"] == [("gel-bedtime", 3, "sms")]
    review = [p for p in planned if p.step == "gel-review"]
    assert {p.due_utc.date() for p in review} == {(TREATED + timedelta(weeks=3)).date()}
    assert regimen.checkin_steps == frozenset({"gel-review"})
    assert set(context_keys(regimen)) >= {"area", "patches_until", "review_on", "must_know_at"}


def test_second_regimen_when_rendered_then_its_words_and_dates() -> None:
    regimen = load_regimen(TEST_REGIMENS / "gel-soothe.yaml")
    renderer = MessageRenderer(TEST_REGIMENS / "templates")
    context = sample_context(regimen=regimen, step="gel-patch", parameters={"area": "face"})
    sms = renderer.render_sms("gel-patch", context)
    assert "Patch day 3 of 3: put a fresh patch on your cheeks now." in sms.body
    hello = renderer.render_sms("gel-hello", sample_context(regimen=regimen, step="gel-hello"))
    # Treated Thursday 26 March 2026 (the sample): patches on days 1 to 3.
    assert "until Sunday 29 March" in hello.body
    assert "the backs of your hands" in hello.body
    events = Calendar.from_ical(sample_calendar(regimen)).walk("VEVENT")
    assert sorted(str(e["SUMMARY"]) for e in events) == [
        "Fresh gel patch on the backs of your hands",
        f"Review question from {context['clinic_name']}",
    ]
    patches = next(e for e in events if str(e["SUMMARY"]).startswith("Fresh"))
    assert patches["RRULE"]["COUNT"] == [3]
    assert patches.end - patches.start == timedelta(minutes=30)


def test_second_regimen_when_checked_then_passes_and_is_reported(
    dirs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schedules, templates = dirs
    rt = Runtime(make_settings(tmp_path, schedules_dir=schedules, templates_dir=templates))
    assert run_checks(rt) == []
    out = capsys.readouterr().out
    assert "regimen gel-soothe (v1" in out
    assert "regimen micro-sclerotherapy (v" in out


@pytest.fixture
def gel_runtime(
    dirs: tuple[Path, Path], tmp_path: Path, database_url: str, clock: FixedClock
) -> Iterator[Runtime]:
    schedules, templates = dirs
    rt = Runtime(
        make_settings(
            tmp_path, database_url=database_url, schedules_dir=schedules, templates_dir=templates
        )
    )
    rt.clock = clock
    set_runtime(rt)
    yield rt
    set_runtime(None)
    rt.db.dispose()


def test_second_regimen_when_enrolled_then_delivered_and_its_checkin_answered(
    gel_runtime: Runtime, clock: FixedClock
) -> None:
    rt = gel_runtime
    session_id = enrol(
        rt, regimen="gel-soothe", parameters={"patch_days": 2, "bedtime_texts": "all"}
    )
    # Play the whole regimen through the real dispatcher and delivery.
    while True:
        with rt.db.session() as s:
            due = s.scalars(select(Reminder.due_at).where(Reminder.state == states.SCHEDULED)).all()
        if not due:
            break
        clock.set(max(min(due), clock.now()))
        assert set(deliver_all(rt, claim_all(rt))) == {states.SENT}
    with rt.db.session() as s:
        rows = s.scalars(select(Reminder).where(Reminder.session_id == session_id)).all()
        sent = sorted((r.step, r.occurrence, r.channel) for r in rows if r.state == states.SENT)
    assert sent == sorted(
        [
            ("gel-hello", 0, "sms"),
            ("gel-hello", 0, "email"),
            ("gel-patch", 0, "sms"),
            ("gel-patch", 1, "sms"),
            ("gel-bedtime", 0, "sms"),
            ("gel-bedtime", 1, "sms"),
            ("gel-must-know", 0, "sms"),
            ("gel-must-know", 0, "email"),
            ("gel-review", 0, "sms"),
            ("gel-review", 0, "email"),
        ]
    )
    outbox = rt.settings.outbox_dir
    bodies = [json.loads(p.read_text())["body"] for p in sorted((outbox / "sms").glob("*.json"))]
    assert any(
        "Patch day 2 of 2: put a fresh patch on the backs of your hands" in b for b in bodies
    )
    assert any("take the patch off for the night" in b for b in bodies)
    emails = [p.read_text() for p in (outbox / "email").glob("*.eml")]
    assert len(emails) == 3  # hello, must-know, review (the patches go by SMS only)
    assert sum("aftercare.ics" in e for e in emails) == 1  # attached to the hello email
    # The review step is this regimen's check-in: a reply to it is recorded as the answer.
    replies = Replies(
        renderer=rt.renderer,
        clinic_name=rt.settings.clinic_name,
        clinic_phone=rt.settings.clinic_phone,
        regimens=rt.registry,
    )
    with rt.db.session() as s:
        receive_sms(
            db_session=s,
            sid="SM" + "7" * 32,
            from_number=PATIENT_PHONE,
            body="1",
            now=clock.now(),
            replies=replies,
        )
    with rt.db.session() as s:
        assert s.get_one(TreatmentSession, session_id).checkin_answer == "1"


# --- aftercare check names a clinic's mistakes -------------------------------------------------


def _broken(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


BROKEN = [
    pytest.param(
        "    catch_up: always\n    attach_calendar: true\n",
        "    catch_up: always\n    attach_calendar: true\n    colour: blue\n",
        "steps[0].colour",
        "unknown key",
        id="unknown-key",
    ),
    pytest.param(
        '{day: 1, time: "10:00"}',
        '{day: 1, time: "25:00"}',
        "steps[2].at.time",
        "must be a local time of day as HH:MM",
        id="bad-time",
    ),
    pytest.param(
        "    default: 10\n",
        "    default: 20\n",
        "parameters.checkin_week.default",
        "must be at most 13",
        id="out-of-range-default",
    ),
    pytest.param(
        "count: {param: daily_days}",
        "count: {param: daily_dayz}",
        "steps[4].repeat.count.param",
        "must name an int parameter of this regimen",
        id="unknown-parameter",
    ),
    pytest.param(
        "occurrences: {param: evening_reminders}",
        "occurrences: {param: garment}",
        "steps[5].occurrences.param",
        "its choices must be from all, first, last, first_and_last",
        id="selection-parameter-with-other-choices",
    ),
    pytest.param(
        "daily_until: {step: daily-wear, which: last}",
        "daily_until: {step: daily-wearing, which: last}",
        "dates.daily_until.step",
        "is not a step of this regimen",
        id="date-of-unknown-step",
    ),
    pytest.param(
        "      end: {step: continuous-end}\n",
        "      end: {step: continuous-ends}\n",
        "calendar.events[0].end.step",
        "is not a step of this regimen",
        id="calendar-unknown-step",
    ),
    pytest.param(
        "    valid_for: 14d\n    check_in: true\n",
        "    valid_for: 14d\n    check_in: yes please\n",
        "steps[8].check_in",
        "must be true or false",
        id="checkin-not-a-flag",
    ),
]


@pytest.mark.parametrize(("old", "new", "key", "reason"), BROKEN)
def test_check_when_a_regimen_file_is_broken_then_names_file_key_and_reason(
    tmp_path: Path, old: str, new: str, key: str, reason: str
) -> None:
    schedules = tmp_path / "schedules"
    shutil.copytree(REPO / "schedules", schedules)
    regimen = schedules / "micro-sclerotherapy.yaml"
    regimen.write_text(_broken(SHIPPED.read_text(encoding="utf-8"), old, new))
    rt = Runtime(make_settings(tmp_path, schedules_dir=schedules))

    faults = run_checks(rt)

    assert len(faults) == 1
    assert faults[0].startswith(f"{regimen}:")
    assert f": {key}: " in faults[0]
    assert reason in faults[0]
    with pytest.raises(RegimenError) as error:
        RegimenRegistry.load(schedules)
    assert (error.value.file, error.value.key) == (str(regimen), key)


def test_check_when_a_steps_template_is_missing_then_names_regimen_file_step_and_template(
    tmp_path: Path,
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "templates", templates)
    (templates / "sms" / "keep-moving.txt").unlink()
    rt = Runtime(make_settings(tmp_path, templates_dir=templates))

    faults = run_checks(rt)

    assert faults
    assert all(f.startswith(f"{SHIPPED}: steps[2].template (keep-moving): ") for f in faults)
    assert "template not found: sms/keep-moving.txt" in faults[0]


def test_check_when_a_calendar_text_names_an_unknown_variable_then_names_its_key(
    tmp_path: Path,
) -> None:
    schedules = tmp_path / "schedules"
    shutil.copytree(REPO / "schedules", schedules)
    regimen = schedules / "micro-sclerotherapy.yaml"
    text = _broken(
        SHIPPED.read_text(encoding="utf-8"),
        'summary: "Compression stockings: day and night"',
        'summary: "Compression {{ stocking_kind }}: day and night"',
    )
    regimen.write_text(text)

    faults = run_checks(Runtime(make_settings(tmp_path, schedules_dir=schedules)))

    assert faults == [
        f"{regimen}: calendar.events.continuous.summary: undefined: 'stocking_kind' is undefined"
    ]


def test_attach_calendar_without_a_calendar_then_refused() -> None:
    text = SHIPPED.read_text(encoding="utf-8")
    text = text[: text.index("\ncalendar:")] + text[text.index("\n# A course of treatment") :]
    with pytest.raises(RegimenError, match=r"steps\[0\]\.attach_calendar: the regimen has no"):
        parse_regimen(text, file="x.yaml")
