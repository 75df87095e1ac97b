"""Scenario 5, memory and correctness against the naive design.

Aftercare: ``aftercare worker`` (prefork x2) and ``aftercare beat`` idling with 0, then with
100,000 reminders due 30-90 days ahead in the database: peak RSS of each process tree while
the dispatcher runs every 2 s, and the size of the reminders table.

Naive (Twilio's appointment-reminders tutorial, ``bench.naive_app``): the same 100,000
reminders as ``apply_async(eta=...)`` tasks on Redis, a bare worker (prefork x2) with a 10 s
visibility timeout, for a bounded window: its peak RSS against the same worker with no tasks,
how many copies of each task it received, and how often a probe task (ETA inside the window)
ran. The 100,000 messages are byte for byte what ``apply_async(eta=...)`` publishes (one real
call captured, then re-stamped with a fresh id, argument and ETA) and pushed with a pipeline:
2 s of set-up instead of 40 s of one-by-one publishing, which is not what is measured here.
"""

from __future__ import annotations

import base64
import json
import math
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from bench import naive_app
from bench.context import Bench
from bench.data import clone_sessions, template_session
from bench.infra import RssSampler, log
from bench.pipeline import duplicates, heartbeat_after, start_beat, start_worker
from bench.results import Row, summary

NAME = "memory"
MB = 2**20


def _future_reminders(bench: Bench, n: int) -> dict[str, Any]:
    """``n`` reminders of real-shaped sessions, due 30-90 days ahead; the table's size."""
    template = template_session(bench.rt, zone=bench.zone)
    clone_sessions(bench, template, math.ceil(n / 46) - 1)
    with bench.pg.connect() as conn:
        conn.execute(
            "UPDATE reminders SET state = 'scheduled', expires_at = NULL, "
            "due_at = (now() AT TIME ZONE 'utc') + interval '30 days' "
            "+ (id % 1000) / 1000.0 * interval '60 days'"
        )
        conn.commit()
    # Rewritten, so the size is that of the rows, not of the UPDATE's dead versions.
    bench.vacuum("FULL reminders")
    bench.vacuum()
    with bench.pg.connect() as conn:
        rows = conn.execute("SELECT count(*) FROM reminders").fetchone()
        size = conn.execute(
            "SELECT pg_total_relation_size('reminders'), pg_relation_size('reminders'), "
            "pg_total_relation_size('treatment_sessions') + pg_total_relation_size('patients')"
        ).fetchone()
    assert rows is not None
    assert size is not None
    return {
        "reminders": rows[0],
        "reminders_total_bytes": size[0],
        "reminders_heap_bytes": size[1],
        "sessions_and_patients_bytes": size[2],
    }


def aftercare_peaks(bench: Bench, *, window: float, label: str) -> dict[str, int]:
    started = datetime.now(UTC)
    env = bench.env()
    worker = start_worker(bench, f"{label}-worker", env)
    beat = start_beat(bench, f"{label}-beat", env)
    try:
        if not heartbeat_after(bench, started, timeout=60):
            raise RuntimeError(f"{label}: no dispatcher heartbeat within 60 s")
        with RssSampler({"worker": worker.pid, "beat": beat.pid}) as sampler:
            time.sleep(window)
        return dict(sampler.peak)
    finally:
        bench.procs.stop(beat)
        bench.procs.stop(worker)


def _publish_etas(bench: Bench, items: list[tuple[int, datetime]]) -> float:
    """Push one ``apply_async(eta=...)`` message per item (see the module docstring)."""
    client = bench.redis.client()
    naive_app.send_sms_reminder.apply_async(args=[0], eta=items[0][1])
    raw = client.rpop(naive_app.QUEUE)
    assert raw is not None
    template = json.loads(cast(bytes, raw))
    embed = json.loads(base64.b64decode(template["body"]))[2]
    started = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for k, (appointment, eta) in enumerate(items, start=1):
        task_id = str(uuid.uuid4())
        message = {
            **template,
            "body": base64.b64encode(json.dumps([[appointment], {}, embed]).encode()).decode(),
            "headers": {
                **template["headers"],
                "id": task_id,
                "root_id": task_id,
                "eta": eta.isoformat(),
                "argsrepr": f"[{appointment}]",
            },
            "properties": {
                **template["properties"],
                "correlation_id": task_id,
                "delivery_tag": str(uuid.uuid4()),
            },
        }
        pipe.lpush(naive_app.QUEUE, json.dumps(message))
        if k % 5000 == 0:
            pipe.execute()
    pipe.execute()
    return time.perf_counter() - started


def naive_run(
    bench: Bench,
    *,
    n: int,
    probes: int,
    window: float,
    probe_eta: float,
    visibility: float,
    label: str,
) -> dict[str, Any]:
    """The naive worker for ``window`` seconds with ``n`` tasks due 30-90 days ahead, or with
    ``probes`` tasks due ``probe_eta`` seconds after publishing."""
    bench.redis.flush()
    naive_app.configure(bench.redis.url)
    now = datetime.now(UTC)
    if n:
        items = [(probes + i, now + timedelta(days=30 + 60 * (i % 1000) / 1000)) for i in range(n)]
    else:
        items = [(i, now + timedelta(seconds=probe_eta)) for i in range(probes)]
    publish_seconds = _publish_etas(bench, items)
    env = bench.env()
    env.update(BENCH_BROKER_URL=bench.redis.url, BENCH_VISIBILITY_TIMEOUT=str(visibility))
    worker = bench.procs.start(
        label,
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.naive_app",
            "worker",
            "--pool=prefork",
            "--concurrency=2",
            "--loglevel=WARNING",
            f"--queues={naive_app.QUEUE}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        env=env,
        cwd=bench.scratch,
    )
    client = bench.redis.client()
    try:
        with RssSampler({"worker": worker.pid}) as sampler:
            time.sleep(window)
        executed = {int(k): int(v) for k, v in client.hgetall(naive_app.EXECUTED).items()}
        result = {
            "tasks": n or probes,
            "window": window,
            "publish_seconds": publish_seconds,
            "peak_rss": sampler.peak["worker"],
            "received": int(client.get(naive_app.RECEIVED) or 0),
            "distinct_received": int(client.scard(naive_app.RECEIVED_IDS)),
            "left_in_queue": int(client.llen(naive_app.QUEUE)),
            "executions": sum(executed.values()),
            "tasks_run": len(executed),
        }
    finally:
        # Its in-memory ETA tasks would otherwise be restored to Redis one by one on shutdown.
        bench.procs.stop(worker, grace=2.0)
        bench.redis.flush()
    return result


def run(bench: Bench) -> list[Row]:
    bench.truncate()
    bench.redis.flush()
    n = bench.size(100_000, 10_000)
    window = bench.size(5.0, 3.0)
    naive_window = bench.size(20.0, 8.0)
    probes = bench.size(100, 50)
    # Due after one visibility timeout: each is handed out again once before it runs.
    visibility = bench.size(10.0, 4.0)
    probe_eta = visibility + bench.size(4.0, 2.0)
    peaks: dict[str, list[dict[str, int]]] = {"empty": [], "future": []}
    for rep in range(bench.reps):
        log(f"memory {rep + 1}/{bench.reps}: Aftercare worker + beat, no reminders")
        peaks["empty"].append(aftercare_peaks(bench, window=window, label="memory-0"))
    log(f"memory: {n:,} reminders due 30-90 days ahead")
    size = _future_reminders(bench, n)
    for rep in range(bench.reps):
        log(f"memory {rep + 1}/{bench.reps}: Aftercare worker + beat, {size['reminders']:,} future")
        peaks["future"].append(aftercare_peaks(bench, window=window, label="memory-n"))
    bench.truncate()
    naive: dict[str, list[dict[str, Any]]] = {"probes": [], "future": []}
    for rep in range(bench.reps):
        log(f"memory {rep + 1}/{bench.reps}: naive worker, {probes} tasks due in {probe_eta:.0f} s")
        naive["probes"].append(
            naive_run(
                bench,
                n=0,
                probes=probes,
                window=probe_eta + 4,
                probe_eta=probe_eta,
                visibility=visibility,
                label="naive-probe",
            )
        )
        log(f"memory {rep + 1}/{bench.reps}: naive worker, {n:,} ETA tasks 30-90 days ahead")
        naive["future"].append(
            naive_run(
                bench,
                n=n,
                probes=0,
                window=naive_window,
                probe_eta=0,
                visibility=visibility,
                label="naive-n",
            )
        )
    bench.raw[NAME] = {
        "aftercare": peaks,
        "size": size,
        "naive": naive,
        "n": n,
        "visibility_timeout": visibility,
        "probe_eta": probe_eta,
    }
    return _rows(bench, peaks, size, naive, n, probes)


def _mb(values: list[int]) -> Any:
    return summary([v / MB for v in values])


def _rows(
    bench: Bench,
    peaks: dict[str, list[dict[str, int]]],
    size: dict[str, Any],
    naive: dict[str, list[dict[str, Any]]],
    n: int,
    probes: int,
) -> list[Row]:
    out: list[Row] = []
    count = size["reminders"]
    for process, label in (("worker", "worker (prefork x2)"), ("beat", "dispatcher (beat)")):
        row = Row(
            NAME,
            f"Aftercare {label} peak RSS, {count:,} future reminders",
            "MB",
            _mb([p[process] for p in peaks["future"]]),
            "the same, no reminders",
            _mb([p[process] for p in peaks["empty"]]),
            target="≤ 1.10×",
            lower_is_better=True,
        )
        if row.ratio is not None:
            row.met = row.ratio <= 1.10
        out.append(row)
    future = naive["future"]
    naive_row = Row(
        NAME,
        f"naive worker (prefork x2) peak RSS, {n:,} ETA tasks on Redis",
        "MB",
        _mb([r["peak_rss"] for r in future]),
        f"the same, {probes} tasks",
        _mb([r["peak_rss"] for r in naive["probes"]]),
        lower_is_better=True,
        note=(
            f"after {future[0]['window']:.0f} s it held "
            f"{min(r['distinct_received'] for r in future):,} of the tasks, "
            f"{min(r['received'] for r in future):,} messages with redeliveries"
        ),
    )
    out.append(naive_row)
    empty = [p["worker"] for p in peaks["empty"]]
    ours = [(p["worker"] - min(empty)) / count / 1024 for p in peaks["future"]]
    idle = min(r["peak_rss"] for r in naive["probes"])
    theirs = [(r["peak_rss"] - idle) / max(r["received"], 1) / 1024 for r in future]
    out.append(
        Row(
            NAME,
            "worker RSS per future reminder (naive: per task message held)",
            "KB",
            summary(ours),
            "naive: apply_async(eta) per reminder",
            summary(theirs),
            lower_is_better=True,
        )
    )
    out.append(
        Row(
            NAME,
            f"database: reminders table with indexes, {count:,} rows",
            "bytes/reminder",
            summary([size["reminders_total_bytes"] / count]),
            note=f"{size['reminders_total_bytes'] / MB:.1f} MB",
        )
    )
    ours_dup = sum(duplicates(d) for d in bench.raw.get("delivery", {}).get("runs", []))
    for run in bench.raw.get("burst", {}).values():
        ours_dup += sum(duplicates(r) for r in run)
    theirs_dup = [r["executions"] - r["tasks_run"] for r in naive["probes"]]
    measured = "delivery" in bench.raw or "burst" in bench.raw
    dup = Row(
        NAME,
        "duplicate sends (Aftercare: delivery + burst scenarios)",
        "",
        summary([ours_dup]) if measured else None,
        f"naive: extra executions of {probes} tasks due after 1 visibility timeout",
        summary(theirs_dup),
        target="0",
        note="" if measured else "n/a: run with delivery or burst",
        lower_is_better=True,
    )
    if measured:
        dup.met = ours_dup == 0
    out.append(dup)
    return out
