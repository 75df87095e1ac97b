"""``aftercare status``: readiness plus queue depth and due/overdue reminders, for operators."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer

from aftercare.ops.health import readiness
from aftercare.ops.status import work_status
from aftercare.runtime import get_runtime


def status_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show whether the service is ready, and how much work is waiting."""
    rt = get_runtime()
    ok, report = readiness(rt)
    work = asdict(work_status(rt)) if report["checks"]["database"]["ok"] else None
    if as_json:
        typer.echo(json.dumps({**report, "work": work}, indent=2))
    else:
        typer.echo(f"status: {report['status']}")
        for name, check in report["checks"].items():
            mark = "ok  " if check["ok"] else "FAIL"
            typer.echo(f"  {mark} {name:<11} {check['detail']}")
        if work is not None:
            depths = ", ".join(
                f"{q} {'?' if n is None else n}" for q, n in work["queue_depth"].items()
            )
            typer.echo(f"queues: {depths}")
            typer.echo(
                f"reminders: {work['due_next_hour']} due in the next hour, "
                f"{work['overdue']} overdue, {work['in_flight']} in flight; "
                f"{work['open_flags']} open flags"
            )
    raise typer.Exit(0 if ok else 1)
