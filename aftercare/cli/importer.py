"""``aftercare import FILE.csv``: enrol many sessions from a spreadsheet export.

Exit codes: 0 every row imported (or the file has no rows); 1 some rows refused (the others are
imported) or the database failed; 2 the file or an option cannot be used at all (one line on
stderr, nothing stored). The columns and the policy are in docs/import.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from sqlalchemy.exc import SQLAlchemyError

from aftercare.regimens.loader import RegimenError, RegimenRegistry
from aftercare.runtime import Runtime, get_runtime
from aftercare.sessions import import_store, importer
from aftercare.validation import ValidationFailed, clean_timezone


def _fail(message: str) -> NoReturn:
    """Bad input: one line on stderr, exit code 2, nothing changed (as ``common.fail``)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _stop(message: str) -> NoReturn:
    """Not the input's fault (database, schema): one line on stderr, exit code 1."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def import_command(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE", help="The CSV file (columns: see docs/import.md).", show_default=False
        ),
    ],
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Validate and show what would be imported; store nothing."),
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            metavar="PATH",
            help="Where to write the error report (default: FILE.errors.csv).",
        ),
    ] = None,
    default_timezone: Annotated[
        str | None,
        typer.Option(
            "--default-timezone",
            metavar="ZONE",
            help="Zone for rows with an empty timezone (default: AFTERCARE_DEFAULT_TIMEZONE).",
        ),
    ] = None,
) -> None:
    """Enrol many sessions from a CSV file. Every row is validated first; a bad row is reported
    (row, field, reason) and nothing from it is stored; the good rows are imported."""
    rt = _runtime()
    registry = _registry(rt)
    zone = _zone(default_timezone or rt.settings.default_timezone)
    report_path = report or file.with_suffix(".errors.csv")
    if report_path.resolve() == file.resolve():
        _fail("--report: would overwrite the file being imported")
    rows = _read_rows(file, registry)

    now = rt.clock.now()
    if not dry_run:
        _ensure_schema(rt)
    with _progress("Validating", len(rows.rows)) as advance:
        checked = importer.check_rows(
            rows,
            registry=registry,
            quiet=rt.quiet,
            now=now,
            default_timezone=zone,
            progress=advance,
        )
    if not dry_run or _database_ready(rt):
        with _database(), rt.db.engine.connect() as connection:
            importer.refuse_already_stored(checked, connection=connection)
    try:
        importer.write_report(checked.errors, report_path)
    except OSError as exc:
        _fail(f"--report: cannot write {report_path} ({exc.strerror or exc})")

    if not rows.rows:
        typer.echo(f"{file} has a header but no rows: nothing to import.")
    if dry_run:
        _dry_run_summary(checked, report_path)

    with _progress("Storing", len(checked.good)) as advance:
        try:
            imported = import_store.store(
                checked.good, db=rt.db, now=now, progress=advance, registry=registry
            )
        except import_store.ImportInterrupted as exc:
            _stop(
                f"the database failed after {exc.stored} of {len(checked.good)} sessions were "
                f"stored ({exc.reason}); run the same file again: rows already imported are "
                "refused, never stored twice"
            )
    typer.echo(
        f"imported {imported} sessions, {checked.refused} rows refused; report: {report_path}"
    )
    raise typer.Exit(1 if checked.refused else 0)


def _read_rows(file: Path, registry: RegimenRegistry) -> importer.CsvRows:
    """The file's rows, or exit 2 naming why it cannot be read."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        _fail(f"{file}: cannot read it ({exc.strerror or exc})")
    try:
        return importer.read_csv(data, columns=importer.known_columns(registry))
    except importer.ImportFileError as exc:
        _fail(f"{file}: {exc}")


def _dry_run_summary(checked: importer.CheckedImport, report_path: Path) -> NoReturn:
    """What a dry run would import, by regimen; exits 1 if rows were refused."""
    typer.echo(
        f"dry run, nothing stored: would import {len(checked.good)} sessions, "
        f"{checked.refused} rows refused; report: {report_path}"
    )
    for regimen, (sessions, reminders) in checked.by_regimen().items():
        typer.echo(f"  {regimen}: {sessions} sessions, {reminders} reminders to send")
    raise typer.Exit(1 if checked.refused else 0)


def _runtime() -> Runtime:
    try:
        return get_runtime()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        _fail(f"configuration: {' '.join(str(exc).split())}")


def _registry(rt: Runtime) -> RegimenRegistry:
    try:
        return rt.registry
    except RegimenError as exc:
        _fail(str(exc))


def _zone(name: str) -> str:
    try:
        return clean_timezone(name, ("default-timezone",))
    except ValidationFailed as exc:
        _fail(f"default-timezone: {exc.errors[0].msg}")


def _ensure_schema(rt: Runtime) -> None:
    """Migrate the embedded SQLite database; refuse an outdated configured one."""
    from aftercare.storage.migrate import SchemaOutdated, ensure_schema

    with _database():
        try:
            ensure_schema(rt.db, auto=rt.settings.embedded)
        except SchemaOutdated as exc:
            _stop(str(exc))


def _database_ready(rt: Runtime) -> bool:
    """For a dry run: is there a current database to look for already-imported rows in?
    Never creates one (no database yet means nothing imported yet)."""
    from aftercare.storage.migrate import is_current

    url = rt.settings.effective_database_url
    if url.startswith("sqlite") and not Path(url.split("///", 1)[-1]).exists():
        return False
    with _database():
        return is_current(rt.db.engine)


@contextmanager
def _database() -> Iterator[None]:
    """A database that cannot be reached ends the command with one line, not a traceback."""
    try:
        yield
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        _stop(f"database: {first}")


@contextmanager
def _progress(label: str, total: int) -> Iterator[import_store.Progress]:
    """A progress bar on stderr when it is a terminal (hidden otherwise, e.g. in scripts)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    console = Console(stderr=True)
    bar = Progress(
        f"{label:<10}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    with bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)
