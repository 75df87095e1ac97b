"""Commands that run and look after the service: ``check``, ``migrate``, ``worker``,
``dispatch``, ``beat``, ``run`` (all of them in one go) and ``demo``."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from aftercare.cli.common import (
    DailyOpt,
    ZoneOpt,
    chosen_zone,
    ensure_schema,
    fail,
    load_registry,
    load_runtime,
)


def check() -> None:
    """Validate regimens and render every template with sample data."""
    from aftercare.cli.checks import run_checks

    rt = load_runtime()
    faults = run_checks(rt)
    if faults:
        for fault in faults:
            typer.echo(f"FAULT {fault}", err=True)
        raise typer.Exit(1)
    typer.echo("All regimens and templates are valid.")


def migrate() -> None:
    """Bring the database schema up to date (Alembic)."""
    from aftercare.storage.migrate import upgrade

    rt = load_runtime()
    upgrade(rt.settings.effective_database_url)
    typer.echo("Database is up to date.")


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
    rt = load_runtime()
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


def dispatch_once() -> None:
    """Claim due reminders once and hand their ids to the broker.

    Beat does this every few seconds; this is for operators and scripts.
    """
    from aftercare.reminders.dispatch import claim_order, dispatch_due, held_back_by
    from aftercare.worker.tasks import publish_send

    rt = load_runtime()
    held = held_back_by(rt.settings)
    if held is not None:
        typer.echo(f"error: dispatch held back: {held}", err=True)
        raise typer.Exit(1)
    ensure_schema(rt)
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


def beat(
    loglevel: Annotated[str | None, typer.Option(metavar="LEVEL", help="Log level.")] = None,
) -> None:
    """Run Celery beat (the dispatch timer).

    Beat asks a worker to dispatch due reminders every few seconds.
    """
    from aftercare.private import private_dir
    from aftercare.worker.app import app

    rt = load_runtime()
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


def run(
    host: Annotated[str, typer.Option(metavar="HOST", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", help="Port to listen on.")] = 8000,
) -> None:
    """Run the web app, a worker and beat in one go.

    For the embedded default (SQLite and a file broker under AFTERCARE_DATA_DIR).
    """
    from aftercare.cli.supervise import run_all
    from aftercare.triage.data import TriageDataError

    rt = load_runtime()
    load_registry(rt)
    try:
        rt.triage  # noqa: B018  (reads and checks the triage data before anything starts)
    except TriageDataError as exc:
        fail(str(exc))
    raise typer.Exit(run_all(rt, host=host, port=port))


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

    rt = load_runtime()
    zone = chosen_zone(timezone, rt)
    raise typer.Exit(run_demo(data_dir=data_dir, timezone=zone, daily_days=daily_days))
