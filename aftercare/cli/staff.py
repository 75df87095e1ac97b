"""``aftercare staff``: accounts and API tokens. Secrets are printed once and never stored."""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer
from sqlalchemy.orm import Session

from aftercare.runtime import Runtime, get_runtime
from aftercare.staff import service
from aftercare.storage.models import StaffUser

staff_cli = typer.Typer(
    name="staff",
    help="Staff accounts and API tokens.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EmailArg = Annotated[str, typer.Argument(metavar="EMAIL", help="The staff member's email address.")]


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _runtime() -> Runtime:
    from aftercare.storage.migrate import SchemaOutdated, ensure_schema

    try:
        rt = get_runtime()
        ensure_schema(rt.db, auto=rt.settings.embedded)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        _fail(f"configuration: {' '.join(str(exc).split())}")
    except SchemaOutdated as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    return rt


def _user(db_session: Session, email: str) -> StaffUser:
    user = service.get_by_email(db_session=db_session, email=email)
    if user is None:
        _fail(f"no staff account for {email}")
    return user


def _new_password(generate: bool) -> str:
    if generate:
        return service.generate_password()
    password: str = typer.prompt(
        f"Password (at least {service.MIN_PASSWORD_LENGTH} characters)",
        hide_input=True,
        confirmation_prompt=True,
        err=True,
    )
    return password


@staff_cli.command("add")
def add(
    email: EmailArg,
    role: Annotated[str, typer.Option("--role", metavar="ROLE", help="staff or admin.")] = "staff",
    name: Annotated[str, typer.Option("--name", metavar="NAME", help="Display name.")] = "",
    generate: Annotated[
        bool, typer.Option("--generate", help="Print a random one-time password instead.")
    ] = False,
) -> None:
    """Add a staff account.

    Prompts for a password, hidden and confirmed (or --generate one).
    """
    if role not in service.ROLES:
        _fail(f"role: must be one of {', '.join(service.ROLES)}")
    rt = _runtime()
    # Refuse a bad or taken address before asking for a password.
    try:
        address = service.normalise_email(email)
    except service.StaffError as exc:
        _fail(str(exc))
    with rt.db.session() as db_session:
        if service.get_by_email(db_session=db_session, email=address) is not None:
            _fail(f"a staff account for {address} already exists")
    password = _new_password(generate)
    try:
        with rt.db.session() as db_session:
            user = service.create_staff(
                db_session=db_session,
                email=email,
                password=password,
                now=rt.clock.now(),
                role=role,
                name=name,
            )
            user_id, address = user.id, user.email
    except service.StaffError as exc:
        _fail(str(exc))
    typer.echo(f"Added {role} {address} (id {user_id}).")
    if generate:
        typer.echo(f"One-time password (shown once; change it after logging in): {password}")


@staff_cli.command("password")
def password(
    email: EmailArg,
    generate: Annotated[
        bool, typer.Option("--generate", help="Print a random one-time password instead.")
    ] = False,
) -> None:
    """Set a staff member's password."""
    rt = _runtime()
    new = _new_password(generate)
    try:
        with rt.db.session() as db_session:
            service.set_password(
                db_session=db_session, staff_id=_user(db_session, email).id, password=new
            )
    except service.StaffError as exc:
        _fail(str(exc))
    typer.echo(f"Password changed for {email}.")
    if generate:
        typer.echo(f"One-time password (shown once): {new}")


@staff_cli.command("token")
def token(
    email: EmailArg,
    label: Annotated[
        str, typer.Option("--label", metavar="TEXT", help="What the token is for.")
    ] = "",
) -> None:
    """Print a new API token for this staff member.

    Only the token is printed, so scripts can capture it.

    It is shown once: only its hash is stored.
    """
    rt = _runtime()
    try:
        with rt.db.session() as db_session:
            row, secret = service.issue_token(
                db_session=db_session,
                staff_id=_user(db_session, email).id,
                now=rt.clock.now(),
                label=label,
            )
            prefix = row.prefix
    except service.StaffError as exc:
        _fail(str(exc))
    typer.echo(f"Token {prefix}… created; use it as: Authorization: Bearer <token>", err=True)
    typer.echo(secret)


@staff_cli.command("revoke-token")
def revoke_token(
    prefix: Annotated[
        str, typer.Argument(metavar="PREFIX", help="The token's prefix (see `staff list`).")
    ],
) -> None:
    """Revoke an API token by its prefix (or by the whole token)."""
    rt = _runtime()
    try:
        with rt.db.session() as db_session:
            count = service.revoke_tokens(db_session=db_session, prefix=prefix, now=rt.clock.now())
    except service.StaffError as exc:
        _fail(str(exc))
    if not count:
        _fail(f"no live token with prefix {prefix[: service.PREFIX_LENGTH]}")
    typer.echo(f"Revoked {count} token(s).")


@staff_cli.command("disable")
def disable(email: EmailArg) -> None:
    """Disable an account and revoke its tokens."""
    rt = _runtime()
    with rt.db.session() as db_session:
        service.disable_staff(
            db_session=db_session, staff_id=_user(db_session, email).id, now=rt.clock.now()
        )
    typer.echo(f"Disabled {email} and revoked its tokens.")


@staff_cli.command("list")
def list_staff() -> None:
    """List staff accounts and their live tokens (prefixes only)."""
    from sqlalchemy import select

    rt = _runtime()
    with rt.db.session() as db_session:
        users = db_session.scalars(select(StaffUser).order_by(StaffUser.id)).all()
        tokens = service.list_tokens(db_session=db_session)
        for user in users:
            state = " (disabled)" if user.disabled_at else ""
            live = [t.prefix for t in tokens if t.staff_id == user.id and t.revoked_at is None]
            typer.echo(
                f"{user.id:>4}  {user.role:<5}  {user.email}{state}"
                f"  tokens: {', '.join(live) or '-'}"
            )


@staff_cli.command("on-call")
def on_call(
    email: EmailArg,
    phone: Annotated[
        str,
        typer.Option("--phone", metavar="E164", help="Mobile for pages, e.g. +447700900123."),
    ],
) -> None:
    """Add a staff member to the end of the on-call rota.

    Someone already on call keeps their place and gets the new number.
    """
    from aftercare.oncall import rota

    rt = _runtime()
    try:
        with rt.db.session() as db_session:
            user, added = rota.put_on_call(
                db_session=db_session, email=email, phone=phone, now=rt.clock.now()
            )
            address, position, number = user.email, user.on_call_position, user.phone
    except rota.RotaError as exc:
        _fail(str(exc))
    what = "on call" if added else "already on call; mobile updated"
    typer.echo(f"{address} is {what} (position {position}, pages to {number}).")


@staff_cli.command("off-call")
def off_call(email: EmailArg) -> None:
    """Take a staff member off the on-call rota."""
    from aftercare.oncall import rota

    rt = _runtime()
    try:
        with rt.db.session() as db_session:
            user = rota.take_off_call(db_session=db_session, email=email, now=rt.clock.now())
            address = user.email
    except rota.RotaError as exc:
        _fail(str(exc))
    typer.echo(f"{address} is off call.")
