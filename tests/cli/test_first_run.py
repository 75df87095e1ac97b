"""A first run you can trust: placeholder clinic details are named (``check``, ``run``) and,
with a production database or broker, hold every reminder back in the database; the admin
login is printed last and saved 0600; routine timer ticks are DEBUG; no colour codes in JSON
logs; no "No hostname was supplied" from kombu on the embedded broker."""

from __future__ import annotations

import json
import logging
import re
import stat
from pathlib import Path

import pytest
from celery.app.trace import LOG_RECEIVED, LOG_SUCCESS
from celery.app.trace import info as celery_trace_info
from kombu import Connection
from sqlalchemy import select

from aftercare.cli.supervise import create_first_admin, first_login_path, ready_summary
from aftercare.ops import heartbeat
from aftercare.ops.logs import configure_logging
from aftercare.reminders.dispatch import held_back_by
from aftercare.runtime import Runtime, set_runtime
from aftercare.settings import Settings
from aftercare.staff import service
from aftercare.storage.models import Heartbeat, Reminder
from aftercare.worker.celeryconfig import celery_settings
from tests.cli.test_cli import Aftercare, aftercare, succeeded  # noqa: F401 - fixture by name
from tests.conftest import make_settings
from tests.factories import enrol

# ruff: noqa: F811 - the ``aftercare`` fixture is imported and taken by name

PLACEHOLDERS = {"clinic_name": "Your clinic", "clinic_phone": "your clinic"}


# --- the clinic's name and phone --------------------------------------------------------------


def test_settings_name_each_placeholder_clinic_detail(tmp_path: Path) -> None:
    assert make_settings(tmp_path).clinic_placeholders() == []
    assert make_settings(tmp_path, **PLACEHOLDERS).clinic_placeholders() == [
        "AFTERCARE_CLINIC_NAME",
        "AFTERCARE_CLINIC_PHONE",
    ]
    blank = make_settings(tmp_path, clinic_name="  ", clinic_phone="020 7946 0000")
    assert blank.clinic_placeholders() == ["AFTERCARE_CLINIC_NAME"]


def test_dispatch_is_held_back_only_with_a_production_database_or_broker(tmp_path: Path) -> None:
    embedded = make_settings(tmp_path, **PLACEHOLDERS)
    assert held_back_by(embedded) is None  # the try-it-first default still sends (console)
    for production in (
        {"database_url": "postgresql://db/aftercare"},
        {"broker_url": "redis://127.0.0.1:6379/0"},
    ):
        reason = held_back_by(make_settings(tmp_path, **PLACEHOLDERS, **production))
        assert reason is not None
        assert "AFTERCARE_CLINIC_NAME and AFTERCARE_CLINIC_PHONE are not set" in reason
        assert "no patient messages are sent" in reason
        assert held_back_by(make_settings(tmp_path, **production)) is None


def test_dispatch_task_with_placeholder_clinic_keeps_due_reminders_scheduled(
    runtime: Runtime,
) -> None:
    from aftercare.worker.tasks import dispatch_reminders

    enrol(runtime)  # the welcome messages are due at once
    held = Runtime(replace_settings(runtime, **PLACEHOLDERS))
    held.clock = runtime.clock
    set_runtime(held)
    try:
        result = dispatch_reminders.apply().get()
    finally:
        set_runtime(runtime)
        held.db.dispose()

    assert result == {"held": 1}
    with runtime.db.session() as db_session:
        states = set(db_session.scalars(select(Reminder.state)))
        detail = db_session.get(Heartbeat, heartbeat.DISPATCHER)
        assert detail is not None
        assert "AFTERCARE_CLINIC_NAME" in detail.detail["held"]
    assert states == {"scheduled"}


def replace_settings(rt: Runtime, **changes: str) -> Settings:
    return rt.settings.model_copy(update=changes)


def test_check_names_placeholder_clinic_details_plainly(aftercare: Aftercare) -> None:
    out = succeeded(aftercare("check")).stdout
    assert (
        "clinic: WARNING AFTERCARE_CLINIC_NAME and AFTERCARE_CLINIC_PHONE are not set, so "
        "patients would read 'Your clinic: Hi ...' and 'call us on your clinic'. "
        "Until then no patient messages are sent." in out
    )

    out = succeeded(
        aftercare(
            "check", AFTERCARE_CLINIC_NAME="Riverside", AFTERCARE_CLINIC_PHONE="020 7946 0000"
        )
    ).stdout
    assert "clinic: Riverside" in out
    assert "WARNING" not in out


def test_dispatch_command_with_placeholder_clinic_refuses_and_claims_nothing(
    aftercare: Aftercare,
) -> None:
    result = aftercare("dispatch")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: dispatch held back: AFTERCARE_CLINIC_NAME")


# --- the first run's admin login --------------------------------------------------------------


def test_first_admin_login_is_saved_readable_only_by_its_owner_and_named(
    runtime: Runtime,
) -> None:
    lines = create_first_admin(runtime, host="127.0.0.1", port=8000)

    path = first_login_path(runtime)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = path.read_text(encoding="utf-8")
    password = re.search(r"one-time password: (\S+)", saved)
    assert password is not None
    with runtime.db.session() as db_session:
        assert service.authenticate(
            db_session=db_session, email=service.FIRST_ADMIN_EMAIL, password=password.group(1)
        )
    assert f"saved in {path}" in lines[-1]
    assert create_first_admin(runtime, host="127.0.0.1", port=8000) == []


def test_ready_summary_ends_with_the_login_after_the_placeholder_warning(
    runtime: Runtime,
) -> None:
    held = Runtime(replace_settings(runtime, **PLACEHOLDERS))
    login = create_first_admin(runtime, host="127.0.0.1", port=8000)

    summary = ready_summary(held, host="127.0.0.1", port=8000, login=login).splitlines()

    assert summary[0] == summary[-1] == "-" * 78
    assert summary[1].startswith("Aftercare is running at http://127.0.0.1:8000")
    warning = summary.index(next(s for s in summary if s.startswith("WARNING: ")))
    first_login = summary.index(login[0])
    assert warning < first_login
    assert summary[first_login:-1] == login
    assert all(len(line) <= 78 for line in summary[warning:first_login])  # wrapped

    later = ready_summary(runtime, host="127.0.0.1", port=8000, login=[])
    assert f"The first admin login is in {first_login_path(runtime)}." in later
    assert "WARNING" not in later


# --- logs -------------------------------------------------------------------------------------


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_routine_timer_ticks_are_debug_and_real_work_stays_info(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def tick(task: str) -> None:
        logging.getLogger("celery.beat").info(
            "Scheduler: Sending due task %s (%s)", "dispatch-due-reminders", task
        )
        context = {"id": "1", "name": task, "return_value": "{}", "runtime": 0.1, "args": ""}
        celery_trace_info(LOG_RECEIVED, context)
        celery_trace_info(LOG_SUCCESS, context)

    try:
        configure_logging("INFO")
        tick("aftercare.dispatch")
        tick("aftercare.recover")
        tick("aftercare.send")
        at_info = json_lines(capsys.readouterr().err)

        configure_logging("DEBUG")
        tick("aftercare.dispatch")
        at_debug = json_lines(capsys.readouterr().err)
    finally:
        logging.getLogger().handlers.clear()

    assert len(at_info) == 3
    assert all("aftercare.send" in str(e["event"]) and e["level"] == "info" for e in at_info)
    assert len(at_debug) == 3
    assert {e["level"] for e in at_debug} == {"debug"}


def test_json_log_lines_carry_no_terminal_colour_codes(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        configure_logging("INFO")
        # What uvicorn logs at start-up: a plain message and a coloured copy of it.
        logging.getLogger("uvicorn.error").info(
            "Started server process [%d]",
            42,
            extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"},
        )
        logging.getLogger("aftercare.test").info("\x1b[1mbold\x1b[0m", extra={"x": "\x1b[31mr"})
        err = capsys.readouterr().err
    finally:
        logging.getLogger().handlers.clear()

    assert "\x1b" not in err
    assert "\\u001b" not in err
    events = json_lines(err)
    assert [e["event"] for e in events] == ["Started server process [42]", "bold"]
    assert events[1]["x"] == "r"


def test_embedded_broker_connection_names_its_host(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conf = celery_settings(make_settings(tmp_path))
    with (
        Connection(conf["broker_url"], transport_options=conf["broker_transport_options"]) as conn,
        caplog.at_level(logging.WARNING, logger="kombu.connection"),
    ):
        conn.connect()
        conn.info()
    assert "No hostname was supplied" not in caplog.text


def test_json_logging_takes_over_uvicorn_loggers_that_were_quietened_before(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A uvicorn logger left at WARNING or disabled by whatever configured logging before
    (uvicorn's own dictConfig, an earlier server in the same process) still logs at the level
    configure_logging was given."""
    error = logging.getLogger("uvicorn.error")
    error.setLevel(logging.WARNING)
    error.disabled = True
    try:
        configure_logging("INFO")
        error.info("Started server process [%d]", 7)
        err = capsys.readouterr().err
    finally:
        logging.getLogger().handlers.clear()
        error.setLevel(logging.NOTSET)
        error.disabled = False
    assert [e["event"] for e in json_lines(err)] == ["Started server process [7]"]
