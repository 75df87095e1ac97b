"""Scenario 3, delivery: reminders delivered end to end per second by one worker process
(``aftercare worker``, prefork, concurrency 2) to the fake providers, SMS and email mixed as the
regimen mixes them (37 SMS and 9 emails a session, the first email with its .ics).

Timing starts when the due reminders are claimed (``dispatch_due`` in this process) and ends at
the last provider receipt, with every reminder ``sent``. Baseline, same run: a bare Celery
worker (``bench.noop_app``, prefork, concurrency 2) draining pre-published no-op tasks.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench import noop_app
from bench.context import Bench
from bench.data import clone_sessions, make_due, template_session
from bench.fakes import SmtpSink, Twilio
from bench.infra import CpuCost, log, pids_named, tree_pids, wait_until
from bench.pipeline import (
    count_states,
    dispatch_now,
    duplicate_sends,
    duplicates,
    provider_env,
    start_worker,
    wait_delivered,
    warm_up,
)
from bench.results import Row, summary

NAME = "delivery"


def aftercare_rate(
    bench: Bench,
    twilio: Twilio,
    sink: SmtpSink,
    sessions: list[int],
    *,
    worker_pid: int,
    timeout: float,
) -> tuple[float, dict[str, Any]]:
    ids = make_due(bench, sessions, due=datetime.now(UTC) - timedelta(seconds=1))
    twilio.reset()
    sink.reset()
    since = datetime.now(UTC) - timedelta(seconds=1)
    cpu = CpuCost(
        {
            "worker": lambda: tree_pids(worker_pid),
            # This process: the fake providers' threads, the claim, and polling for the end.
            "bench": lambda: [os.getpid()],
            "postgres": lambda: pids_named("postgres"),
            "redis": lambda: pids_named("redis-server"),
        }
    )
    with cpu:
        started = time.time()
        dispatch_now(bench)
        finished = wait_delivered(bench, ids, timeout=timeout)
    receipts = twilio.accepted() + sink.accepted()
    last = max(receipts) if receipts else time.time()
    states = count_states(bench, ids)
    sent = states.get("sent", 0)
    detail = {
        "reminders": len(ids),
        "states": states,
        "finished": finished,
        "sms_received": len(twilio.accepted()),
        "email_received": len(sink.accepted()),
        **duplicate_sends(bench, twilio, sink, ids, since=since),
        "seconds": last - started,
        "cpu_ms_per_reminder": cpu.per_item(sent),
    }
    return sent / (last - started), detail


def noop_drain_rate(bench: Bench, tasks: int, *, timeout: float) -> tuple[float, dict[str, float]]:
    """Publish ``tasks`` no-op tasks, then start a bare worker and time it from its first
    message to an empty queue (nothing reserved or unacknowledged)."""
    noop_app.configure(bench.redis.url)
    client = bench.redis.client()
    for i in range(tasks):
        noop_app.noop.apply_async(args=[i])
    env = bench.env()
    env["BENCH_BROKER_URL"] = bench.redis.url
    worker = bench.procs.start(
        "noop-worker",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.noop_app",
            "worker",
            "--pool=prefork",
            "--concurrency=2",
            "--loglevel=WARNING",
            f"--queues={noop_app.QUEUE}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        env=env,
        cwd=bench.scratch,
    )
    try:
        if not wait_until(lambda: client.llen(noop_app.QUEUE) < tasks, timeout=60, interval=0.005):
            raise RuntimeError("the no-op worker took nothing from the queue in 60 s")
        cpu = CpuCost(
            {
                "worker": lambda: tree_pids(worker.pid),
                "redis": lambda: pids_named("redis-server"),
            }
        )
        with cpu:
            first = time.monotonic()
            drained = wait_until(
                lambda: client.llen(noop_app.QUEUE) == 0 and client.hlen("unacked") == 0,
                timeout=timeout,
                interval=0.01,
            )
            elapsed = time.monotonic() - first
        left = client.llen(noop_app.QUEUE)
        if not drained:
            log(f"no-op drain: {left} tasks left after {timeout:.0f} s")
        return (tasks - left) / elapsed, cpu.per_item(tasks - left)
    finally:
        bench.procs.stop(worker)
        client.delete(noop_app.QUEUE)


def worker_rate(
    bench: Bench,
    twilio: Twilio,
    sink: SmtpSink,
    env: dict[str, str],
    *,
    warm: int,
    chunk: list[int],
    label: str,
    timeout: float,
) -> tuple[float, dict[str, Any]]:
    """A fresh worker, warmed on one session, then timed on ``chunk``'s reminders."""
    worker = start_worker(bench, label, env)
    try:
        warm_up(bench, make_due(bench, [warm], due=datetime.now(UTC) - timedelta(seconds=1)))
        log(f"delivery, {label}: {len(chunk) * 46:,} reminders")
        return aftercare_rate(bench, twilio, sink, chunk, worker_pid=worker.pid, timeout=timeout)
    finally:
        bench.procs.stop(worker)


def run(bench: Bench) -> list[Row]:
    bench.truncate()
    bench.redis.flush()
    per_rep = bench.size(40, 12)  # sessions, 46 reminders each
    timeout = bench.size(120.0, 40.0)
    tasks = bench.size(4_000, 1_500)
    template = template_session(bench.rt, zone=bench.zone)
    sessions = clone_sessions(bench, template, 1 + 2 * per_rep * bench.reps)
    chunks = [sessions[1 + i * per_rep : 1 + (i + 1) * per_rep] for i in range(2 * bench.reps)]
    runs: dict[str, list[tuple[float, dict[str, Any]]]] = {"fakes": [], "outbox": []}
    noop: list[float] = []
    noop_cpu: list[dict[str, float]] = []
    # Interleaved, so that a change in the machine's load hits all three alike.
    with Twilio() as twilio, SmtpSink() as sink:
        envs = {"fakes": provider_env(bench, twilio, sink, mps=1_000_000), "outbox": bench.env()}
        for rep in range(bench.reps):
            for offset, kind in enumerate(("fakes", "outbox")):
                runs[kind].append(
                    worker_rate(
                        bench,
                        twilio,
                        sink,
                        envs[kind],
                        warm=sessions[0],
                        chunk=chunks[2 * rep + offset],
                        label=f"{kind}-worker",
                        timeout=timeout,
                    )
                )
            log(f"delivery {rep + 1}/{bench.reps}: bare worker draining {tasks:,} no-op tasks")
            rate, cost = noop_drain_rate(bench, tasks, timeout=timeout)
            noop.append(rate)
            noop_cpu.append(cost)
    bench.truncate()
    bench.redis.flush()
    rates = [rate for rate, _ in runs["fakes"]]
    details = [detail for _, detail in runs["fakes"]]
    outbox = [rate for rate, _ in runs["outbox"]]
    bench.raw[NAME] = {
        "aftercare": rates,
        "runs": details,
        "outbox": outbox,
        "outbox_runs": [detail for _, detail in runs["outbox"]],
        "noop": noop,
        "noop_tasks": tasks,
        "noop_cpu_ms_per_task": noop_cpu,
    }
    baseline = "bare Celery worker (prefork x2) draining no-op tasks"
    row = Row(
        NAME,
        "aftercare worker (prefork x2), SMS + email to the fakes",
        "reminders/s",
        summary(rates),
        baseline,
        summary(noop),
        target="≥ 1.5×",
        note=f"duplicate sends {sum(duplicates(d) for d in details)}",
    )
    if row.ratio is not None:
        row.met = row.ratio >= 1.5
    ceiling = Row(
        NAME,
        "aftercare worker (prefork x2), outbox transports (no network)",
        "reminders/s",
        summary(outbox),
        baseline,
        summary(noop),
        target="(what the providers' round trips cost)",
    )
    cpu_rows = [
        _cpu_row(kind, [d["cpu_ms_per_reminder"] for _, d in runs[kind]], noop_cpu)
        for kind in ("fakes", "outbox")
    ]
    return [row, ceiling, *cpu_rows]


def _cpu_row(kind: str, costs: list[dict[str, float]], noop: list[dict[str, float]]) -> Row:
    """CPU per reminder, all processes involved: on 2 cores, 2,000 ms of CPU a second is the
    ceiling, so 2,000 / (ms per reminder) is the most any worker layout could deliver."""
    parts = ", ".join(
        f"{name} {statistics.median(c[name] for c in costs):.2f}"
        for name in costs[0]
        if name != "total"
    )
    total = summary([c["total"] for c in costs])
    ceiling = 1000 * (os.cpu_count() or 1) / total.median if total else 0.0
    return Row(
        NAME,
        f"CPU per reminder, {'fakes' if kind == 'fakes' else 'outbox'} — {parts} ms; "
        f"all cores busy at {ceiling:,.0f}/s",
        "ms",
        total,
        "bare worker: CPU per no-op task (worker + Redis)",
        summary([c["total"] for c in noop]),
        target="(what bounds the rate on this machine)",
        lower_is_better=True,
    )
