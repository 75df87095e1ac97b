"""The ``aftercare`` command. Bad input exits with code 2 and one line naming the field."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, NoReturn
from zoneinfo import ZoneInfo

import typer

from aftercare.cli.staff import staff_cli
from aftercare.cli.typed import Refused, has_offset, read_channels, read_instant, read_zone
from aftercare.planning.planner import PlannedReminder, plan
from aftercare.private import private_umask
from aftercare.regimens.loader import RegimenError, RegimenRegistry
from aftercare.regimens.model import ParameterError
from aftercare.runtime import Runtime, get_runtime
from aftercare.sessions.validation import (
    ValidationFailed,
    clean_channels,
    clean_instant,
)

cli = typer.Typer(
    name="aftercare",
    help="Aftercare: post-treatment reminders by SMS and email.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help wraps to the terminal, at most 80 columns, one paragraph per docstring paragraph.
    context_settings={"max_content_width": 80, "help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)
cli.add_typer(staff_cli, name="staff")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"aftercare {version('aftercare')}")
        raise typer.Exit


@cli.callback()
def _main(
    _show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Aftercare: post-treatment reminders by SMS and email."""


RegimenOpt = Annotated[str, typer.Option("--regimen", metavar="ID", help="Regimen id.")]
TreatedOpt = Annotated[
    str | None,
    typer.Option(
        "--treated-at",
        metavar="TIME",
        help="Treatment time: 'now' (the default), a local time in --timezone "
        "('2026-03-27 15:00' or '27/03/2026 15:00'), or with an offset "
        "(2026-03-27T15:00+00:00).",
    ),
]
ZoneOpt = Annotated[
    str | None,
    typer.Option(
        "--timezone", metavar="ZONE", help="Patient's IANA time zone, e.g. Europe/London."
    ),
]
DailyOpt = Annotated[
    int | None,
    typer.Option("--daily-days", metavar="7|14", help="Daytime wear phase in days (7 or 14)."),
]
CheckinOpt = Annotated[
    int | None, typer.Option("--checkin-week", metavar="N", help="Check-in week (8-13).")
]
ChannelsOpt = Annotated[
    str, typer.Option("--channels", metavar="LIST", help="Comma-separated, any case: sms,email.")
]


def fail(message: str) -> NoReturn:
    """Bad input: one line on stderr, exit code 2, nothing changed."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def fail_validation(exc: ValidationFailed) -> NoReturn:
    """Report the first bad field by its flag's name (``patient.channels.0`` -> ``channels``)."""
    if not exc.errors:
        fail(str(exc))
    first = exc.errors[0]
    names = [part for part in first.loc if isinstance(part, str)]
    field = names[-1].replace("_", "-") if names else "input"
    fail(f"{field}: {first.msg}")


def _zone(timezone: str | None, rt: Runtime) -> str:
    try:
        return read_zone(timezone or rt.settings.default_timezone)
    except Refused as exc:
        fail(str(exc))


def _instant(text: str, *, zone: str, rt: Runtime, flag: str = "treated-at") -> datetime:
    """``text`` read as an instant: ``now``, a local time in ``zone`` or ISO-8601 with an offset."""
    try:
        value = read_instant(text, zone=zone, now=rt.clock.now(), flag=flag)
        return clean_instant(value, (flag,))
    except Refused as exc:
        fail(str(exc))
    except ValidationFailed as exc:
        fail_validation(exc)


def _read_back(text: str | None, value: datetime, *, zone: str, flag: str = "treated-at") -> None:
    """A time typed without an offset, shown back as the ISO-8601 instant it was read as."""
    if text is not None and text.strip() != value.isoformat() and not has_offset(text):
        typer.echo(f"{flag}: {text.strip()} read as {value.isoformat()} ({zone})", err=True)


def _runtime() -> Runtime:
    try:
        return get_runtime()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        fail(f"configuration: {' '.join(str(exc).split())}")


def _registry(rt: Runtime) -> RegimenRegistry:
    try:
        return rt.registry
    except RegimenError as exc:
        fail(str(exc))


def _parameters(daily_days: int | None, checkin_week: int | None) -> dict[str, object]:
    params: dict[str, object] = {}
    if daily_days is not None:
        params["daily_days"] = daily_days
    if checkin_week is not None:
        params["checkin_week"] = checkin_week
    return params


def _timeline_rows(planned: list[PlannedReminder], zone: ZoneInfo) -> list[dict[str, str]]:
    return [
        {
            "step": r.step,
            "channel": r.channel,
            "template": r.template,
            "due_utc": r.due_utc.isoformat(),
            "due_local": r.due_utc.astimezone(zone).isoformat(),
        }
        for r in planned
        if r.state == "scheduled"
    ]


def _print_table(planned: list[PlannedReminder], zone: ZoneInfo) -> None:
    header = f"{'due (local)':<22} {'due (UTC)':<17} {'step':<16} {'#':>2} {'channel':<7} state"
    typer.echo(header)
    typer.echo("-" * len(header))
    for r in planned:
        local = r.due_utc.astimezone(zone).strftime("%a %d %b %Y %H:%M")
        utc = r.due_utc.strftime("%Y-%m-%d %H:%M")
        typer.echo(
            f"{local:<22} {utc:<17} {r.step:<16} {r.occurrence + 1:>2} {r.channel:<7} {r.state}"
        )


@cli.command()
def preview(
    regimen: RegimenOpt = "micro-sclerotherapy",
    treated_at: TreatedOpt = None,
    timezone: ZoneOpt = None,
    daily_days: DailyOpt = None,
    checkin_week: CheckinOpt = None,
    channels: ChannelsOpt = "sms,email",
    now: Annotated[
        str | None,
        typer.Option(
            "--now", metavar="TIME", help="Plan as if recorded at this moment (catch-up)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """Show a session's planned timeline without storing anything."""
    rt = _runtime()
    registry = _registry(rt)
    zone_name = _zone(timezone, rt)
    treated = _instant(treated_at, zone=zone_name, rt=rt) if treated_at else rt.clock.now()
    recorded = _instant(now, zone=zone_name, rt=rt, flag="now") if now else treated
    try:
        chosen = clean_channels(read_channels(channels), ("channels",))
        the_regimen = registry.get(regimen)
        params = the_regimen.resolve_parameters(_parameters(daily_days, checkin_week))
    except ValidationFailed as exc:
        fail_validation(exc)
    except ParameterError as exc:
        fail(f"{exc.name.replace('_', '-')}: {exc.reason}")
    except KeyError as exc:
        fail(f"regimen: {exc.args[0]}")
    planned = plan(
        regimen=the_regimen,
        treated_at=treated,
        timezone=zone_name,
        parameters=params,
        channels=chosen,
        quiet=rt.quiet,
        recorded_at=max(recorded, treated),
    )
    zone = ZoneInfo(zone_name)
    _read_back(treated_at, treated, zone=zone_name)
    _read_back(now, recorded, zone=zone_name, flag="now")
    if as_json:
        typer.echo(json.dumps(_timeline_rows(planned, zone), indent=2))
    else:
        _print_table(planned, zone)


@cli.command()
def enrol(
    name: Annotated[str, typer.Option("--name", metavar="NAME", help="Patient's name.")],
    phone: Annotated[
        str | None, typer.Option("--phone", metavar="PHONE", help="Mobile number.")
    ] = None,
    email: Annotated[
        str | None, typer.Option("--email", metavar="EMAIL", help="Email address.")
    ] = None,
    regimen: RegimenOpt = "micro-sclerotherapy",
    treated_at: TreatedOpt = None,
    timezone: ZoneOpt = None,
    daily_days: DailyOpt = None,
    checkin_week: CheckinOpt = None,
    channels: ChannelsOpt = "sms,email",
    consent: Annotated[
        bool,
        typer.Option(
            "--consent", help="The patient agrees to receive aftercare messages (required)."
        ),
    ] = False,
    contraindications_checked: Annotated[
        bool,
        typer.Option(
            "--contraindications-checked",
            help="The contraindication checklist was confirmed with the patient (required).",
        ),
    ] = False,
    discreet: Annotated[
        bool | None,
        typer.Option(
            "--discreet/--no-discreet",
            help="Discreet messages: the first line of each SMS and each email subject say only "
            "that there is a message from the clinic (default: AFTERCARE_DISCREET_DEFAULT).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Record a treatment session and plan its reminders.

    As on the staff form, --consent and --contraindications-checked confirm that the patient
    agreed to messages and that the checklist was gone through with them. A patient already
    known (same phone, or email when there is none, and name) gets the session added to their
    course.
    """
    from aftercare.sessions.enrolment import enrol_planned
    from aftercare.sessions.service import SessionRequest, validate_request

    if not consent:
        fail("consent: confirm the patient agrees to aftercare messages with --consent")
    if not contraindications_checked:
        fail(
            "contraindications-checked: confirm the contraindication checklist with "
            "--contraindications-checked"
        )
    rt = _runtime()
    registry = _registry(rt)
    now = rt.clock.now()
    zone_name = _zone(timezone, rt)
    treated = _instant(treated_at, zone=zone_name, rt=rt) if treated_at else now
    request = SessionRequest(
        name=name,
        phone=phone,
        email=email,
        timezone=zone_name,
        channels=read_channels(channels),
        treated_at=treated,
        regimen=regimen,
        parameters=_parameters(daily_days, checkin_week),
        consent=consent,
        contraindications_checked=contraindications_checked,
        discreet=discreet,
    )
    try:
        valid = validate_request(request, registry=registry, quiet=rt.quiet, now=now)
    except ValidationFailed as exc:
        fail_validation(exc)
    _ensure_schema(rt)
    with rt.db.session() as db_session:
        enrolled = enrol_planned(
            db_session=db_session,
            request=request,
            registry=registry,
            quiet=rt.quiet,
            now=now,
            actor_id=None,
        )
        session_id, patient_id = enrolled.session.id, enrolled.session.patient_id
    zone = ZoneInfo(valid.timezone)
    _read_back(treated_at, treated, zone=zone_name)
    if as_json:
        out = {
            "id": session_id,
            "patient_id": patient_id,
            "matched_existing": enrolled.matched_existing,
            "reminders": _timeline_rows(valid.plan, zone),
        }
        typer.echo(json.dumps(out, indent=2))
        return
    known = " (already known: added to their course)" if enrolled.matched_existing else ""
    typer.echo(f"Recorded session {session_id} for patient {patient_id}{known}.")
    for superseded_id, count in sorted(enrolled.superseded.items()):
        typer.echo(f"Superseded {count} reminders of session {superseded_id}.")
    _print_table(valid.plan, zone)


def _ensure_schema(rt: Runtime) -> None:
    from aftercare.storage.migrate import SchemaOutdated, ensure_schema

    try:
        ensure_schema(rt.db, auto=rt.settings.embedded)
    except SchemaOutdated as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@cli.command()
def check() -> None:
    """Validate regimens and render every template with sample data."""
    from aftercare.cli.checks import run_checks

    rt = _runtime()
    faults = run_checks(rt)
    if faults:
        for fault in faults:
            typer.echo(f"FAULT {fault}", err=True)
        raise typer.Exit(1)
    typer.echo("All regimens and templates are valid.")


@cli.command()
def migrate() -> None:
    """Bring the database schema up to date (Alembic)."""
    from aftercare.storage.migrate import upgrade

    rt = _runtime()
    upgrade(rt.settings.effective_database_url)
    typer.echo("Database is up to date.")


@cli.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option(metavar="N", help="Worker processes/threads.")
    ] = None,
    pool: Annotated[
        str | None, typer.Option(metavar="POOL", help="Celery pool: prefork, threads, solo.")
    ] = None,
    loglevel: Annotated[str | None, typer.Option(metavar="LEVEL", help="Log level.")] = None,
    hostname: Annotated[
        str | None,
        typer.Option(
            metavar="NAME", help="Celery node name, e.g. w1@%h (one per worker on a host)."
        ),
    ] = None,
    queues: Annotated[
        str,
        typer.Option(
            metavar="LIST",
            help="Comma-separated: dispatch (claims due reminders, recovery, retention), send "
            "(delivers). Production: one 'dispatch' worker with --concurrency 1, 'send' workers "
            "as many as needed.",
        ),
    ] = "dispatch,send",
) -> None:
    """Run a Celery worker (delivers reminders)."""
    from aftercare.worker.app import app
    from aftercare.worker.celeryconfig import parse_queues

    try:
        chosen_queues = parse_queues(queues)
    except ValueError as exc:
        fail(f"queues: {exc}")
    rt = _runtime()
    if rt.settings.worker_metrics_port:
        from aftercare.ops.worker_metrics import serve_worker_metrics

        serve_worker_metrics(rt.settings)
    chosen_pool = pool or ("solo" if rt.settings.embedded else "prefork")
    _quiet_celery()
    argv = [
        # No banner: the logs are JSON lines, and the service says itself that it is ready.
        "--quiet",
        "worker",
        f"--loglevel={loglevel or rt.settings.log_level}",
        f"--queues={','.join(chosen_queues)}",
        f"--pool={chosen_pool}",
        f"--concurrency={concurrency or rt.settings.worker_concurrency}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")
    app.worker_main(argv)


@cli.command("dispatch")
def dispatch_once() -> None:
    """Claim due reminders once and hand their ids to the broker.

    Beat does this every few seconds; this is for operators and scripts.
    """
    from aftercare.reminders.dispatch import claim_order, dispatch_due, held_back_by
    from aftercare.worker.tasks import publish_send

    rt = _runtime()
    held = held_back_by(rt.settings)
    if held is not None:
        typer.echo(f"error: dispatch held back: {held}", err=True)
        raise typer.Exit(1)
    _ensure_schema(rt)
    summary = dispatch_due(
        db=rt.db,
        clock=rt.clock,
        publish=publish_send,
        batch_size=rt.settings.dispatch_batch,
        chunk_size=rt.settings.send_batch,
        time_budget=60.0,
        max_queued=rt.settings.dispatch_max_queued,
        stale_after=timedelta(seconds=rt.settings.stale_after),
        order=claim_order(rt.settings),
    )
    typer.echo(json.dumps(summary.as_dict()))


@cli.command()
def beat(
    loglevel: Annotated[str | None, typer.Option(metavar="LEVEL", help="Log level.")] = None,
) -> None:
    """Run Celery beat (the dispatch timer).

    Beat asks a worker to dispatch due reminders every few seconds.
    """
    from aftercare.private import private_dir
    from aftercare.worker.app import app

    rt = _runtime()
    private_dir(rt.settings.data_dir)
    _quiet_celery(worker=False)
    app.start(["--quiet", "beat", f"--loglevel={loglevel or rt.settings.log_level}"])


def _quiet_celery(*, worker: bool = True) -> None:
    """One line, not Celery's seven, when a worker runs as root (Celery warns even with
    JSON-only content, which cannot run code; the Docker image runs as an ordinary user)."""
    import os
    import warnings

    from celery.exceptions import SecurityWarning

    warnings.filterwarnings("ignore", category=SecurityWarning)
    if worker and hasattr(os, "geteuid") and os.geteuid() == 0:
        typer.echo(
            "warning: running as root; in production run Aftercare as its own user", err=True
        )


@cli.command()
def run(
    host: Annotated[str, typer.Option(metavar="HOST", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", help="Port to listen on.")] = 8000,
) -> None:
    """Run the web app, a worker and beat in one go.

    For the embedded default (SQLite and a file broker under AFTERCARE_DATA_DIR).
    """
    from aftercare.cli.supervise import run_all
    from aftercare.triage.data import TriageDataError

    rt = _runtime()
    _registry(rt)
    try:
        rt.triage  # noqa: B018  (reads and checks the triage data before anything starts)
    except TriageDataError as exc:
        fail(str(exc))
    raise typer.Exit(run_all(rt, host=host, port=port))


@cli.command()
def demo(
    data_dir: Annotated[
        Path | None, typer.Option(metavar="DIR", help="Folder for the demo's database and outbox.")
    ] = None,
    timezone: ZoneOpt = None,
    daily_days: DailyOpt = None,
) -> None:
    """Play a sample patient's whole regimen, fast.

    Enrols a sample patient and plays the regimen through the real pipeline in accelerated
    time, printing each message as it is delivered.
    """
    from aftercare.cli.demo import run_demo

    rt = _runtime()
    zone = _zone(timezone, rt)
    raise typer.Exit(run_demo(data_dir=data_dir, timezone=zone, daily_days=daily_days))


def _register() -> None:
    from aftercare.cli.status import status_command

    cli.command("status")(status_command)

    from aftercare.cli.importer import import_command

    cli.command("import")(import_command)


_register()


def main() -> None:
    # Everything an aftercare process creates (database, WAL, outbox, broker messages, beat's
    # schedule) holds or sits beside patient data: its user's alone, whatever the shell's umask.
    private_umask()
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
