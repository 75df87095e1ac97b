"""No patient data and no secret in a real server's logs: the access log in particular.

``tests/faults/test_security.py`` runs the whole service and searches every log, with the app
in-process. This file starts the web app as each deployment starts it (``aftercare run``, the
docker-compose ``api`` command, the Dockerfile's ``CMD``, and a bare ``uvicorn --factory`` as
an operator might write it), in a real process on a loopback port, and reads what that process
wrote: a patient search (``/patients?q=<name>``) and an unsubscribe link (``/unsubscribe/<token>``)
must leave neither the name nor the token behind, in the JSON format or uvicorn's plain one.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx
import pytest
import yaml
from sqlalchemy import select

from aftercare.runtime import Runtime, set_runtime
from aftercare.security import sign
from aftercare.settings import Settings
from aftercare.storage.migrate import upgrade
from aftercare.storage.models import Patient
from aftercare.web.pages import auth as web_auth
from tests.conftest import REPO, TEST_SECRET
from tests.factories import PATIENT_EMAIL, PATIENT_NAME, PATIENT_PHONE, enrol
from tests.web.test_api import add_staff

BIN = Path(sys.executable).parent


def _compose_api_command() -> list[str]:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    return list(compose["services"]["api"]["command"])


def _dockerfile_command() -> list[str]:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    (cmd,) = re.findall(r"^CMD (\[.*\])$", text, flags=re.MULTILINE)
    return list(yaml.safe_load(cmd))


def _on_port(argv: list[str], port: int) -> list[str]:
    """A uvicorn command line from a deployment file, listening on 127.0.0.1:``port``."""
    out = list(argv)
    out[out.index("--host") + 1] = "127.0.0.1"
    if "--port" in out:
        out[out.index("--port") + 1] = str(port)
    else:
        out += ["--port", str(port)]
    assert out[0] == "uvicorn"
    return [str(BIN / "uvicorn"), *out[1:]]


# name -> (argv for a port, whether the output is JSON lines)
SERVERS = {
    "aftercare run": (
        lambda port: [
            sys.executable,
            "-m",
            "aftercare.cli.main",
            "run",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        True,
    ),
    "docker-compose api": (lambda port: _on_port(_compose_api_command(), port), True),
    "Dockerfile CMD": (lambda port: _on_port(_dockerfile_command(), port), True),
    # A deployment written by hand: uvicorn's defaults (plain format, access log on).
    "bare uvicorn": (
        lambda port: [
            str(BIN / "uvicorn"),
            "--factory",
            "aftercare.web.app:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        False,
    ),
}


@dataclass
class Clinic:
    env: dict[str, str]
    token: str
    public_id: str
    cookie: str
    logs: Path


@pytest.fixture
def clinic(tmp_path: Path) -> Clinic:
    """An embedded-default data folder with a patient, and a logged-in admin's cookie."""
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFTERCARE_")}
    env.update(
        AFTERCARE_DATA_DIR=str(data_dir),
        AFTERCARE_SECRET_KEY=TEST_SECRET,
        AFTERCARE_LOG_LEVEL="DEBUG",
        AFTERCARE_SMS_TRANSPORT="outbox",
        AFTERCARE_EMAIL_TRANSPORT="outbox",
    )
    rt = Runtime(Settings.from_environment(env))
    upgrade(rt.settings.effective_database_url)
    set_runtime(rt)
    try:
        enrol(rt)
        admin_id, _ = add_staff(rt, "admin@example.org", "admin")
        with rt.db.session() as s:
            public_id = s.scalars(select(Patient.public_id)).one()
            cookie, _row = web_auth.start_session(
                db_session=s, staff_id=admin_id, now=rt.clock.now()
            )
    finally:
        set_runtime(None)
        rt.db.dispose()
    return Clinic(
        env=env,
        token=sign(public_id, secret=TEST_SECRET),
        public_id=public_id,
        cookie=cookie,
        logs=tmp_path / "server.log",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(argv: list[str], clinic: Clinic, port: int) -> subprocess.Popen[bytes]:
    with clinic.logs.open("ab") as out:
        proc = subprocess.Popen(  # the server's stdout and stderr, as an operator would see them
            argv, env=clinic.env, stdout=out, stderr=out, start_new_session=True
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited {proc.returncode}: {clinic.logs.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    _stop(proc)
    pytest.fail(f"server did not answer: {clinic.logs.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize("server", list(SERVERS))
def test_a_served_app_logs_no_search_text_and_no_unsubscribe_token(
    clinic: Clinic, server: str
) -> None:
    command, json_lines = SERVERS[server]
    port = _free_port()
    proc = _serve(command(port), clinic, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            client.cookies.set(web_auth.SESSION_COOKIE, clinic.cookie)
            for q in (PATIENT_NAME, PATIENT_PHONE, PATIENT_EMAIL):
                found = client.get("/patients", params={"q": q})
                assert found.status_code == 200
                assert PATIENT_NAME in found.text  # the search really found the patient
            client.cookies.clear()
            # Not logged in: sent to the login form with the search in ?next=.
            sent = client.get("/patients", params={"q": PATIENT_NAME})
            assert sent.status_code == 303
            assert client.get(sent.headers["location"]).status_code == 200
            assert client.get(f"/unsubscribe/{clinic.token}").status_code == 200
            assert client.post(f"/unsubscribe/{clinic.token}").status_code == 200
            assert client.get(f"/unsubscribe/{clinic.token}x").status_code == 404
    finally:
        _stop(proc)

    text = clinic.logs.read_text(encoding="utf-8", errors="replace")
    # The output is the server's own: it started, and (JSON) logged each request by its route.
    assert "Uvicorn running on" in text or "Application startup complete" in text, text
    mac = clinic.token.split(".")[1]
    secrets = [clinic.token, clinic.public_id, mac, quote(clinic.token, safe="")]
    personal = [
        PATIENT_NAME,
        *PATIENT_NAME.split(),
        quote(PATIENT_NAME),
        quote_plus(PATIENT_NAME),
        PATIENT_EMAIL,
        quote(PATIENT_EMAIL, safe=""),
        PATIENT_PHONE,
        quote(PATIENT_PHONE, safe=""),
    ]
    leaked = [v for v in [*personal, *secrets] if v.lower() in text.lower()]
    assert not leaked, f"{server} logged {leaked}:\n{text[-3000:]}"
    assert "?q=" not in text, text[-3000:]
    assert "q%3D" not in text, text[-3000:]
    if json_lines:
        assert '"route":"/unsubscribe/{token}"' in text, text
        assert '"route":"/patients","status":200' in text, text
