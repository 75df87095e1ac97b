"""The embedded data folder at rest: readable by its owner only, and an erased patient's data
gone from the bytes on disk (the SQLite file, its WAL, the outbox), not only from the rows.

Erasure overwrites a patient's name, contact details, replies and flag notes. Without
``secure_delete`` SQLite leaves the old cell bytes in the page's free space, and the WAL keeps
earlier versions of every page until a checkpoint truncates it; the outbox keeps a copy of every
message sent. These tests read the raw files, as someone who copied the folder would.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from aftercare.flags import resolution
from aftercare.flags.service import raise_flag
from aftercare.inbound.replies import Replies
from aftercare.inbound.service import receive_sms
from aftercare.patients import retention
from aftercare.runtime import Runtime, set_runtime
from aftercare.storage.migrate import upgrade
from aftercare.web.app import create_app
from tests.conftest import make_settings
from tests.factories import enrol
from tests.web.test_api import add_staff, deliver_due

NAME = "Zebulon Quarrington"
EMAIL = "zebulon.quarrington@example.org"
PHONE = "+447911123456"
REPLY = "my calf has gone zorblaxian and itches"
NOTE = "rang back, quixotically fine now"
TRACES = [NAME, "Quarrington", EMAIL, PHONE, REPLY, NOTE]


def _database_files(rt: Runtime) -> list[Path]:
    db = Path(rt.settings.effective_database_url.split("///", 1)[1])
    return [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()]


def _outbox_files(rt: Runtime) -> list[Path]:
    return [p for p in rt.settings.outbox_dir.rglob("*") if p.is_file()]


def _found(files: list[Path]) -> dict[str, list[str]]:
    """Which traces each file's raw bytes hold."""
    out = {}
    for path in files:
        data = path.read_bytes()
        hits = [t for t in TRACES if t.encode() in data]
        if hits:
            out[path.name] = hits
    return out


def _patient_with_history(rt: Runtime) -> int:
    """A patient who was sent messages (outbox), replied, and had a flag resolved with a note."""
    now = rt.clock.now()
    enrol(rt, name=NAME, email=EMAIL)
    assert deliver_due(rt)
    replies = Replies(renderer=rt.renderer, clinic_name="Clinic", clinic_phone="020 7946 0000")
    with rt.db.session() as s:
        sid = "SM" + "7" * 32
        receive_sms(db_session=s, sid=sid, from_number=PHONE, body=REPLY, now=now, replies=replies)
        flag = raise_flag(s, kind="unrecognised_reply", patient_id=1, text=REPLY, now=now)
        s.flush()
        resolution.resolve_flag(db_session=s, flag_id=flag.id, actor_id=None, now=now, note=NOTE)
    return 1


def _erase_by_staff(rt: Runtime, patient_id: int) -> None:
    _, token = add_staff(rt, "admin@example.org", "admin")
    with TestClient(create_app(rt)) as client:
        erased = client.delete(
            f"/api/v1/patients/{patient_id}", headers={"Authorization": f"Bearer {token}"}
        )
        assert erased.status_code == 204, erased.text


def _erase_by_retention(rt: Runtime, patient_id: int) -> None:
    later = rt.clock.now() + timedelta(days=365 * 4)
    summary = retention.anonymise_expired(
        db=rt.db, now=later, retention_days=730, outbox_dir=rt.settings.outbox_dir
    )
    assert summary["erased"] == 1, summary


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    "erase", [_erase_by_staff, _erase_by_retention], ids=["staff", "retention"]
)
def test_an_erased_patient_is_nowhere_in_the_database_file_its_wal_or_the_outbox(
    runtime: Runtime, erase: object
) -> None:
    patient_id = _patient_with_history(runtime)
    # The search can see them: every trace is in the database's files, the address in the outbox.
    before = _found(_database_files(runtime))
    assert set(TRACES) <= {t for hits in before.values() for t in hits}, before
    assert any(EMAIL in hits for hits in _found(_outbox_files(runtime)).values())

    erase(runtime, patient_id)  # type: ignore[operator]

    assert _found(_database_files(runtime)) == {}
    assert _found(_outbox_files(runtime)) == {}


# Modes -------------------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _not_private(root: Path) -> list[str]:
    """Every folder under ``root`` (itself included) not 0700 and every file not 0600."""
    wrong = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        want = 0o700 if path.is_dir() else 0o600
        if mode != want:
            wrong.append(f"{path.relative_to(root.parent)} {mode:o}")
    return wrong


def test_under_umask_022_aftercare_run_keeps_every_file_0600_and_every_folder_0700(
    tmp_path: Path,
) -> None:
    """``aftercare run`` on the embedded default, started by a shell with umask 022, enrols a
    patient (``aftercare enrol``, same umask) and delivers to the outbox; then every folder it
    made is 0700 and every file 0600: the data folder, the SQLite database, WAL and shared
    memory, the secret key, the outbox and its messages, the file broker and beat's schedule."""
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFTERCARE_")}
    env.update(
        AFTERCARE_DATA_DIR=str(data_dir),
        AFTERCARE_SMS_TRANSPORT="outbox",
        AFTERCARE_EMAIL_TRANSPORT="outbox",
        AFTERCARE_DISPATCH_INTERVAL="0.3",
    )
    cli = [sys.executable, "-m", "aftercare.cli.main"]
    port = _free_port()
    with (tmp_path / "run.log").open("ab") as out:
        server = subprocess.Popen(
            [*cli, "run", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=out,
            umask=0o022,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (tmp_path / "run.log").read_text()[-2000:]
            assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        enrolled = subprocess.run(
            [
                *cli,
                "enrol",
                "--name",
                NAME,
                "--phone",
                "07911 123456",
                "--email",
                EMAIL,
                "--consent",
                "--contraindications-checked",
            ],
            env=env,
            umask=0o022,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert enrolled.returncode == 0, enrolled.stderr
        # Email is never held for quiet hours: the welcome email is due at once.
        while not list((data_dir / "outbox").rglob("*.eml")):
            assert time.monotonic() < deadline + 60, (tmp_path / "run.log").read_text()[-2000:]
            time.sleep(0.2)
        made = {p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*")}
        assert {"aftercare.sqlite3", "aftercare.sqlite3-wal", "secret_key", "broker/queue"} <= made
        assert "outbox/email" in made
        assert _not_private(data_dir) == []
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
        server.wait(timeout=60)
    assert _not_private(data_dir) == []  # and what shutting down wrote


def test_in_process_under_umask_022_the_database_and_the_outbox_are_created_private(
    tmp_path: Path,
) -> None:
    """Without the aftercare command's umask (the app under a bare uvicorn, a test): the files
    Aftercare creates itself are still 0600 in 0700 folders."""
    previous = os.umask(0o022)
    rt = Runtime(make_settings(tmp_path, secret_key=""))
    set_runtime(rt)
    try:
        upgrade(rt.settings.effective_database_url)
        enrol(rt)
        assert deliver_due(rt)
        assert rt.settings.effective_secret_key()
        made = {p.relative_to(tmp_path).as_posix() for p in (tmp_path / "data").rglob("*")}
        assert {"data/aftercare.sqlite3-wal", "data/secret_key", "data/outbox/email"} <= made
        assert _not_private(tmp_path / "data") == []
    finally:
        os.umask(previous)
        set_runtime(None)
        rt.db.dispose()
