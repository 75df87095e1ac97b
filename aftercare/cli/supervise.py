"""``aftercare run``: the web app in this process, a worker and beat as child processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aftercare.runtime import Runtime

if TYPE_CHECKING:
    import uvicorn


class Child:
    """A child process that is restarted if it dies, until stopped."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - our own argv
            self.argv,
            env=self.env,
            preexec_fn=_DIE_WITH_PARENT,  # noqa: PLW1509 - one prctl call, see _pdeathsig
        )

    def watch(self) -> None:
        while not self._stopping.wait(1.0):
            if self.process is not None and self.process.poll() is not None:
                print(f"aftercare: {self.name} exited ({self.process.returncode}); restarting")
                time.sleep(1.0)
                if not self._stopping.is_set():
                    self.start()

    def stop(self) -> None:
        self._stopping.set()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _pdeathsig() -> Callable[[], None] | None:
    """Linux: a pre-exec hook giving the child SIGTERM if this process dies, however it dies.

    libc is resolved here, in the parent: the hook itself only makes one system call, the only
    kind of work that is safe between fork and exec in a process that has threads.
    """
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux: the normal shutdown path still stops the children
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, signal.SIGTERM)


_DIE_WITH_PARENT = _pdeathsig()


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    # uvicorn restores this handler and re-raises SIGTERM after its own shutdown; turning it
    # into SystemExit lets run_all's finally stop the worker and beat.
    raise SystemExit(0)


def children(rt: Runtime) -> list[Child]:
    # One worker for both queues (dispatch and send): on the embedded default it is a single
    # solo process on SQLite and the file broker, where a second worker would only add a
    # writer. Backpressure (AFTERCARE_DISPATCH_MAX_QUEUED) keeps each dispatch run short;
    # production runs a dispatch worker beside the send workers (docker-compose.yml).
    env = dict(os.environ)
    env.setdefault("AFTERCARE_DATA_DIR", str(rt.settings.data_dir))
    base = [sys.executable, "-m", "aftercare.cli.main"]
    return [Child("worker", [*base, "worker"], env), Child("beat", [*base, "beat"], env)]


FIRST_LOGIN_FILE = "first-admin-login.txt"
# How long ``aftercare run`` waits for the first dispatch before it prints its summary anyway.
READY_WAIT = 60.0


def first_login_path(rt: Runtime) -> Path:
    return rt.settings.data_dir / FIRST_LOGIN_FILE


def create_first_admin(rt: Runtime, *, host: str, port: int) -> list[str]:
    """With no staff accounts yet, create an admin; return the lines that tell its login, which
    are also saved, readable by this user only, in the data folder (empty when none created)."""
    from aftercare.staff.service import ensure_first_admin

    with rt.db.session() as db_session:
        created = ensure_first_admin(db_session=db_session, now=rt.clock.now())
    if created is None:
        return []
    user, password = created
    path = first_login_path(rt)
    lines = [
        f"Admin login for the staff pages at http://{host}:{port}/",
        f"  email:    {user.email}",
        f"  one-time password: {password}",
        "  then choose your own password: Change password on the staff pages, or",
        f"    aftercare staff password {user.email}",
        f"  an API token: aftercare staff token {user.email}",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    # Created 0600 from the start: never readable by others, not even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write("\n".join([*lines, "Delete this file once you have set your own password.", ""]))
    return [*lines, f"  (saved in {path}, readable only by you: delete it once changed)"]


def first_admin(rt: Runtime, *, host: str, port: int) -> None:
    """With no staff accounts yet, create an admin and print its one-time password, once."""
    for line in create_first_admin(rt, host=host, port=port):
        print(line)


def ready_summary(rt: Runtime, *, host: str, port: int, login: list[str]) -> str:
    """What ``aftercare run`` prints once it is up: where, a warning if the clinic details are
    placeholders, and the admin login (last, so nothing scrolls it away)."""
    where = "embedded default" if rt.settings.embedded else "configured database"
    rule = "-" * 78
    lines = [
        rule,
        f"Aftercare is running at http://{host}:{port} ({where}; data in {rt.settings.data_dir})",
    ]
    warning = rt.settings.clinic_warning()
    if warning:
        lines += ["", *textwrap.wrap(f"WARNING: {warning}", 78, subsequent_indent="  ")]
    if login:
        lines += ["", *login]
    elif first_login_path(rt).exists():
        lines += ["", f"The first admin login is in {first_login_path(rt)}."]
    return "\n".join([*lines, rule])


def _announce_when_ready(
    rt: Runtime, server: Any, summary: str, *, since: datetime, timeout: float = READY_WAIT
) -> None:
    """Print ``summary`` once the web server is listening and beat, the worker and the database
    have run one dispatch (its heartbeat), or after ``timeout`` seconds whatever happened."""
    from aftercare.ops import heartbeat

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.started:
            with rt.db.session() as db_session:
                last = heartbeat.last_beat(db_session, name=heartbeat.DISPATCHER)
            if last is not None and _aware(last) >= since:
                break
        time.sleep(0.5)
    print(summary, flush=True)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def uvicorn_config(app: Any, *, host: str, port: int) -> uvicorn.Config:
    """How ``aftercare run`` serves the app (the tests serve it the same way)."""
    import uvicorn

    # proxy_headers=False: uvicorn would otherwise believe X-Forwarded-For from 127.0.0.1,
    # i.e. from anyone on this machine; forwarded headers are the app's business
    # (AFTERCARE_TRUSTED_PROXIES, web/client_address.py).
    # access_log=False: uvicorn's access line is the raw target (query strings, unsubscribe
    # tokens); the app writes its own access log by route (aftercare.web.access_log).
    return uvicorn.Config(
        app, host=host, port=port, log_config=None, proxy_headers=False, access_log=False
    )


def run_all(rt: Runtime, *, host: str, port: int) -> int:
    import uvicorn

    from aftercare.ops.logs import configure_logging
    from aftercare.private import private_dir
    from aftercare.storage.migrate import SchemaOutdated, ensure_schema
    from aftercare.web.server import create_app, warm_triage

    private_dir(rt.settings.data_dir)
    try:
        ensure_schema(rt.db, auto=rt.settings.embedded)
    except SchemaOutdated as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    login = create_first_admin(rt, host=host, port=port) if rt.settings.embedded else []
    started = rt.clock.now()
    procs = children(rt)
    for child in procs:
        child.start()
        threading.Thread(target=child.watch, daemon=True, name=f"watch-{child.name}").start()
    try:
        configure_logging(rt.settings.log_level)
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        warm_triage(rt.triage)
        server = uvicorn.Server(uvicorn_config(create_app(), host=host, port=port))
        summary = ready_summary(rt, host=host, port=port, login=login)
        threading.Thread(
            target=_announce_when_ready,
            args=(rt, server, summary),
            kwargs={"since": started},
            daemon=True,
            name="announce",
        ).start()
        server.run()
    finally:
        for child in procs:
            child.stop()
    return 0
