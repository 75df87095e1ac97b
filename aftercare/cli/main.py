"""The ``aftercare`` command. Bad input exits with code 2 and one line naming the field.

This module only assembles the commands; each lives with its kind: ``sessions`` (preview,
enrol), ``service`` (check, migrate, worker, dispatch, beat, run, demo), ``status``,
``importer`` (import) and ``staff``. What they share is in ``common``.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from aftercare.cli import service, sessions
from aftercare.cli.staff import staff_cli
from aftercare.private import private_umask

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


def _register() -> None:
    # In the order ``aftercare --help`` lists them.
    cli.command()(sessions.preview)
    cli.command()(sessions.enrol)
    cli.command()(service.check)
    cli.command()(service.migrate)
    cli.command()(service.worker)
    cli.command("dispatch")(service.dispatch_once)
    cli.command()(service.beat)
    cli.command()(service.run)
    cli.command()(service.demo)

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
