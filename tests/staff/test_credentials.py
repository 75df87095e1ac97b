"""Staff passwords and the signing key are checked for strength, not only for length.

A staff password must be at least 12 characters and not easy to guess (zxcvbn score 3 or more,
with the account's own email and name counted as known words); the signing key set by an
operator must be at least 32 characters with at least 128 bits by its character frequencies,
so `AFTERCARE_SECRET_KEY=x`, a placeholder or a long repeated word fails at start-up.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sqlalchemy import select
from typer.testing import CliRunner

from aftercare.cli.main import cli
from aftercare.runtime import Runtime
from aftercare.settings import Settings
from aftercare.staff import service
from aftercare.storage.models import StaffUser

WEAK = [
    "password1234",
    "Password1234",
    "qwertyuiop12",
    "aaaaaaaaaaaa",
    "123456789012",
    "clinicclinic12",
    "iloveyou2026",
    "letmein12345",
]


@pytest.mark.parametrize("password", WEAK)
def test_a_common_or_patterned_password_is_refused_saying_why(password: str) -> None:
    with pytest.raises(service.StaffError, match="too easy to guess"):
        service.hash_password(password)


def test_a_password_made_of_the_accounts_own_email_or_name_is_refused(runtime: Runtime) -> None:
    with runtime.db.session() as s:
        for password in ("nora.nightingale", "NoraNightingale1"):
            with pytest.raises(service.StaffError, match="too easy to guess"):
                service.create_staff(
                    db_session=s,
                    email="nora.nightingale@example.org",
                    name="Nora Nightingale",
                    password=password,
                    now=runtime.clock.now(),
                )
        assert s.scalars(select(StaffUser)).all() == []


@pytest.mark.parametrize(
    "password", ["correct horse battery", "a long enough password", "vein-Kettle-41-orbit"]
)
def test_a_password_that_is_hard_to_guess_is_accepted(password: str) -> None:
    assert service.verify_password(service.hash_password(password), password)


def test_generated_passwords_always_pass_the_strength_check() -> None:
    for _ in range(50):
        service.check_password_strength(service.generate_password())


def test_staff_add_with_a_common_password_exits_2_and_adds_nobody(runtime: Runtime) -> None:
    result = CliRunner().invoke(
        cli, ["staff", "add", "doctor@example.org"], input="password1234\npassword1234\n"
    )
    assert result.exit_code == 2
    assert "too easy to guess" in result.stderr
    assert "password1234" not in result.stdout + result.stderr
    with runtime.db.session() as s:
        assert s.scalars(select(StaffUser)).all() == []


@pytest.mark.parametrize("name", ["Nora\u3164", "Nora\nNightingale", "Nora \u202eelagnithgiN"])
def test_a_staff_name_with_invisible_or_control_characters_is_refused(
    runtime: Runtime, name: str
) -> None:
    with (
        runtime.db.session() as s,
        pytest.raises(service.StaffError, match="name: contains control or invisible"),
    ):
        service.create_staff(
            db_session=s,
            email="nora@example.org",
            name=name,
            password="correct horse battery",
            now=runtime.clock.now(),
        )


# The signing key ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "x",
        "changeme",
        "short-but-random-Qz81",  # 21 characters
        "x" * 64,
        "changeme" * 4,
        "ab" * 40,
        "0123456789" * 4,
    ],
)
def test_a_short_placeholder_or_low_entropy_secret_key_fails_at_start(key: str) -> None:
    with pytest.raises(ValidationError, match="secret_key"):
        Settings(secret_key=key)


@pytest.mark.parametrize("key_of", ["token_urlsafe", "token_hex", "base64"])
def test_a_secret_key_made_as_the_docs_say_is_accepted(key_of: str) -> None:
    import base64
    import secrets

    key = {
        "token_urlsafe": secrets.token_urlsafe(48),  # as the embedded default makes one
        "token_hex": secrets.token_hex(32),  # openssl rand -hex 32
        "base64": base64.b64encode(secrets.token_bytes(32)).decode(),  # openssl rand -base64 32
    }[key_of]
    assert Settings(secret_key=key).effective_secret_key() == key


def test_the_embedded_default_generates_a_key_that_passes_its_own_check(tmp_path: object) -> None:
    settings = Settings(data_dir=tmp_path, secret_key="")
    key = settings.effective_secret_key()
    assert Settings(secret_key=key).secret_key == key
