"""The ``aftercare`` command. Bad input exits with code 2 and one line naming the field."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated, NoReturn
from zoneinfo import ZoneInfo

import typer

from aftercare.cli.staff import staff_cli
from aftercare.planning.planner import PlannedReminder, plan
from aftercare.regimens.loader import RegimenError, RegimenRegistry
from aftercare.regimens.model import ParameterError
from aftercare.runtime import Runtime, get_runtime
from aftercare.sessions.validation import (
    ValidationFailed,
    clean_channels,
    clean_instant,
    clean_timezone,
)

cli = typer.Typer(
    name="aftercare",
    help="Aftercare: post-treatment reminders by SMS and email.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cli.add_typer(staff_cli, name="staff")

RegimenOpt = Annotated[str, typer.Option("--regimen", help="Regimen id.")]
TreatedOpt = Annotated[
    str | None, typer.Option("--treated-at", help="Treatment time, ISO-8601 with offset.")
]
ZoneOpt = Annotated[str | None, typer.Option("--timezone", help="Patient's IANA time zone.")]
DailyOpt = Annotated[
    int | None, typer.Option("--daily-days", help="Daytime wear phase in days (7 or 14).")
]
CheckinOpt = Annotated[int | None, typer.Option("--checkin-week", help="Check-in week (8-13).")]
ChannelsOpt = Annotated[str, typer.Option("--channels", help="Comma-separated: sms,email.")]


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
        str | None, typer.Option("--now", help="Plan as if recorded at this moment (catch-up).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """Show a session's planned timeline without storing anything."""
    rt = _runtime()
    registry = _registry(rt)
    try:
        zone_name = clean_timezone(timezone or rt.settings.default_timezone, ("timezone",))
        chosen = clean_channels(channels, ("channels",))
        treated = clean_instant(treated_at, ("treated_at",)) if treated_at else rt.clock.now()
        recorded = clean_instant(now, ("now",)) if now else treated
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
    if as_json:
        typer.echo(json.dumps(_timeline_rows(planned, zone), indent=2))
    else:
        _print_table(planned, zone)


@cli.command()
def enrol(
    name: Annotated[str, typer.Option("--name", help="Patient's name.")],
    phone: Annotated[str | None, typer.Option("--phone", help="Mobile number.")] = None,
    email: Annotated[str | None, typer.Option("--email", help="Email address.")] = None,
    regimen: RegimenOpt = "micro-sclerotherapy",
    treated_at: TreatedOpt = None,
    timezone: ZoneOpt = None,
    daily_days: DailyOpt = None,
    checkin_week: CheckinOpt = None,
    channels: ChannelsOpt = "sms,email",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Record a treatment session and plan its reminders (staff confirm consent and the
    contraindication checklist by running this)."""
    from aftercare.sessions.service import SessionRequest, record_session, validate_request

    rt = _runtime()
    registry = _registry(rt)
    now = rt.clock.now()
    request = SessionRequest(
        name=name,
        phone=phone,
        email=email,
        timezone=timezone or rt.settings.default_timezone,
        channels=channels,
        treated_at=treated_at or now.isoformat(),
        regimen=regimen,
        parameters=_parameters(daily_days, checkin_week),
    )
    try:
        valid = validate_request(request, registry=registry, quiet=rt.quiet, now=now)
    except ValidationFailed as exc:
        fail_validation(exc)
    _ensure_schema(rt)
    with rt.db.session() as db_session:
        session = record_session(db_session=db_session, valid=valid, now=now)
        session_id, patient_id = session.id, session.patient_id
    zone = ZoneInfo(valid.timezone)
    if as_json:
        out = {
            "id": session_id,
            "patient_id": patient_id,
            "reminders": _timeline_rows(valid.plan, zone),
        }
        typer.echo(json.dumps(out, indent=2))
        return
    typer.echo(f"Recorded session {session_id} for patient {patient_id}.")
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
    concurrency: Annotated[int | None, typer.Option(help="Worker processes/threads.")] = None,
    pool: Annotated[str | None, typer.Option(help="Celery pool: prefork, threads, solo.")] = None,
    loglevel: Annotated[str | None, typer.Option(help="Log level.")] = None,
    hostname: Annotated[
        str | None, typer.Option(help="Celery node name, e.g. w1@%h (one per worker on a host).")
    ] = None,
    queues: Annotated[
        str,
        typer.Option(
            help="Comma-separated: dispatch (claims due reminders, recovery, retention), send "
            "(delivers). Production: one 'dispatch' worker with --concurrency 1, 'send' workers "
            "as many as needed."
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
    argv = [
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
    """Claim due reminders once and hand their ids to the broker (beat does this every few
    seconds; this is for operators and scripts)."""
    from aftercare.reminders.dispatch import claim_order, dispatch_due
    from aftercare.worker.tasks import publish_send

    rt = _runtime()
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
    loglevel: Annotated[str | None, typer.Option(help="Log level.")] = None,
) -> None:
    """Run Celery beat (asks a worker to dispatch due reminders every few seconds)."""
    from aftercare.worker.app import app

    rt = _runtime()
    rt.settings.data_dir.mkdir(parents=True, exist_ok=True)
    app.start(["beat", f"--loglevel={loglevel or rt.settings.log_level}"])


@cli.command()
def run(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Run everything in one go (web app, worker and beat) on the embedded default."""
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
        Path | None, typer.Option(help="Folder for the demo's database and outbox.")
    ] = None,
    timezone: ZoneOpt = None,
    daily_days: DailyOpt = None,
) -> None:
    """Enrol a sample patient and play the whole regimen through the real pipeline, fast."""
    from aftercare.cli.demo import run_demo

    rt = _runtime()
    zone = timezone or rt.settings.default_timezone
    try:
        clean_timezone(zone, ("timezone",))
    except ValidationFailed as exc:
        fail(str(exc))
    raise typer.Exit(run_demo(data_dir=data_dir, timezone=zone, daily_days=daily_days))


def _register() -> None:
    from aftercare.cli.status import status_command

    cli.command("status")(status_command)

    from aftercare.cli.importer import import_command

    cli.command("import")(import_command)


_register()


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
