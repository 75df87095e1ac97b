"""Process leases: a ``worker_leases`` row per process that claims work, with its identity (host,
machine, pid, process start time) and ``lease_until``, renewed by a thread of its own; and how
this machine tells that another lease's process is certainly gone. Reminders
(:mod:`aftercare.reminders.leases`) and pages to on-call staff (:mod:`aftercare.oncall.send`) are
claimed under them. See :mod:`aftercare.reminders.leases` for the takeover rules.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from sqlalchemy import delete, insert, update
from sqlalchemy.orm import Session

from aftercare.clock import Clock
from aftercare.storage.db import Database
from aftercare.storage.models import WorkerLease

log = logging.getLogger(__name__)


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, Linux), or "" if it does not exist.

    Telling a process from a later one that reused its PID."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return ""
    # The command name (field 2) may hold spaces and parentheses: count from its closing one.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else ""


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


class _Identity(Protocol):
    host: str
    machine: str
    pid: int
    started: str


@dataclass(frozen=True)
class Machine:
    """Where this process runs: enough to tell whether a process recorded in a lease could be
    seen from here (same host, same boot, same PID namespace), and if so whether it still runs.
    Empty ``boot`` (not Linux): never sure, leases only."""

    host: str
    boot: str
    pid_namespace: str

    @classmethod
    def here(cls) -> Machine:
        return cls(
            host=socket.gethostname(),
            boot=_read("/proc/sys/kernel/random/boot_id"),
            pid_namespace=_pid_namespace(),
        )

    @property
    def key(self) -> str:
        return f"{self.boot}/{self.pid_namespace}" if self.boot and self.pid_namespace else ""

    def knows_gone(self, lease: _Identity) -> bool:
        """True only when ``lease``'s process ran here and certainly no longer does."""
        if not self.key or lease.host != self.host or lease.machine != self.key:
            return False
        return _start_ticks(lease.pid) != lease.started


class Lease:
    """This process's lease: registered on first use, renewed by a daemon thread.

    ``seconds`` is the lease (``AFTERCARE_WORKER_LEASE``); the thread renews it every ninth of
    that, and a send starts only while at least two thirds of it are left (:meth:`fresh`).
    Times are the service clock's, the one recovery compares them with.
    """

    def __init__(
        self, *, db: Database, clock: Clock, seconds: float, heartbeat: bool = True
    ) -> None:
        self.db = db
        # False: renewed only by the process's own claims and sends (tests drive it by hand).
        self.heartbeat = heartbeat
        self.clock = clock
        self.length = timedelta(seconds=seconds)
        self.every = seconds / 9
        self.margin = timedelta(seconds=seconds * 2 / 3)
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._id: str | None = None
        self._valid_until: datetime | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _mine(self) -> None:
        # A forked child inherits the object, but neither the parent's lease nor its thread.
        if self._pid != os.getpid():
            self._lock = threading.Lock()
            self._reset()

    @property
    def id(self) -> str | None:
        self._mine()
        return self._id

    def hold(self, *, now: datetime) -> str:
        """The lease id to claim reminders under: registered or renewed in a transaction of its
        own, committed before any claim names it, unless it is fresh. Starts the heartbeat."""
        self._mine()
        with self._lock:
            lease_id, valid_until = self._id, self._valid_until
        if lease_id is not None and valid_until is not None and valid_until - now >= self.margin:
            self._start_thread()
            return lease_id
        with self.db.session() as db_session:
            if lease_id is None or not self._renew(db_session, lease_id, now):
                lease_id = uuid.uuid4().hex
                machine = Machine.here()
                db_session.execute(
                    insert(WorkerLease).values(
                        id=lease_id,
                        host=machine.host[:255],
                        machine=machine.key,
                        pid=os.getpid(),
                        started=_start_ticks(os.getpid()),
                        lease_until=now + self.length,
                        created_at=now,
                    )
                )
        # Committed: only now may this process trust it without asking the database.
        with self._lock:
            self._id, self._valid_until = lease_id, now + self.length
        self._start_thread()
        return lease_id

    def fresh(self, owner: str | None, *, now: datetime) -> bool:
        """True if a send claimed under ``owner`` may start now without asking the database."""
        self._mine()
        with self._lock:
            return (
                owner is not None
                and owner == self._id
                and self._valid_until is not None
                and self._valid_until - now >= self.margin
            )

    def renew_for(self, db_session: Session, owner: str | None, *, now: datetime) -> bool:
        """Renew the lease ``owner`` in ``db_session``; False if it is no longer this process's
        (recovery took it over): nothing claimed under it may be sent. Once ``db_session`` has
        committed, call :meth:`renewed`."""
        self._mine()
        if owner is None or owner != self.id:
            return False
        return self._renew(db_session, owner, now)

    def renewed(self, owner: str | None, *, now: datetime) -> None:
        """The renewal :meth:`renew_for` made at ``now`` is committed."""
        with self._lock:
            if owner is not None and self._id == owner:
                self._valid_until = now + self.length

    def _renew(self, db_session: Session, lease_id: str, now: datetime) -> bool:
        renewed = db_session.execute(
            update(WorkerLease)
            .where(WorkerLease.id == lease_id)
            .values(lease_until=now + self.length)
            .returning(WorkerLease.id)
        ).first()
        if renewed is None:
            log.warning("this process's lease was taken over; it sends nothing claimed under it")
            with self._lock:
                if self._id == lease_id:
                    self._id, self._valid_until = None, None
            return False
        return True

    def beat(self) -> None:
        """Renew the lease once (what the heartbeat thread does)."""
        lease_id = self.id
        if lease_id is None:
            return
        now = self.clock.now()
        with self.db.session() as db_session:
            if not self._renew(db_session, lease_id, now):
                return
        with self._lock:
            if self._id == lease_id:
                self._valid_until = now + self.length

    def _start_thread(self) -> None:
        if self._thread is not None or not self.heartbeat:
            return
        self._thread = threading.Thread(
            target=self._run, args=(self._stop,), daemon=True, name="aftercare-lease"
        )
        self._thread.start()

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.every):
            try:
                self.beat()
            # A missed renewal is what leases are for: the next one may work, and if none
            # does the lease runs out and this process's sends stop (Lease.fresh).
            except Exception:
                log.warning("lease renewal failed; will try again", exc_info=True)

    def release(self) -> None:
        """Stop renewing and delete the lease (a clean exit: nothing is held any more)."""
        self._mine()
        self._stop.set()
        lease_id = self._id
        self._id = None
        if lease_id is not None:
            with self.db.session() as db_session:
                db_session.execute(delete(WorkerLease).where(WorkerLease.id == lease_id))
