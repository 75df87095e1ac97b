"""``aftercare import FILE.csv``: every row is validated as enrolment validates it; good rows are
stored with exactly the planner's reminders; each bad row is reported by row, field and reason
and leaves nothing behind; a file that cannot be read at all exits 2 with one line. Tests that
store run on SQLite and on PostgreSQL."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from aftercare.cli.main import cli
from aftercare.planning.planner import PlannedReminder, plan
from aftercare.planning.quiet import QuietHours
from aftercare.regimens.loader import RegimenRegistry
from aftercare.runtime import Runtime, get_runtime, set_runtime
from aftercare.sessions import import_store, importer
from aftercare.sessions.service import record_session
from aftercare.storage.db import Database
from aftercare.storage.models import AuditEvent, Base, Patient, Reminder, TreatmentSession

REPO = Path(__file__).resolve().parents[2]
# The CLI's clock (AFTERCARE_CLOCK=file:...) and the ``clock`` fixture read this instant.
NOW = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)
REGISTRY = RegimenRegistry.load(REPO / "schedules")
QUIET = QuietHours.parse("21:00-08:00")
HEADER = [
    "name",
    "phone",
    "email",
    "timezone",
    "channels",
    "treated_at",
    "regimen",
    "daily_days",
    "checkin_week",
    "consent",
    "contraindications_checked",
]
ZONES = ["Europe/London", "Europe/Paris", "America/New_York", "Australia/Sydney"]


def good_row(index: int, **changes: str) -> dict[str, str]:
    """A valid row; the index varies the patient, zone, channels, parameters and treatment time
    (from nine days before NOW to twenty hours after it)."""
    values = {
        "name": f"Patient {index}",
        "phone": f"07911 {100000 + index}",
        "email": f"patient{index}@example.org",
        "timezone": ZONES[index % 4],
        "channels": ["sms,email", "sms", "email", ""][index % 4],
        "treated_at": (NOW + timedelta(hours=20) - timedelta(hours=5 * index)).isoformat(),
        "regimen": ["micro-sclerotherapy", ""][index % 2],
        "daily_days": ["7", "14", ""][index % 3],
        "checkin_week": ["8", "13", ""][index % 3],
        "consent": ["yes", "TRUE", "1"][index % 3],
        "contraindications_checked": ["Yes", "true", "1"][index % 3],
    }
    values.update(changes)
    return values


def write_csv(path: Path, rows: list[dict[str, str]], header: list[str] = HEADER) -> Path:
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows([row.get(column, "") for column in header] for row in rows)
    return path


def expected_plan(row: dict[str, str], default_timezone: str = "Europe/London") -> set[Any]:
    """The planner's reminders for a row, computed here without the importer."""
    regimen = REGISTRY.get(row["regimen"] or "micro-sclerotherapy")
    treated_at = datetime.fromisoformat(row["treated_at"])
    given = {name: row[name] for name in ("daily_days", "checkin_week") if row.get(name)}
    channels = row["channels"].split(",") if row["channels"] else ["sms", "email"]
    planned = plan(
        regimen=regimen,
        treated_at=treated_at,
        timezone=row["timezone"] or default_timezone,
        parameters=regimen.resolve_parameters(dict(given)),
        channels=tuple(c for c in ("sms", "email") if c in channels),
        quiet=QUIET,
        recorded_at=max(NOW, treated_at),
    )
    return {_planned_key(r) for r in planned}


def _planned_key(r: PlannedReminder) -> tuple[Any, ...]:
    return (
        r.step,
        r.occurrence,
        r.channel,
        r.template,
        r.nominal_utc,
        r.due_utc,
        r.expires_utc,
        r.critical,
        r.state,
    )


def _stored_key(r: Reminder) -> tuple[Any, ...]:
    return (
        r.step,
        r.occurrence,
        r.channel,
        r.template,
        r.nominal_at,
        r.due_at,
        r.expires_at,
        r.critical,
        r.state,
    )


@dataclass
class Aftercare:
    """The CLI on a private data folder, against one test database."""

    database_url: str
    folder: Path

    def __call__(self, *args: str) -> Result:
        set_runtime(None)  # settings are re-read from the environment on every invocation
        try:
            return CliRunner().invoke(cli, list(args))
        finally:
            runtime = get_runtime()
            if "db" in vars(runtime):  # the command opened the database
                runtime.db.dispose()
            set_runtime(None)

    @contextmanager
    def stored(self) -> Iterator[Session]:
        db = Database(self.database_url)
        try:
            with db.session() as db_session:
                yield db_session
        finally:
            db.dispose()

    def patients_by_name(self) -> dict[str, list[Reminder]]:
        """Each stored patient's name -> the reminders of their (one) session."""
        with self.stored() as db_session:
            return {
                patient.name: list(session.reminders)
                for patient in db_session.scalars(select(Patient))
                for session in patient.sessions
            }

    def row_counts(self) -> dict[str, int]:
        with self.stored() as db_session:
            return {
                table.name: db_session.scalar(select(func.count()).select_from(table)) or 0
                for table in Base.metadata.sorted_tables
            }


@pytest.fixture
def aftercare(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Aftercare]:
    for name in list(os.environ):
        if name.startswith("AFTERCARE_") and not name.startswith("AFTERCARE_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env file
    clock_file = tmp_path / "clock"
    clock_file.write_text(NOW.isoformat(), encoding="utf-8")
    monkeypatch.setenv("AFTERCARE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AFTERCARE_DATABASE_URL", database_url)
    monkeypatch.setenv("AFTERCARE_CLOCK", f"file:{clock_file}")
    app = Aftercare(database_url=database_url, folder=tmp_path)
    succeeded(app("migrate"))
    yield app
    set_runtime(None)


def succeeded(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}"
    return result


def one_error_line(result: Result) -> str:
    assert result.exit_code == 2, f"exit {result.exit_code}\n{result.output}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def read_report(path: Path) -> list[tuple[int, str, str]]:
    with path.open(encoding="utf-8", newline="") as report:
        rows = list(csv.reader(report))
    assert rows[0] == ["row", "field", "error"]
    return [(int(row), field, error) for row, field, error in rows[1:]]


# --- good files -------------------------------------------------------------------------------


def test_import_when_every_row_is_good_then_stores_each_session_with_the_planners_reminders(
    aftercare: Aftercare,
) -> None:
    rows = [good_row(i) for i in range(50)]
    path = write_csv(aftercare.folder / "sessions.csv", rows)

    result = succeeded(aftercare("import", str(path)))

    report = aftercare.folder / "sessions.errors.csv"
    assert result.stdout.strip().splitlines()[-1] == (
        f"imported 50 sessions, 0 rows refused; report: {report}"
    )
    assert read_report(report) == []
    stored = aftercare.patients_by_name()
    assert sorted(stored) == sorted(row["name"] for row in rows)
    for row in rows:
        assert {_stored_key(r) for r in stored[row["name"]]} == expected_plan(row), row["name"]
    counts = aftercare.row_counts()
    assert counts["treatment_sessions"] == 50
    assert counts["audit_log"] == 50


def test_import_when_a_session_is_imported_then_it_is_stored_as_enrolment_stores_it(
    aftercare: Aftercare,
) -> None:
    # Treated five days ago: some reminders are skipped (catch-up), the rest scheduled.
    path = write_csv(aftercare.folder / "one.csv", [good_row(28, daily_days="7")])
    succeeded(aftercare("import", str(path)))
    read = importer.read_csv(path.read_bytes(), columns=importer.known_columns(REGISTRY))
    checked = importer.check_rows(
        read, registry=REGISTRY, quiet=QUIET, now=NOW, default_timezone="Europe/London"
    )
    db = Database(aftercare.database_url)
    try:
        with db.session() as db_session:
            record_session(db_session=db_session, valid=checked.good[0].valid, now=NOW)
    finally:
        db.dispose()

    skip = {"id", "patient_id", "session_id", "public_id"}

    def columns(row: Any) -> dict[str, Any]:
        return {c.key: getattr(row, c.key) for c in row.__table__.columns if c.key not in skip}

    with aftercare.stored() as db_session:
        imported, enrolled = db_session.scalars(
            select(TreatmentSession).order_by(TreatmentSession.id)
        ).all()
        assert columns(imported) == columns(enrolled)
        assert columns(imported.patient) == columns(enrolled.patient)
        assert {r.state for r in imported.reminders} == {"scheduled", "skipped"}
        assert sorted(map(columns, imported.reminders), key=repr) == sorted(
            map(columns, enrolled.reminders), key=repr
        )
        (event,) = db_session.scalars(select(AuditEvent)).all()
        assert (event.action, event.session_id, event.patient_id) == (
            "import",
            imported.id,
            imported.patient_id,
        )


def test_import_when_a_file_has_a_bom_and_crlf_lines_then_it_is_read(aftercare: Aftercare) -> None:
    path = aftercare.folder / "excel.csv"
    text = ",".join(HEADER) + "\r\n" + ",".join(f'"{v}"' for v in good_row(1).values()) + "\r\n"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))

    result = succeeded(aftercare("import", str(path)))

    assert "imported 1 sessions, 0 rows refused" in result.stdout


def test_import_when_a_row_has_no_timezone_then_the_default_timezone_option_is_used(
    aftercare: Aftercare,
) -> None:
    path = write_csv(aftercare.folder / "s.csv", [good_row(1, timezone="")])

    succeeded(aftercare("import", str(path), "--default-timezone", "America/Chicago"))

    with aftercare.stored() as db_session:
        assert db_session.scalars(select(Patient.timezone)).all() == ["America/Chicago"]


def test_store_when_chunks_are_small_then_each_session_gets_its_own_reminders(
    runtime: Runtime, tmp_path: Path
) -> None:
    rows = [good_row(i) for i in range(10)]
    path = write_csv(tmp_path / "s.csv", rows)
    read = importer.read_csv(path.read_bytes(), columns=importer.known_columns(REGISTRY))
    checked = importer.check_rows(
        read, registry=REGISTRY, quiet=QUIET, now=NOW, default_timezone="Europe/London"
    )
    advanced: list[int] = []

    stored = import_store.store(
        checked.good, db=runtime.db, now=NOW, chunk_size=3, progress=advanced.append
    )

    assert stored == 10
    assert advanced == [3, 3, 3, 1]
    with runtime.db.session() as db_session:
        for patient in db_session.scalars(select(Patient)):
            row = rows[int(patient.name.split()[-1])]
            (session,) = patient.sessions
            assert session.treated_at == datetime.fromisoformat(row["treated_at"])
            assert {_stored_key(r) for r in session.reminders} == expected_plan(row)


# --- bad rows ---------------------------------------------------------------------------------

# (changes to a good row, the field the report names, words in the reason)
BAD_ROWS: list[tuple[dict[str, str], str, str]] = [
    ({"phone": "12345"}, "phone", "phone number"),
    ({"timezone": "Mars/Olympus"}, "timezone", "IANA time zone"),
    ({"consent": "no"}, "consent", "consent"),
    ({"contraindications_checked": ""}, "contraindications_checked", "contraindication"),
    ({"daily_days": "10"}, "daily_days", "must be one of 7, 14"),
    ({"treated_at": "2026-03-01T09:00"}, "treated_at", "UTC offset"),
    ({"regimen": "botox"}, "regimen", "unknown regimen 'botox'"),
    ({"email": "not-an-email", "channels": "email"}, "email", "not a valid email"),
    ({"channels": "fax"}, "channels", "'sms' or 'email'"),
]


def test_import_when_some_rows_are_bad_then_stores_only_the_good_rows_and_reports_each_bad_one(
    aftercare: Aftercare,
) -> None:
    first = good_row(0)
    rows = [
        first,
        *(good_row(10 + i, **changes) for i, (changes, _, _) in enumerate(BAD_ROWS)),
        # The same patient (same phone) and treatment time as the first row, another name.
        good_row(90, phone=first["phone"], treated_at=first["treated_at"]),
        good_row(1),
    ]
    path = write_csv(aftercare.folder / "mixed.csv", rows)

    result = aftercare("import", str(path), "--report", "out/report.csv")

    assert result.exit_code == 1, result.output
    refused = len(BAD_ROWS) + 1
    assert result.stdout.strip().splitlines()[-1] == (
        f"imported 2 sessions, {refused} rows refused; report: out/report.csv"
    )
    report = read_report(aftercare.folder / "out" / "report.csv")
    # Row numbers as in the file: the header is row 1, the first good row is row 2.
    assert [(row, field) for row, field, _ in report] == [
        (3 + i, field) for i, (_, field, _) in enumerate(BAD_ROWS)
    ] + [(3 + len(BAD_ROWS), "phone")]
    for (_, _, reason), (_, _, words) in zip(report, BAD_ROWS, strict=False):
        assert words in reason
    assert report[-1][2] == "duplicate of row 2: same patient and treatment time"
    assert sorted(aftercare.patients_by_name()) == ["Patient 0", "Patient 1"]
    counts = aftercare.row_counts()
    assert counts["patients"] == counts["treatment_sessions"] == counts["audit_log"] == 2


def test_import_when_a_row_has_the_wrong_number_of_cells_then_that_row_is_refused(
    aftercare: Aftercare,
) -> None:
    path = aftercare.folder / "ragged.csv"
    write_csv(path, [good_row(1)])
    with path.open("a", encoding="utf-8") as out:
        out.write("Someone,07911 123456\n")

    result = aftercare("import", str(path))

    assert result.exit_code == 1
    assert read_report(aftercare.folder / "ragged.errors.csv") == [
        (3, "row", f"has 2 cells; the header has {len(HEADER)}")
    ]
    assert list(aftercare.patients_by_name()) == ["Patient 1"]


def test_import_when_the_same_file_is_imported_twice_then_no_session_is_stored_twice(
    aftercare: Aftercare,
) -> None:
    path = write_csv(aftercare.folder / "s.csv", [good_row(i) for i in range(4)])
    succeeded(aftercare("import", str(path)))

    again = aftercare("import", str(path))

    assert again.exit_code == 1
    assert "imported 0 sessions, 4 rows refused" in again.stdout
    reasons = [reason for _, _, reason in read_report(aftercare.folder / "s.errors.csv")]
    assert len(reasons) == 4
    assert all(reason.startswith("already imported") for reason in reasons)
    assert aftercare.row_counts()["treatment_sessions"] == 4


def test_report_when_a_cell_would_run_as_a_spreadsheet_formula_then_it_is_quoted(
    tmp_path: Path,
) -> None:
    errors = [
        importer.RowError(2, "name", '=HYPERLINK("http://evil.example","click")'),
        importer.RowError(3, "+phone", "+1 is not a number"),
        importer.RowError(4, "email", "-2+3"),
        importer.RowError(5, "email", "@SUM(A1:A9)"),
        importer.RowError(6, "timezone", "is not an IANA time zone"),
    ]

    importer.write_report(errors, tmp_path / "r.csv")

    assert read_report(tmp_path / "r.csv") == [
        (2, "name", '\'=HYPERLINK("http://evil.example","click")'),
        (3, "'+phone", "'+1 is not a number"),
        (4, "email", "'-2+3"),
        (5, "email", "'@SUM(A1:A9)"),
        (6, "timezone", "is not an IANA time zone"),
    ]


def test_import_when_bad_cells_look_like_formulas_then_no_report_cell_starts_a_formula(
    aftercare: Aftercare,
) -> None:
    formula = '=HYPERLINK("http://evil.example")'
    rows = [good_row(1, timezone=formula, email="@SUM(A1)", daily_days="-1+1", name=formula)]
    path = write_csv(aftercare.folder / "evil.csv", rows)

    assert aftercare("import", str(path)).exit_code == 1

    report = read_report(aftercare.folder / "evil.errors.csv")
    assert {field for _, field, _ in report} == {"timezone", "email", "daily_days"}
    assert not any(cell.startswith(("=", "+", "-", "@")) for _, f, e in report for cell in (f, e))


# --- dry run and empty files ------------------------------------------------------------------


def test_import_dry_run_when_rows_are_good_then_shows_what_would_be_imported_and_stores_nothing(
    aftercare: Aftercare,
) -> None:
    rows = [good_row(i) for i in range(6)] + [good_row(7, phone="12345")]
    path = write_csv(aftercare.folder / "s.csv", rows)

    result = aftercare("import", str(path), "--dry-run")

    assert result.exit_code == 1, result.output
    lines = result.stdout.strip().splitlines()
    report = aftercare.folder / "s.errors.csv"
    assert lines[0] == (
        f"dry run, nothing stored: would import 6 sessions, 1 rows refused; report: {report}"
    )
    to_send = sum(1 for row in rows[:6] for key in expected_plan(row) if key[-1] == "scheduled")
    assert lines[1:] == [f"  micro-sclerotherapy: 6 sessions, {to_send} reminders to send"]
    assert [(row, field) for row, field, _ in read_report(report)] == [(8, "phone")]
    assert set(aftercare.row_counts().values()) == {0}


def test_import_dry_run_when_on_the_embedded_default_then_creates_no_database(
    aftercare: Aftercare, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AFTERCARE_DATABASE_URL")
    path = write_csv(aftercare.folder / "s.csv", [good_row(1)])

    result = succeeded(aftercare("import", str(path), "--dry-run"))

    assert "would import 1 sessions, 0 rows refused" in result.stdout
    assert not (aftercare.folder / "data" / "aftercare.sqlite3").exists()


def test_import_when_the_file_has_only_a_header_then_imports_nothing_and_says_so(
    aftercare: Aftercare,
) -> None:
    path = write_csv(aftercare.folder / "empty.csv", [])

    result = succeeded(aftercare("import", str(path)))

    assert "has a header but no rows: nothing to import" in result.stdout
    assert "imported 0 sessions, 0 rows refused" in result.stdout
    assert set(aftercare.row_counts().values()) == {0}


# --- files that cannot be imported at all: exit 2, one line, nothing stored --------------------


@pytest.mark.parametrize(
    ("content", "words"),
    [
        pytest.param(
            (",".join(HEADER) + "\nZo\xeb,07911 123456\n").encode("latin-1"),
            "is not UTF-8 text (byte 0xeb on line 2)",
            id="latin-1",
        ),
        pytest.param(
            (",".join(HEADER) + ",nhs_number\n").encode(),
            "unknown column 'nhs_number'",
            id="unknown-column",
        ),
        pytest.param(";".join(HEADER).encode() + b"\n", "is not comma-separated", id="semicolons"),
        pytest.param(
            b"name,treated_at,consent\n",
            "missing column 'contraindications_checked'",
            id="missing-column",
        ),
        pytest.param(b"name,name\n", "column 'name' appears twice", id="duplicate-column"),
        pytest.param(b"", "is empty", id="empty"),
        # An Excel workbook (a zip file) where a CSV export was meant.
        pytest.param(b"PK\x03\x04\x14\x00\x06\x00", "not a CSV file", id="xlsx"),
        pytest.param(b'name,phone\n"Jane"x,1\n', "is not a valid CSV file", id="bad-quoting"),
    ],
)
def test_import_when_the_file_cannot_be_read_then_exits_2_with_one_line_and_stores_nothing(
    aftercare: Aftercare, content: bytes, words: str
) -> None:
    path = aftercare.folder / "bad.csv"
    path.write_bytes(content)

    line = one_error_line(aftercare("import", str(path)))

    assert line.startswith(f"error: {path}: ")
    assert words in line
    assert not (aftercare.folder / "bad.errors.csv").exists()
    assert set(aftercare.row_counts().values()) == {0}


@pytest.mark.parametrize(
    ("args", "words"),
    [
        pytest.param(["missing.csv"], "missing.csv: cannot read it", id="missing-file"),
        pytest.param(
            ["s.csv", "--default-timezone", "Mars/Olympus"], "default-timezone: ", id="zone"
        ),
        pytest.param(["s.csv", "--report", "s.csv"], "--report: would overwrite", id="report"),
    ],
)
def test_import_when_an_argument_is_bad_then_exits_2_with_one_line(
    aftercare: Aftercare, args: list[str], words: str
) -> None:
    write_csv(aftercare.folder / "s.csv", [good_row(1)])

    line = one_error_line(aftercare("import", *args))

    assert words in line
    assert aftercare.row_counts()["patients"] == 0


@pytest.mark.parametrize("value", ["²", "١٤", "9" * 5000, "--7"])
def test_import_when_a_number_is_not_plain_ascii_digits_then_that_row_is_refused_by_name(
    aftercare: Aftercare, value: str
) -> None:
    """str.isdigit() accepts "²" and int() does not: such a cell is a row error, not a crash."""
    path = write_csv(aftercare.folder / "digits.csv", [good_row(0, daily_days=value), good_row(1)])

    result = aftercare("import", str(path), "--report", "report.csv")

    assert result.exit_code == 1, result.output
    report = read_report(aftercare.folder / "report.csv")
    assert [(row, field) for row, field, _ in report] == [(2, "daily_days")]
    assert "whole number" in report[0][2]
    assert sorted(aftercare.patients_by_name()) == ["Patient 1"]
