"""Scenario 2, dispatch: due reminders claimed and handed to the broker per second.

Aftercare: :func:`aftercare.reminders.dispatch.dispatch_due` with the real Celery publish
(:func:`aftercare.worker.tasks.publish_send`, Redis) and the configured batch sizes, with 0 and
with 1,000,000 future reminders in the table. Baselines, same run: a bare Celery loop publishing
one no-op task per reminder, and a raw psycopg ``SELECT ... FOR UPDATE SKIP LOCKED`` + ``UPDATE``
claim loop (no publish). The claim query is captured as the product sends it and EXPLAINed
(ANALYZE) with the million future reminders present, and so is the backpressure count
(:func:`aftercare.reminders.dispatch.count_queued`) with ``AFTERCARE_DISPATCH_MAX_QUEUED``
reminders queued. The rates are measured without the limit (``max_queued=0``): they are the
claim path's speed, which the limit only stops.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import psycopg
from sqlalchemy import event

from aftercare.clock import SystemClock
from aftercare.reminders.dispatch import claim_due, count_queued, dispatch_due
from aftercare.runtime import Runtime
from aftercare.storage.migrate import upgrade
from aftercare.worker.celeryconfig import SEND_QUEUE
from aftercare.worker.tasks import publish_send
from bench import noop_app
from bench.context import Bench
from bench.data import synthetic_reminders, template_session
from bench.infra import ScratchPostgres, log
from bench.results import Row, summary

NAME = "dispatch"
INDEX = "ix_reminders_due_scheduled"
IN_FLIGHT_INDEX = "ix_reminders_in_flight"
DUE_STEP = "bench-due"
_batches = count(1)


def _add_due(bench: Bench, session_id: int, n: int) -> None:
    """``n`` reminders due over the last ten minutes. The previous batch is cancelled, not
    deleted: a DELETE checks the unindexed ``reminders.fallback_of_id`` foreign key with a
    sequential scan per row (3,000 rows took 76 s with 200,000 in the table)."""
    with bench.pg.connect() as conn:
        conn.execute(
            "UPDATE reminders SET state = 'cancelled' WHERE step LIKE %s AND state <> 'cancelled'",
            (DUE_STEP + "%",),
        )
        conn.commit()
    synthetic_reminders(
        bench,
        session_id,
        n,
        step=f"{DUE_STEP}-{next(_batches)}",
        due_from="(now() AT TIME ZONE 'utc') - interval '10 minutes'",
        spread="9 minutes",
    )
    bench.vacuum()


def aftercare_rate(bench: Bench, n: int) -> tuple[float, dict[str, Any]]:
    settings = bench.rt.settings
    client = bench.redis.client()
    client.delete(SEND_QUEUE)
    started = time.perf_counter()
    result = dispatch_due(
        db=bench.rt.db,
        clock=SystemClock(),
        publish=publish_send,
        batch_size=settings.dispatch_batch,
        chunk_size=settings.send_batch,
        time_budget=300.0,
    )
    elapsed = time.perf_counter() - started
    detail = {**result.as_dict(), "seconds": elapsed, "messages": client.llen(SEND_QUEUE)}
    client.delete(SEND_QUEUE)
    if result.claimed != n:
        log(f"dispatch claimed {result.claimed} of {n} due reminders")
    return result.claimed / elapsed, detail


def raw_claim_rate(bench: Bench, batch: int) -> float:
    """What PostgreSQL allows: the same claim in plain SQL, no ORM and no publish."""
    claimed = 0
    with bench.pg.connect() as conn:
        started = time.perf_counter()
        while True:
            now = datetime.now(UTC).replace(tzinfo=None)
            rows = conn.execute(
                "SELECT id FROM reminders WHERE state = 'scheduled' AND due_at <= %s "
                "ORDER BY due_at LIMIT %s FOR UPDATE SKIP LOCKED",
                (now, batch),
            ).fetchall()
            ids = [r[0] for r in rows]
            if ids:
                conn.execute(
                    "UPDATE reminders SET state = 'queued', updated_at = %s "
                    "WHERE id = ANY(%s) AND state = 'scheduled'",
                    (now, ids),
                )
            conn.commit()
            claimed += len(ids)
            if len(ids) < batch:
                break
        return claimed / (time.perf_counter() - started)


def celery_loop_rate(bench: Bench, n: int, cap: float) -> float:
    """The usual way: one ``apply_async`` per reminder (a no-op task, same broker)."""
    noop_app.configure(bench.redis.url)
    client = bench.redis.client()
    done = 0
    started = time.perf_counter()
    for reminder_id in range(n):
        noop_app.noop.apply_async(args=[reminder_id])
        done += 1
        if done % 100 == 0 and time.perf_counter() - started > cap:
            break
    elapsed = time.perf_counter() - started
    client.delete(noop_app.QUEUE)
    return done / elapsed


def _captured(bench: Bench, marker: str, call: Any) -> tuple[str, Any]:
    """The statement (and parameters) containing ``marker`` that ``call(db_session)`` sends."""
    engine = bench.rt.db.engine
    captured: list[tuple[str, Any]] = []

    def grab(_c: Any, _cur: Any, statement: str, parameters: Any, _ctx: Any, _many: bool) -> None:
        if marker in statement:
            captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", grab)
    try:
        with bench.rt.db.sessionmaker() as db_session:
            call(db_session)
            db_session.rollback()
    finally:
        event.remove(engine, "before_cursor_execute", grab)
    return captured[0]


def _explain(bench: Bench, statement: str, parameters: Any) -> tuple[list[dict[str, Any]], Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of one statement, rolled back: its nodes and its plan."""
    with psycopg.connect(bench.pg.url) as conn:
        plan = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, parameters
        ).fetchone()[0]  # type: ignore[index]
        conn.rollback()
    if isinstance(plan, str):
        plan = json.loads(plan)
    return list(_nodes(plan[0]["Plan"])), plan


def _plan_text(bench: Bench, statement: str, parameters: Any) -> str:
    with psycopg.connect(bench.pg.url) as conn:
        text = "\n".join(
            r[0] for r in conn.execute("EXPLAIN (ANALYZE, COSTS OFF) " + statement, parameters)
        )
        conn.rollback()
    return text


def explain_claim(bench: Bench) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of the claim exactly as claim_due sends it (rolled back)."""
    statement, parameters = _captured(
        bench,
        "SKIP LOCKED",
        lambda s: claim_due(s, now=datetime.now(UTC), limit=bench.rt.settings.dispatch_batch),
    )
    nodes, plan = _explain(bench, statement, parameters)
    text = _plan_text(bench, statement, parameters)
    scans = [n for n in nodes if n.get("Relation Name") == "reminders"]
    range_scan = any(
        n["Node Type"] in ("Index Scan", "Index Only Scan")
        and n.get("Index Name") == INDEX
        and "due_at" in n.get("Index Cond", "")
        for n in scans
    )
    sorts = [
        {k: n.get(k) for k in ("Node Type", "Sort Key", "Presorted Key", "Sort Method")}
        for n in nodes
        if "Sort" in n["Node Type"]
    ]
    return {
        "statement": statement,
        "index_range_scan": range_scan,
        "scans": [{k: n.get(k) for k in ("Node Type", "Index Name", "Index Cond")} for n in scans],
        "sorts": sorts,
        "execution_ms": plan[0].get("Execution Time"),
        "text": text,
    }


def explain_count(bench: Bench, step: str) -> dict[str, Any]:
    """The backpressure count with ``dispatch_max_queued`` of ``step``'s reminders queued."""
    limit = bench.rt.settings.dispatch_max_queued
    with bench.pg.connect() as conn:
        conn.execute(
            "UPDATE reminders SET state = 'queued', updated_at = now() AT TIME ZONE 'utc' "
            "WHERE id IN (SELECT id FROM reminders WHERE step LIKE %s "
            "AND state = 'scheduled' LIMIT %s)",
            (step + "%", limit),
        )
        conn.commit()
    since = datetime.now(UTC) - timedelta(seconds=bench.rt.settings.stale_after)
    statement, parameters = _captured(
        bench, "count(", lambda s: count_queued(s, since=since, limit=limit)
    )
    nodes, plan = _explain(bench, statement, parameters)
    scans = [n for n in nodes if n.get("Relation Name") == "reminders"]
    range_scan = any(
        n["Node Type"] in ("Index Scan", "Index Only Scan")
        and n.get("Index Name") == IN_FLIGHT_INDEX
        and "state" in n.get("Index Cond", "")
        for n in scans
    )
    return {
        "statement": statement,
        "queued": limit,
        "index_range_scan": range_scan,
        "scans": [
            {k: n.get(k) for k in ("Node Type", "Index Name", "Index Cond", "Heap Fetches")}
            for n in scans
        ],
        "execution_ms": plan[0].get("Execution Time"),
        "text": _plan_text(bench, statement, parameters),
    }


def _nodes(node: dict[str, Any]) -> Any:
    yield node
    for child in node.get("Plans", ()):
        yield from _nodes(child)


def run(bench: Bench) -> list[Row]:
    """Two scratch databases, one empty and one with the future reminders, measured in turn
    within each repetition so that a change in the machine's load hits both alike."""
    bench.truncate()
    n = bench.size(50_000, 5_000)
    future = bench.size(1_000_000, 200_000)
    cap = bench.size(4.0, 1.5)
    batch = bench.rt.settings.dispatch_batch
    other = ScratchPostgres()
    other.create()
    full = replace(bench, pg=other)
    try:
        upgrade(other.url)
        full.rt = Runtime(full.settings())
        sides = {"0": bench, "future": full}
        sessions = {k: template_session(side.rt, zone=bench.zone) for k, side in sides.items()}
        log(f"dispatch: adding {future:,} future reminders to the second database")
        started = time.perf_counter()
        synthetic_reminders(
            full,
            sessions["future"],
            future,
            step="bench-future",
            due_from="(now() AT TIME ZONE 'utc') + interval '1 day'",
            spread="90 days",
        )
        full.vacuum()
        insert_seconds = time.perf_counter() - started
        # Warm-up (connections, compiled statements, the Celery app): not measured.
        for key, side in sides.items():
            _add_due(side, sessions[key], batch * 2)
            aftercare_rate(side, batch * 2)
            _add_due(side, sessions[key], batch * 2)
            raw_claim_rate(side, batch)
        celery_loop_rate(bench, 200, cap)
        rates: dict[str, list[float]] = {
            k: [] for k in ("aftercare_0", "raw_0", "celery_loop", "aftercare_future", "raw_future")
        }
        details: list[dict[str, Any]] = []
        for rep in range(bench.reps):
            for key, side in sides.items():
                shown = future if key == "future" else 0
                log(f"dispatch {rep + 1}/{bench.reps}: {n:,} due, {shown:,} future")
                _add_due(side, sessions[key], n)
                rate, detail = aftercare_rate(side, n)
                rates[f"aftercare_{key}"].append(rate)
                details.append({"future": shown, **detail})
                _add_due(side, sessions[key], n)
                rates[f"raw_{key}"].append(raw_claim_rate(side, batch))
            rates["celery_loop"].append(celery_loop_rate(bench, n, cap))
        _add_due(full, sessions["future"], n)
        plan = explain_claim(full)
        counting = explain_count(full, DUE_STEP)
    finally:
        if hasattr(full, "rt"):
            full.rt.db.dispose()
        other.drop()
    bench.truncate()
    bench.raw[NAME] = {
        "due": n,
        "future": future,
        "future_insert_seconds": insert_seconds,
        **rates,
        "runs": details,
        "explain": plan,
        "explain_count": counting,
    }
    return _rows(rates, plan, counting, future)


def _rows(
    rates: dict[str, list[float]], plan: dict[str, Any], counting: dict[str, Any], future: int
) -> list[Row]:
    zero, full = summary(rates["aftercare_0"]), summary(rates["aftercare_future"])
    loop = summary(rates["celery_loop"])
    vs_loop = Row(
        NAME,
        "dispatch_due + publish_send, 0 future",
        "reminders/s",
        zero,
        "bare Celery loop, 1 no-op task per reminder",
        loop,
        target="≥ 10,000/s and ≥ 3×",
    )
    if zero is not None and vs_loop.ratio is not None:
        vs_loop.met = zero.median >= 10_000 and vs_loop.ratio >= 3
    flat = Row(
        NAME,
        f"dispatch_due + publish_send, {future:,} future",
        "reminders/s",
        full,
        "the same, 0 future",
        zero,
        target="≥ 0.9× (flat)",
    )
    if flat.ratio is not None:
        flat.met = flat.ratio >= 0.9
    out = [vs_loop, flat]
    for phase, label in (("0", "0 future"), ("future", f"{future:,} future")):
        out.append(
            Row(
                NAME,
                f"dispatch_due + publish_send, {label}",
                "reminders/s",
                summary(rates[f"aftercare_{phase}"]),
                "raw SKIP LOCKED claim loop (psycopg, no publish)",
                summary(rates[f"raw_{phase}"]),
                target="(ceiling)",
            )
        )
    sorts = "; ".join(
        f"{s['Node Type']} on {s['Sort Key']}"
        + (f" presorted {s['Presorted Key']}" if s.get("Presorted Key") else "")
        for s in plan["sorts"]
    )
    scan = ", ".join(f"{s['Node Type']} {s.get('Index Name') or ''}".strip() for s in plan["scans"])
    out.append(
        Row(
            NAME,
            f"claim plan with {future:,} future",
            "",
            None,
            target="index range scan",
            met=plan["index_range_scan"],
            note=f"{scan}{'; ' + sorts if sorts else ''}; {plan['execution_ms']:.1f} ms",
        )
    )
    scan = ", ".join(
        f"{s['Node Type']} {s.get('Index Name') or ''}".strip() for s in counting["scans"]
    )
    out.append(
        Row(
            NAME,
            f"backpressure count plan, {counting['queued']:,} queued, {future:,} future",
            "",
            None,
            target="index range scan",
            met=counting["index_range_scan"],
            note=f"{scan}; {counting['execution_ms']:.1f} ms",
        )
    )
    return out
