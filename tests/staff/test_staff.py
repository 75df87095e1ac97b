"""Staff accounts and API tokens: argon2 passwords, tokens shown once and stored hashed,
revocation, the ``aftercare staff`` commands and the first admin of ``aftercare run``."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from aftercare.cli.main import cli
from aftercare.cli.supervise import first_admin
from aftercare.runtime import Runtime
from aftercare.staff import service
from aftercare.storage.models import ApiToken, Base, StaffUser

NOW = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)
PASSWORD = "correct horse battery"


def add(rt: Runtime, email: str = "nurse@example.org", role: str = "staff") -> int:
    with rt.db.session() as s:
        return service.create_staff(
            db_session=s, email=email, password=PASSWORD, now=NOW, role=role
        ).id


def new_token(rt: Runtime, staff_id: int) -> str:
    with rt.db.session() as s:
        return service.issue_token(db_session=s, staff_id=staff_id, now=NOW)[1]


def owner(rt: Runtime, token: str) -> int | None:
    with rt.db.session() as s:
        user = service.staff_for_token(db_session=s, token=token, now=NOW)
        return user.id if user else None


# Pure helpers ---------------------------------------------------------------------------------


def test_password_is_hashed_with_argon2id_and_verified() -> None:
    hashed = service.hash_password(PASSWORD)
    assert hashed.startswith("$argon2id$")
    assert PASSWORD not in hashed
    assert service.verify_password(hashed, PASSWORD)
    assert not service.verify_password(hashed, PASSWORD + "!")
    assert not service.verify_password("not a hash", PASSWORD)


def test_password_shorter_than_twelve_characters_is_refused() -> None:
    with pytest.raises(service.StaffError, match="at least 12"):
        service.hash_password("short pass")


def test_generated_password_is_long_enough_and_random() -> None:
    first, second = service.generate_password(), service.generate_password()
    assert len(first) >= service.MIN_PASSWORD_LENGTH
    assert first != second


# Accounts --------------------------------------------------------------------------------------


def test_staff_member_is_added_with_a_normalised_email_and_can_log_in(runtime: Runtime) -> None:
    add(runtime, email="Nurse@Example.ORG")
    with runtime.db.session() as s:
        user = service.authenticate(db_session=s, email="nurse@example.org", password=PASSWORD)
        assert user is not None
        assert (user.email, user.role) == ("nurse@example.org", "staff")
        assert service.authenticate(db_session=s, email=user.email, password="wrong") is None
        assert (
            service.authenticate(db_session=s, email="who@example.org", password=PASSWORD) is None
        )


@pytest.mark.parametrize(
    ("email", "role", "message"),
    [
        ("nurse@example.org", "staff", "already exists"),
        ("NURSE@example.org", "staff", "already exists"),
        ("someone@example.org", "owner", "role"),
        ("not an email", "staff", "email"),
    ],
)
def test_bad_account_is_refused(runtime: Runtime, email: str, role: str, message: str) -> None:
    add(runtime)
    with runtime.db.session() as s, pytest.raises(service.StaffError, match=message):
        service.create_staff(db_session=s, email=email, password=PASSWORD, now=NOW, role=role)


def test_disabled_account_cannot_log_in_and_its_tokens_stop_working(runtime: Runtime) -> None:
    staff_id = add(runtime)
    token = new_token(runtime, staff_id)
    with runtime.db.session() as s:
        service.disable_staff(db_session=s, staff_id=staff_id, now=NOW)
    with runtime.db.session() as s:
        assert (
            service.authenticate(db_session=s, email="nurse@example.org", password=PASSWORD) is None
        )
    assert owner(runtime, token) is None


# Tokens ----------------------------------------------------------------------------------------


def test_token_is_stored_only_as_its_sha256_and_names_its_owner(runtime: Runtime) -> None:
    staff_id = add(runtime)
    token = new_token(runtime, staff_id)

    with runtime.db.session() as s:
        row = s.scalars(select(ApiToken)).one()
        assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
        assert token.startswith(row.prefix)
        for table in Base.metadata.sorted_tables:
            for values in s.execute(select(table)):
                assert token not in repr(tuple(values))
    assert owner(runtime, token) == staff_id
    assert owner(runtime, token + "x") is None
    assert owner(runtime, "") is None
    with runtime.db.session() as s:
        assert s.scalars(select(ApiToken)).one().last_used_at == NOW


def test_revoked_token_stops_working_and_others_do_not(runtime: Runtime) -> None:
    staff_id = add(runtime)
    kept, revoked = new_token(runtime, staff_id), new_token(runtime, staff_id)

    with runtime.db.session() as s:
        count = service.revoke_tokens(
            db_session=s, prefix=revoked[: service.PREFIX_LENGTH], now=NOW
        )

    assert count == 1
    assert owner(runtime, revoked) is None
    assert owner(runtime, kept) == staff_id


def test_revoking_by_a_short_prefix_is_refused(runtime: Runtime) -> None:
    with runtime.db.session() as s, pytest.raises(service.StaffError, match="prefix"):
        service.revoke_tokens(db_session=s, prefix="act_", now=NOW)


def test_first_admin_is_created_once_only_on_an_empty_staff_table(runtime: Runtime) -> None:
    with runtime.db.session() as s:
        created = service.ensure_first_admin(db_session=s, now=NOW)
    assert created is not None
    user, password = created
    assert user.role == "admin"
    with runtime.db.session() as s:
        assert service.authenticate(db_session=s, email=user.email, password=password)
        assert service.ensure_first_admin(db_session=s, now=NOW) is None


def test_aftercare_run_prints_the_first_admin_login_once(
    runtime: Runtime, capsys: pytest.CaptureFixture[str]
) -> None:
    first_admin(runtime, host="127.0.0.1", port=8000)
    out = capsys.readouterr().out
    match = re.search(r"one-time password: (\S+)", out)
    assert match is not None
    assert service.FIRST_ADMIN_EMAIL in out
    assert "http://127.0.0.1:8000/" in out
    with runtime.db.session() as s:
        assert service.authenticate(
            db_session=s, email=service.FIRST_ADMIN_EMAIL, password=match.group(1)
        )

    first_admin(runtime, host="127.0.0.1", port=8000)
    assert capsys.readouterr().out == ""


# The ``aftercare staff`` commands --------------------------------------------------------------


def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["staff", *args], input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_staff_add_prompts_for_a_hidden_confirmed_password(runtime: Runtime) -> None:
    code, out, err = run(
        "add",
        "doctor@example.org",
        "--role",
        "admin",
        "--name",
        "Dr Who",
        stdin=f"{PASSWORD}\n{PASSWORD}\n",
    )

    assert code == 0, err
    assert PASSWORD not in out + err
    assert "Added admin doctor@example.org" in out
    with runtime.db.session() as s:
        user = service.authenticate(db_session=s, email="doctor@example.org", password=PASSWORD)
        assert user is not None
        assert (user.role, user.name) == ("admin", "Dr Who")


def test_staff_add_with_a_short_password_exits_2_and_adds_nobody(runtime: Runtime) -> None:
    code, _, err = run("add", "doctor@example.org", stdin="too short\ntoo short\n")

    assert code == 2
    assert "at least 12 characters" in err
    with runtime.db.session() as s:
        assert s.scalars(select(StaffUser)).all() == []


def test_staff_add_generate_prints_a_one_time_password_that_works(runtime: Runtime) -> None:
    code, out, _ = run("add", "reception@example.org", "--generate")

    assert code == 0
    match = re.search(r"One-time password.*: (\S+)$", out, re.MULTILINE)
    assert match is not None
    with runtime.db.session() as s:
        assert service.authenticate(
            db_session=s, email="reception@example.org", password=match.group(1)
        )


def test_staff_add_twice_exits_2(runtime: Runtime) -> None:
    add(runtime, email="reception@example.org")
    code, _, err = run("add", "reception@example.org", "--generate")
    assert (code, err.strip()) == (
        2,
        "error: a staff account for reception@example.org already exists",
    )


def test_staff_token_prints_only_a_new_working_token_on_stdout(runtime: Runtime) -> None:
    staff_id = add(runtime)

    code, out, err = run("token", "nurse@example.org")

    assert code == 0, err
    token = out.strip()
    assert "\n" not in token
    assert owner(runtime, token) == staff_id
    assert run("token", "nurse@example.org")[1].strip() != token


def test_staff_token_for_an_unknown_email_exits_2(runtime: Runtime) -> None:
    code, out, err = run("token", "nobody@example.org")
    assert (code, out) == (2, "")
    assert "no staff account for nobody@example.org" in err


def test_staff_revoke_token_by_prefix(runtime: Runtime) -> None:
    token = new_token(runtime, add(runtime))

    code, out, _ = run("revoke-token", token[: service.PREFIX_LENGTH])

    assert (code, out.strip()) == (0, "Revoked 1 token(s).")
    assert owner(runtime, token) is None
    assert run("revoke-token", token[: service.PREFIX_LENGTH])[0] == 2


def test_staff_list_shows_roles_and_token_prefixes_but_no_secret(runtime: Runtime) -> None:
    token = new_token(runtime, add(runtime))

    code, out, _ = run("list")

    assert code == 0
    assert "nurse@example.org" in out
    assert token[: service.PREFIX_LENGTH] in out
    assert token not in out
