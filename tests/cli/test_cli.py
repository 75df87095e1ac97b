"""The ``aftercare`` command: preview stores nothing, enrol stores a session, check finds faults,
and every bad flag exits with code 2 and one line naming it."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import select
from typer.testing import CliRunner

from aftercare.cli.main import cli
from aftercare.runtime import get_runtime, set_runtime
from aftercare.storage.db import Database
from aftercare.storage.models import Reminder, TreatmentSession
from aftercare.worker.celeryconfig import DISPATCH_QUEUE, SEND_QUEUE, parse_queues

REPO = Path(__file__).resolve().parents[2]
# The CLI's clock (AFTERCARE_CLOCK=file:...) reads this instant.
NOW = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)
# Europe/London moves to BST (+01:00) at 01:00 UTC on Sunday 29 March 2026.
DST_STARTS = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
PREVIEW_DST = ["--treated-at", "2026-03-28T09:00+00:00", "--timezone", "Europe/London"]
JSON_KEYS = {"step", "channel", "template", "due_utc", "due_local"}
ENROL_FLAGS: dict[str, str] = {
    "--name": "Jane Doe",
    "--phone": "07911 123456",
    "--email": "jane@example.com",
    "--treated-at": "2026-03-02T10:00+00:00",
    "--timezone": "Europe/London",
}


@dataclass
class Aftercare:
    """The CLI on a private data folder and SQLite database."""

    data_dir: Path
    db_path: Path

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.db_path}"

    def __call__(self, *args: str, **env: str) -> Result:
        set_runtime(None)  # settings are re-read from the environment on every invocation
        try:
            return CliRunner().invoke(cli, list(args), env=env or None)
        finally:
            runtime = get_runtime()
            if "db" in vars(runtime):  # the command opened the database
                runtime.db.dispose()
            set_runtime(None)


@pytest.fixture
def aftercare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Aftercare:
    for name in list(os.environ):
        if name.startswith("AFTERCARE_") and not name.startswith("AFTERCARE_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env file
    clock_file = tmp_path / "clock"
    clock_file.write_text(NOW.isoformat(), encoding="utf-8")
    app = Aftercare(data_dir=tmp_path / "data", db_path=tmp_path / "aftercare.sqlite3")
    monkeypatch.setenv("AFTERCARE_DATA_DIR", str(app.data_dir))
    monkeypatch.setenv("AFTERCARE_DATABASE_URL", app.database_url)
    monkeypatch.setenv("AFTERCARE_CLOCK", f"file:{clock_file}")
    return app


def succeeded(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}"
    return result


def preview_json(aftercare: Aftercare, *args: str) -> list[dict[str, Any]]:
    rows = json.loads(succeeded(aftercare("preview", "--json", *args)).stdout)
    assert isinstance(rows, list)
    return rows


def enrol_args(
    changes: dict[str, str | None] | None = None,
    confirm: tuple[str, ...] = ("--consent", "--contraindications-checked"),
) -> list[str]:
    """``enrol`` with valid flags, some changed (a None value leaves that flag out), and the
    staff's confirmations ``confirm``."""
    flags = {**ENROL_FLAGS, **(changes or {})}
    args = ["enrol", *confirm]
    for flag, value in flags.items():
        if value is not None:
            args += [flag, value]
    return args


def one_error_line(result: Result) -> str:
    assert result.exit_code == 2, f"exit {result.exit_code}\n{result.output}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def stored(database_url: str) -> tuple[list[TreatmentSession], list[Reminder]]:
    db = Database(database_url)
    try:
        with db.session() as db_session:
            sessions = list(db_session.scalars(select(TreatmentSession)))
            reminders = list(db_session.scalars(select(Reminder)))
    finally:
        db.dispose()
    return sessions, reminders


# --- preview ----------------------------------------------------------------------------------


def test_preview_json_when_treated_before_dst_then_lists_reminders_with_local_offsets(
    aftercare: Aftercare,
) -> None:
    rows = preview_json(aftercare, *PREVIEW_DST, "--daily-days", "7")

    assert rows
    assert all(set(row) == JSON_KEYS for row in rows)
    offsets = set()
    for row in rows:
        due_utc = datetime.fromisoformat(row["due_utc"])
        due_local = datetime.fromisoformat(row["due_local"])
        assert due_local == due_utc
        expected = "+01:00" if due_utc >= DST_STARTS else "+00:00"
        assert row["due_local"].endswith(expected), row
        offsets.add(expected)
    assert offsets == {"+00:00", "+01:00"}
    daily_wear = [row for row in rows if row["step"] == "daily-wear"]
    assert len(daily_wear) == 7
    assert {datetime.fromisoformat(row["due_local"]).hour for row in daily_wear} == {8}


def test_preview_when_run_then_nothing_is_written(aftercare: Aftercare) -> None:
    preview_json(aftercare, *PREVIEW_DST)
    succeeded(aftercare("preview", *PREVIEW_DST))

    assert not aftercare.db_path.exists()
    assert not aftercare.data_dir.exists()


def test_preview_when_recorded_five_days_late_then_shows_the_catch_up(
    aftercare: Aftercare,
) -> None:
    recorded = "2026-04-02T09:00:00+00:00"
    on_time = preview_json(aftercare, *PREVIEW_DST)
    late = preview_json(aftercare, *PREVIEW_DST, "--now", recorded)

    now = datetime.fromisoformat(recorded)
    assert all(datetime.fromisoformat(row["due_utc"]) >= now for row in late)
    at_once = [(row["step"], row["channel"]) for row in late if row["due_utc"] == recorded]
    for step in ("welcome", "warning-signs"):
        assert {(step, "sms"), (step, "email")} <= set(at_once)
    brought_forward = [(s, c) for s, c in at_once if s not in {"welcome", "warning-signs"}]
    assert sorted(c for _, c in brought_forward) == ["email", "sms"]
    assert not any(row["step"] == "keep-moving" for row in late)
    assert len(late) < len(on_time)


def test_preview_table_when_run_then_prints_a_header_and_one_line_per_reminder(
    aftercare: Aftercare,
) -> None:
    rows = preview_json(aftercare, *PREVIEW_DST)
    lines = succeeded(aftercare("preview", *PREVIEW_DST)).stdout.strip().splitlines()

    header, rule, *body = lines
    for column in ("due (local)", "due (UTC)", "step", "channel", "state"):
        assert column in header
    assert set(rule) == {"-"}
    assert len(body) == len(rows)
    assert body[0].startswith("Sat 28 Mar 2026 09:00")
    assert all(line.rstrip().endswith("scheduled") for line in body)


# --- bad flags --------------------------------------------------------------------------------

# (flag, bad value): each names its field after the flag, without the dashes.
BAD_SESSION_FLAGS = [
    ("--timezone", "Mars/Olympus"),
    ("--daily-days", "10"),
    ("--checkin-week", "20"),
    ("--treated-at", "garbage"),
    ("--channels", "fax"),
    ("--regimen", "nope"),
]


@pytest.mark.parametrize(
    ("flag", "value"), BAD_SESSION_FLAGS, ids=[flag for flag, _ in BAD_SESSION_FLAGS]
)
def test_preview_when_a_flag_is_bad_then_exits_2_with_one_line_naming_it(
    aftercare: Aftercare, flag: str, value: str
) -> None:
    line = one_error_line(aftercare("preview", *PREVIEW_DST, flag, value))

    assert line.startswith(f"error: {flag.removeprefix('--')}: ")
    assert not aftercare.db_path.exists()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        *(
            pytest.param({flag: value}, flag.removeprefix("--"), id=flag.removeprefix("--"))
            for flag, value in BAD_SESSION_FLAGS
        ),
        pytest.param({"--phone": "123"}, "phone", id="phone"),
        pytest.param({"--channels": "email", "--email": None}, "email", id="email-missing"),
    ],
)
def test_enrol_when_a_flag_is_bad_then_exits_2_with_one_line_naming_it_and_stores_nothing(
    aftercare: Aftercare, changes: dict[str, str | None], field: str
) -> None:
    succeeded(aftercare("migrate"))

    line = one_error_line(aftercare(*enrol_args(changes)))

    assert line.startswith(f"error: {field}: ")
    assert stored(aftercare.database_url) == ([], [])


# --- enrol and migrate ------------------------------------------------------------------------

RECORDED = re.compile(r"Recorded session (\d+) for patient (\d+)\.")


def test_enrol_when_migrated_then_stores_the_session_and_its_planned_reminders(
    aftercare: Aftercare,
) -> None:
    succeeded(aftercare("migrate"))

    result = succeeded(aftercare(*enrol_args()))

    match = RECORDED.search(result.stdout)
    assert match, result.stdout
    sessions, reminders = stored(aftercare.database_url)
    assert [s.id for s in sessions] == [int(match.group(1))]
    assert [s.patient_id for s in sessions] == [int(match.group(2))]
    planned = preview_json(
        aftercare,
        "--treated-at",
        ENROL_FLAGS["--treated-at"],
        "--timezone",
        "Europe/London",
        "--now",
        NOW.isoformat(),
    )
    assert {(r.step, r.channel, r.due_at) for r in reminders} == {
        (row["step"], row["channel"], datetime.fromisoformat(row["due_utc"])) for row in planned
    }


def test_enrol_when_the_database_is_not_migrated_then_fails_telling_to_run_migrate(
    aftercare: Aftercare,
) -> None:
    result = aftercare(*enrol_args())

    assert result.exit_code != 0
    assert "aftercare migrate" in result.stderr
    assert RECORDED.search(result.stdout) is None


def test_enrol_when_on_the_embedded_default_then_migrates_by_itself(
    aftercare: Aftercare, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AFTERCARE_DATABASE_URL")

    succeeded(aftercare(*enrol_args()))

    sessions, reminders = stored(f"sqlite:///{aftercare.data_dir / 'aftercare.sqlite3'}")
    assert len(sessions) == 1
    assert reminders


# --- check ------------------------------------------------------------------------------------


def test_check_when_the_shipped_files_are_used_then_passes(aftercare: Aftercare) -> None:
    result = succeeded(aftercare("check"))

    assert "regimen micro-sclerotherapy" in result.stdout
    assert "triage (" in result.stdout
    assert "All regimens and templates are valid." in result.stdout
    assert not result.stderr


def test_check_when_sms_templates_are_broken_then_fails_naming_each_file(
    aftercare: Aftercare, tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "templates", templates)
    undefined = templates / "sms" / "keep-moving.txt"
    undefined.write_text("{{ clinic_name }}: Hi {{ frist_name }}, keep moving.\n")
    too_long = templates / "sms" / "sun.txt"
    too_long.write_text("{{ clinic_name }}: " + "Cover your legs in the sun. " * 15 + "\n")

    result = aftercare("check", AFTERCARE_TEMPLATES_DIR=str(templates))

    assert result.exit_code != 0
    assert f"{undefined}:1: undefined: 'frist_name' is undefined" in result.stderr
    assert f"{too_long}: SMS body is GSM-7" in result.stderr
    assert "3 segment(s); it must be GSM-7 in at most 2" in result.stderr


def test_check_when_a_regimen_is_malformed_then_fails_naming_file_key_and_reason(
    aftercare: Aftercare, tmp_path: Path
) -> None:
    schedules = tmp_path / "schedules"
    schedules.mkdir()
    regimen = schedules / "micro-sclerotherapy.yaml"
    shipped = (REPO / "schedules" / "micro-sclerotherapy.yaml").read_text()
    assert shipped.count("valid_for: 4h") == 1
    regimen.write_text(shipped.replace("valid_for: 4h", "valid_for: soon"))

    result = aftercare("check", AFTERCARE_SCHEDULES_DIR=str(schedules))

    assert result.exit_code != 0
    assert str(regimen) in result.stderr
    assert "steps[4].valid_for: must be a duration" in result.stderr


def test_check_when_the_triage_vocabulary_is_malformed_then_fails_naming_file_key_and_reason(
    aftercare: Aftercare, tmp_path: Path
) -> None:
    schedules = tmp_path / "schedules"
    shutil.copytree(REPO / "schedules", schedules)
    vocabulary = schedules / "triage" / "vocabulary.yaml"
    shipped = vocabulary.read_text(encoding="utf-8")
    vocabulary.write_text(shipped.replace("- $CHEST ~3 $PAIN", "- $CHEST ~3 $AGONY", 1))

    result = aftercare("check", AFTERCARE_SCHEDULES_DIR=str(schedules))

    assert result.exit_code != 0
    assert f"{vocabulary}: signs.chest_pain.patterns.0: '$AGONY': no such group" in result.stderr


# --- worker -----------------------------------------------------------------------------------


@pytest.mark.parametrize("queues", ["mail", "dispatch,mail", "", "aftercare.other"])
def test_worker_when_queues_is_unknown_then_exits_2_naming_it_and_starts_nothing(
    aftercare: Aftercare, queues: str
) -> None:
    line = one_error_line(aftercare("worker", "--queues", queues))

    assert line.startswith("error: queues: unknown queue ")
    assert not aftercare.db_path.exists()


def test_worker_queues_take_short_or_full_names_in_the_order_given() -> None:
    assert parse_queues("dispatch,send") == [DISPATCH_QUEUE, SEND_QUEUE]
    assert parse_queues(" send ") == [SEND_QUEUE]
    assert parse_queues(f"{DISPATCH_QUEUE},dispatch") == [DISPATCH_QUEUE]
