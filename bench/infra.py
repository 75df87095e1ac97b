"""What the scenarios run against: a scratch PostgreSQL database, a private Redis database,
processes started with environment variables, and resident memory read from /proc."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psycopg
import redis
from psycopg.rows import TupleRow

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379")
# The key tests/conftest.py claims a Redis database with: a test run started while the
# benchmark runs skips the database the benchmark holds, and the other way round.
REDIS_LOCK = "aftercare:test-run-lock"
SECRET_KEY = "bench-secret-key-not-for-production-0123456789"
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(message: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# PostgreSQL ----------------------------------------------------------------------------------


class ScratchPostgres:
    """A database of its own for this run, created on the local server and dropped after."""

    def __init__(self, admin_url: str = PG_ADMIN_URL) -> None:
        self.admin_url = admin_url
        self.name = f"aftercare_bench_{os.getpid()}_{secrets.token_hex(3)}"
        self.url = f"{admin_url.rsplit('/', 1)[0]}/{self.name}"

    def create(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def connect(self, *, autocommit: bool = False) -> psycopg.Connection[TupleRow]:
        return psycopg.connect(self.url, autocommit=autocommit)

    def server_version(self) -> str:
        with self.connect() as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"


# Redis ---------------------------------------------------------------------------------------


class PrivateRedis:
    """A Redis database number nobody else uses, claimed with a lock key (SET NX)."""

    def __init__(self, base_url: str = REDIS_BASE) -> None:
        self.base_url = base_url
        self.number: int | None = None
        self.token = f"bench-{os.getpid()}-{secrets.token_hex(4)}"

    @property
    def url(self) -> str:
        assert self.number is not None, "claim a database first"
        return f"{self.base_url}/{self.number}"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def claim(self) -> int:
        # From the top down: test runs claim from 1 upwards, so the two rarely meet.
        for number in range(15, 0, -1):
            client = redis.Redis.from_url(f"{self.base_url}/{number}")
            if client.dbsize() == 0 and client.set(REDIS_LOCK, self.token, nx=True, ex=7200):
                self.number = number
                return number
        raise RuntimeError("no free Redis database number (1-15) for the benchmark")

    def flush(self) -> None:
        """Empty the database, keeping the claim."""
        client = self.client()
        client.flushdb()
        client.set(REDIS_LOCK, self.token, ex=7200)

    def release(self) -> None:
        if self.number is not None:
            self.client().flushdb()
            self.number = None


# Processes -----------------------------------------------------------------------------------


def base_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a child process: ours without any AFTERCARE_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFTERCARE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


@dataclass
class Processes:
    """Child processes this run started; each in its own session so its pool dies with it."""

    logs: Path
    running: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _files: dict[int, IO[bytes]] = field(default_factory=dict)

    def start(
        self, name: str, argv: list[str], *, env: Mapping[str, str], cwd: Path
    ) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        out = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv, env=dict(env), cwd=cwd, stdout=out, stderr=out, start_new_session=True
        )
        self.running.append(proc)
        self._files[proc.pid] = out
        return proc

    def aftercare(
        self, name: str, *args: str, env: Mapping[str, str], cwd: Path
    ) -> subprocess.Popen[bytes]:
        """The project's own CLI (``aftercare worker``, ``beat``, ``import``...)."""
        return self.start(
            name, [sys.executable, "-m", "aftercare.cli.main", *args], env=env, cwd=cwd
        )

    def stop(self, proc: subprocess.Popen[bytes], *, grace: float = 15.0) -> None:
        """SIGTERM to the process (a Celery warm shutdown: the pool finishes its running tasks),
        then SIGKILL to its whole process group after ``grace`` seconds."""
        if proc.poll() is None:
            with suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
        # Whatever of its group is left (pool children of a worker that was killed).
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait(timeout=10)
        if proc in self.running:
            self.running.remove(proc)
        out = self._files.pop(proc.pid, None)
        if out is not None:
            out.close()

    def stop_all(self) -> None:
        for proc in list(self.running):
            self.stop(proc, grace=5.0)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for tid in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        found += [int(c) for c in text.split()]
    return found


def rss(pid: int) -> int:
    """Resident set size of one process, in bytes (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/statm").read_text().split()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return int(fields[1]) * PAGE


def tree_rss(pid: int) -> int:
    """Resident set size of a process and all its descendants (a Celery worker and its pool)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += rss(current)
        todo += _children(current)
    return total


class RssSampler:
    """Samples the tree RSS of some processes in a background thread; keeps each one's peak."""

    def __init__(self, pids: Mapping[str, int], interval: float = 0.2) -> None:
        self.pids = dict(pids)
        self.interval = interval
        self.peak: dict[str, int] = dict.fromkeys(self.pids, 0)
        self.last: dict[str, int] = dict.fromkeys(self.pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                value = tree_rss(pid)
                self.last[name] = value
                self.peak[name] = max(self.peak[name], value)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@contextmanager
def cleanup_on_exit(procs: Processes) -> Iterator[None]:
    try:
        yield
    finally:
        procs.stop_all()


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


class MachineLoad:
    """How busy the machine was while a scenario ran, and how much of that was this run's own
    processes (this one and the children it has reaped; the database and Redis servers'
    work on its behalf counts as the machine's)."""

    def __enter__(self) -> MachineLoad:
        self._ticks = _cpu_ticks()
        self._own = self._own_seconds()
        self._wall = time.monotonic()
        self.load_before = os.getloadavg()[0]
        return self

    @staticmethod
    def _own_seconds() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def __exit__(self, *exc: object) -> None:
        busy, total = _cpu_ticks()
        wall = time.monotonic() - self._wall
        cpus = os.cpu_count() or 1
        self.machine_busy = (busy - self._ticks[0]) / max(total - self._ticks[1], 1)
        self.own_busy = (self._own_seconds() - self._own) / max(wall * cpus, 1e-9)
        self.load_after = os.getloadavg()[0]

    def as_dict(self) -> dict[str, float]:
        return {
            "machine_cpu_busy": round(self.machine_busy, 3),
            "own_processes_cpu": round(self.own_busy, 3),
            "loadavg_before": round(self.load_before, 2),
            "loadavg_after": round(self.load_after, 2),
        }


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far, in seconds (0 if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    fields = text.rsplit(")", 1)[1].split()  # after "(comm)": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / TICK


def tree_pids(pid: int) -> list[int]:
    """A process and all its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += _children(current)
    return found


def pids_named(name: str) -> list[int]:
    """Every process whose command name is ``name`` (e.g. the database and Redis servers)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == name:
                    found.append(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return found


class CpuCost:
    """CPU seconds spent by groups of processes over a window, from /proc: each group is a
    function giving its pids (asked at the start and the end, so a process started in the
    window counts from zero; one that ended in it is not counted)."""

    def __init__(self, groups: Mapping[str, Callable[[], list[int]]]) -> None:
        self.groups = dict(groups)
        self.seconds: dict[str, float] = {}

    def __enter__(self) -> CpuCost:
        self._start = {
            name: {pid: cpu_seconds(pid) for pid in pids()} for name, pids in self.groups.items()
        }
        return self

    def __exit__(self, *exc: object) -> None:
        for name, pids in self.groups.items():
            before = self._start[name]
            self.seconds[name] = sum(cpu_seconds(pid) - before.get(pid, 0.0) for pid in pids())

    def per_item(self, items: int) -> dict[str, float]:
        """Milliseconds of CPU per item, per group and in all."""
        per = {name: 1000 * s / max(items, 1) for name, s in self.seconds.items()}
        per["total"] = sum(per.values())
        return {name: round(ms, 3) for name, ms in per.items()}
