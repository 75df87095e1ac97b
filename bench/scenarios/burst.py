"""Scenario 4, burst lateness: N reminders due in the same second, delivered by the product's
own processes in the production layout (``aftercare beat``, a dispatch worker
``--queues dispatch --concurrency 1`` and a send worker ``--queues send``, prefork x2, with the
default ``AFTERCARE_DISPATCH_MAX_QUEUED``); lateness is the provider's receive time minus the
due time.

* unlimited: the fake Twilio takes everything; SMS and email mixed as the regimen mixes them.
  The run is capped; a reminder not received by the cap counts as later than the cap, and the
  p99 it implies at the measured drain rate is reported alongside.
* limited: the fake Twilio answers 429 beyond 10 messages per second per sender, Aftercare is
  configured for 10 MPS per sender. With a sender pool (``AFTERCARE_TWILIO_FROM`` as a list,
  each patient texted from one number chosen by a stable hash), the issue's 20 senders, one SMS
  per patient; and one sender at a proportionally lower N. Reported: achieved MPS as a share of
  the limit (the drain time is computable: each patient is texted from one number, so nothing
  drains sooner than the busiest number's SMS at exactly its limit), as a share of the
  aggregate limit, each sender's share of its own limit, and 429s. The pool's send worker runs
  :data:`POOL_CONCURRENCY` processes (``AFTERCARE_WORKER_CONCURRENCY``, as docs/operations.md
  advises for a pool): its batches wait for slots, not for the CPU, and a batch waits for its
  busiest number, so more batches in flight keep every number busy.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.context import Bench
from bench.data import clone_sessions, make_due, set_due, template_session
from bench.fakes import SmtpSink, Twilio
from bench.infra import log, wait_until
from bench.pipeline import (
    count_states,
    duplicate_sends,
    duplicates,
    heartbeat_after,
    pending,
    percentile,
    provider_env,
    start_beat,
    start_dispatcher,
    start_worker,
    warm_up,
)
from bench.results import Row, summary

NAME = "burst"
LIMIT_MPS = 10.0
SENDERS = 20
PER_SESSION = 46
SMS_PER_SESSION = 37
# The pool's numbers: distinct valid US numbers (the fake limits each one separately).
POOL = [f"+1500555{i:04d}" for i in range(SENDERS)]
# Send worker processes for the pool. One A/B run each (2,400 SMS, 20 x 10 MPS, this 2-core
# machine; docs/benchmarks.md): 2 -> 0.74 of the aggregate limit, 4 -> 0.81, 8 -> 0.91.
POOL_CONCURRENCY = 8


def park(bench: Bench, ids: list[int]) -> None:
    """What a capped run left due or in flight must not spill into the next run."""
    with bench.pg.connect() as conn:
        conn.execute(
            "UPDATE reminders SET state = 'cancelled' WHERE id = ANY(%s) "
            "AND state IN ('scheduled', 'queued', 'sending')",
            (ids,),
        )
        conn.commit()


def one_each(bench: Bench, ids: list[int], n: int) -> list[int]:
    """One of ``ids`` per session (patient), the first ``n`` sessions': a cohort falling due at
    once is many patients with one message each, which is what a sender pool spreads."""
    with bench.pg.connect() as conn:
        rows = conn.execute(
            "SELECT DISTINCT ON (session_id) id FROM reminders WHERE id = ANY(%s) "
            "ORDER BY session_id, id LIMIT %s",
            (ids, n),
        ).fetchall()
    return [r[0] for r in rows]


def per_sender(twilio: Twilio) -> dict[str, Any]:
    """Accepted SMS per sender and each sender's achieved rate while it was sending."""
    times: dict[str, list[float]] = {}
    for r in list(twilio.fake.received):
        if r.answer == "201":
            times.setdefault(r.from_ or "?", []).append(r.at)
    rates = [
        (len(t) - 1) / (max(t) - min(t)) for t in times.values() if len(t) > 1 and max(t) > min(t)
    ]
    counts = sorted(len(t) for t in times.values())
    return {
        "senders_used": len(times),
        "per_sender_counts": counts,
        "busiest_sender": counts[-1] if counts else 0,
        "sender_rate_median": sorted(rates)[len(rates) // 2] if rates else 0.0,
        "sender_rate_min": min(rates) if rates else 0.0,
    }


def _burst(
    bench: Bench,
    *,
    twilio: Twilio,
    sink: SmtpSink,
    env: dict[str, str],
    warm: list[int],
    burst_sessions: list[int],
    n: int,
    channel: str | None,
    cap: float,
    label: str,
    per_patient: bool = False,
    concurrency: int = 2,
) -> dict[str, Any]:
    """One burst: start beat, the dispatch worker and the send worker, warm them, make ``n``
    reminders due at one instant T0 (one per patient if ``per_patient``), wait for them (at
    most ``cap`` seconds after T0), stop everything."""
    bench.redis.flush()
    # The burst's reminders scheduled a year ahead for now; the warm-up reminders due now.
    ids = make_due(
        bench,
        burst_sessions,
        due=datetime.now(UTC) + timedelta(days=365),
        channel=channel,
        limit=None if per_patient else n,
    )
    if per_patient:
        ids = one_each(bench, ids, n)
    warm_ids = make_due(bench, warm, due=datetime.now(UTC) - timedelta(seconds=1))
    started = datetime.now(UTC)
    dispatcher = start_dispatcher(bench, f"{label}-dispatch", env)
    worker = start_worker(bench, f"{label}-send", env, queues="send", concurrency=concurrency)
    beat = start_beat(bench, f"{label}-beat", env)
    try:
        if not heartbeat_after(bench, started, timeout=60):
            raise RuntimeError(f"{label}: no dispatcher heartbeat within 60 s")
        warm_up(bench, warm_ids)
        twilio.reset()
        sink.reset()
        since = datetime.now(UTC)
        # Far enough ahead for the UPDATE to commit first (about 50,000 rows a second).
        due_at = time.time() + 2.0 + len(ids) / 25_000
        set_due(bench, ids, due=datetime.fromtimestamp(due_at, UTC))
        committed = time.time()
        deadline = due_at + cap
        done = wait_until(lambda: pending(bench, ids) == 0, timeout=deadline - time.time())
        received = sorted(twilio.accepted() + sink.accepted())
        refused = twilio.refused("429")
        senders = per_sender(twilio)
    finally:
        # A warm shutdown: the batches being sent are finished and recorded.
        bench.procs.stop(beat)
        bench.procs.stop(dispatcher, grace=30.0)
        bench.procs.stop(worker, grace=30.0)
        states = count_states(bench, ids)
        park(bench, ids)
    lateness = [t - due_at for t in received]
    missing = len(ids) - len(received)
    full = lateness + [math.inf] * max(missing, 0)
    spread = (received[-1] - received[0]) if len(received) > 1 else 0.0
    rate = (len(received) - 1) / spread if spread > 0 else 0.0
    # The same over the first 99% of what was due: one message retried after a 429 arrives
    # seconds after the rest and would otherwise set the whole run's rate.
    k = min(len(received), math.ceil(0.99 * len(ids)))
    spread_99 = (received[k - 1] - received[0]) if k > 1 else 0.0
    rate_99 = (k - 1) / spread_99 if spread_99 > 0 else 0.0
    first = min(lateness) if lateness else math.inf
    return {
        "n": len(ids),
        "received": len(received),
        "finished": done,
        "states": states,
        "committed_before_due": committed < due_at,
        "p50": percentile(full, 0.50),
        "p99": percentile(full, 0.99),
        "max": max(full),
        "first": first,
        "drain_rate": rate,
        "drain_seconds": spread,
        "drain_rate_99": rate_99,
        # At the measured drain rate, when the 99th percentile would have been received.
        "p99_projected": first + (math.ceil(0.99 * len(ids)) - 1) / rate if rate > 0 else None,
        "429": refused,
        **senders,
        **duplicate_sends(bench, twilio, sink, ids, since=since),
    }


def _case(bench: Bench, *, limit: float | None, senders: str = "", **burst: Any) -> dict[str, Any]:
    """One burst against fresh fakes: a fake Twilio refusing beyond ``limit`` messages per second
    per sender (None: unlimited) and Aftercare paced at the same rate (unlimited: 1,000,000),
    texting from ``senders`` when given (``AFTERCARE_TWILIO_FROM``)."""
    with Twilio(mps=limit) as twilio, SmtpSink() as sink:
        env = provider_env(bench, twilio, sink, mps=limit or 1_000_000)
        if senders:
            env["AFTERCARE_TWILIO_FROM"] = senders
        return _burst(bench, twilio=twilio, sink=sink, env=env, **burst)


def _pool_available() -> bool:
    """Whether this Aftercare takes a list of senders in ``AFTERCARE_TWILIO_FROM``."""
    try:
        import aftercare.channels.twilio.senders  # noqa: F401
    except ImportError:
        return False
    return True


def run(bench: Bench) -> list[Row]:
    bench.truncate()
    n_unlimited = bench.burst_size or bench.size(100_000, 1_000)
    n_limited = bench.size(120, 20)
    # 20 senders at 10 MPS: about 12 s of sending at exactly the aggregate limit.
    n_pool = bench.size(2_400, 400)
    pool = _pool_available()
    cap = bench.size(45.0, 20.0)
    template = template_session(bench.rt, zone=bench.zone)
    burst_sessions = clone_sessions(bench, template, math.ceil(n_unlimited / PER_SESSION))
    warm = clone_sessions(bench, template, 1, first=10_000_000)
    sms_template = template_session(bench.rt, zone=bench.zone, channels=("sms",), index=1)
    sms_sessions = clone_sessions(
        bench,
        sms_template,
        max(n_pool if pool else 0, math.ceil(n_limited / SMS_PER_SESSION)),
        first=20_000_000,
    )
    runs: dict[str, list[dict[str, Any]]] = {"unlimited": [], "limited": [], "pool": []}
    for rep in range(bench.reps):
        log(
            f"burst {rep + 1}/{bench.reps}: {n_unlimited:,} due at once, unlimited, cap {cap:.0f} s"
        )
        runs["unlimited"].append(
            _case(
                bench,
                limit=None,
                warm=warm,
                burst_sessions=burst_sessions,
                n=n_unlimited,
                channel=None,
                cap=cap,
                label="burst",
            )
        )
        if pool:
            log(
                f"burst {rep + 1}/{bench.reps}: {n_pool:,} SMS, one per patient, "
                f"{SENDERS} senders at {LIMIT_MPS:.0f} MPS each"
            )
            runs["pool"].append(
                _case(
                    bench,
                    limit=LIMIT_MPS,
                    senders=",".join(POOL),
                    warm=warm,
                    burst_sessions=sms_sessions,
                    n=n_pool,
                    channel="sms",
                    cap=n_pool / (LIMIT_MPS * SENDERS) * 2 + 20,
                    label="burst-pool",
                    per_patient=True,
                    concurrency=POOL_CONCURRENCY,
                )
            )
        log(f"burst {rep + 1}/{bench.reps}: {n_limited} SMS at {LIMIT_MPS:.0f} MPS, one sender")
        runs["limited"].append(
            _case(
                bench,
                limit=LIMIT_MPS,
                warm=warm,
                burst_sessions=sms_sessions,
                n=n_limited,
                channel="sms",
                cap=n_limited / LIMIT_MPS * 2 + 20,
                label="burst-mps",
            )
        )
    bench.truncate()
    bench.redis.flush()
    bench.raw[NAME] = runs
    rows = _rows(runs, n_unlimited, n_limited, cap)
    if pool:
        rows += _pool_rows(runs["pool"], n_pool)
    else:
        rows.append(
            Row(
                NAME,
                f"{n_pool:,} SMS at once, {SENDERS} senders",
                "",
                None,
                note="not measured: this Aftercare has no sender pool",
            )
        )
    return rows


def ideal_share_99(counts: list[int], mps: float) -> float:
    """The aggregate share (first 99%, as measured) that senders holding ``counts`` SMS would
    reach if each sent at exactly ``mps`` from the first instant: below 1 when the stable
    per-patient assignment gives some numbers more than others."""
    times = sorted(j / mps for count in counts for j in range(count))
    k = math.ceil(0.99 * len(times))
    return (k - 1) / times[k - 1] / (mps * len(counts)) if k > 1 and times[k - 1] > 0 else 0.0


def _pool_rows(pool: list[dict[str, Any]], n: int) -> list[Row]:
    aggregate = LIMIT_MPS * SENDERS
    label = f"{n:,} SMS at once, one per patient, {SENDERS} senders x {LIMIT_MPS:.0f} MPS"
    busiest = max(r["busiest_sender"] for r in pool)
    # The drain time is computable: each patient is texted from one number, so the busiest
    # number's SMS at exactly its limit take (count - 1) / MPS; nothing can drain sooner.
    drain = summary(
        [
            (r["busiest_sender"] - 1) / LIMIT_MPS / r["drain_seconds"]
            for r in pool
            if r["drain_seconds"] > 0
        ]
    )
    share = Row(
        NAME,
        f"{label}: achieved share of the limit: the busiest sender's SMS at exactly "
        f"{LIMIT_MPS:.0f} MPS over the measured drain (first to last receipt)",
        "",
        drain,
        target="≥ 0.95, zero 429s",
        note=f"429s {sum(r['429'] for r in pool)}; senders used "
        f"{min(r['senders_used'] for r in pool)}; busiest sender {busiest} SMS "
        f"(even spread {n / SENDERS:.0f}); "
        f"duplicate sends {sum(duplicates(r) for r in pool)}",
    )
    if drain is not None:
        share.met = drain.median >= 0.95 and all(r["429"] == 0 for r in pool)
    achieved = Row(
        NAME,
        f"{label}: achieved share of the {aggregate:.0f} MPS aggregate limit (first 99%)",
        "",
        summary([r["drain_rate_99"] / aggregate for r in pool]),
        "every sender at exactly its limit, with the same SMS per sender",
        summary([ideal_share_99(r["per_sender_counts"], LIMIT_MPS) for r in pool]),
    )
    each = Row(
        NAME,
        f"{label}: each sender's achieved share of its {LIMIT_MPS:.0f} MPS (median sender)",
        "",
        summary([r["sender_rate_median"] / LIMIT_MPS for r in pool]),
        note="slowest sender " + ", ".join(f"{r['sender_rate_min'] / LIMIT_MPS:.3f}" for r in pool),
    )
    ideal = summary([(math.ceil(0.99 * r["n"]) - 1) / aggregate for r in pool])
    late = summary([r["p99"] for r in pool if math.isfinite(r["p99"])])
    p99 = Row(
        NAME,
        f"{label}: p99 lateness",
        "s",
        late,
        "ideal drain at exactly the aggregate limit",
        ideal,
        lower_is_better=True,
    )
    return [share, achieved, each, p99]


def _rows(
    runs: dict[str, list[dict[str, Any]]], n_unlimited: int, n_limited: int, cap: float
) -> list[Row]:
    free, limited = runs["unlimited"], runs["limited"]
    out: list[Row] = []

    def late(values: list[float]) -> Any:
        return summary([v for v in values if math.isfinite(v)])

    capped = [r for r in free if not math.isfinite(r["p99"])]
    p99 = Row(
        NAME,
        f"{n_unlimited:,} due at once, unlimited: p99 lateness",
        "s",
        late([r["p99"] for r in free]),
        target="≤ 60 s",
        lower_is_better=True,
    )
    if capped:
        p99.value = summary([r["p99_projected"] for r in free if r["p99_projected"]])
        p99.note = (
            f"projected from the drain rate: {len(capped)}/{len(free)} runs stopped at the "
            f"{cap:.0f} s cap, {max(r['received'] for r in free):,} received at most"
        )
        p99.met = p99.value is not None and p99.value.median <= 60
    elif p99.value is not None:
        p99.met = p99.value.median <= 60
    out.append(p99)
    for key in ("first", "p50", "max"):
        unreached = all(not math.isfinite(r[key]) for r in free)
        out.append(
            Row(
                NAME,
                f"{n_unlimited:,} due at once, unlimited: {key} lateness",
                "s",
                late([r[key] for r in free]),
                note=f"> {cap:.0f} s: not received by the cap" if unreached else "",
                lower_is_better=True,
            )
        )
    out.append(
        Row(
            NAME,
            f"{n_unlimited:,} due at once, unlimited: drain rate",
            "reminders/s",
            summary([r["drain_rate"] for r in free]),
            note=f"duplicate sends {sum(duplicates(r) for r in free)}",
        )
    )
    achieved = summary([r["drain_rate"] / LIMIT_MPS for r in limited])
    share = Row(
        NAME,
        f"{n_limited} SMS at once, {LIMIT_MPS:.0f} MPS, 1 sender: achieved share of limit",
        "",
        achieved,
        target="≥ 0.95, zero 429s",
        note=f"429s {sum(r['429'] for r in limited)}",
    )
    if achieved is not None:
        share.met = achieved.median >= 0.95 and all(r["429"] == 0 for r in limited)
    out.append(share)
    ideal = summary([(math.ceil(0.99 * r["n"]) - 1) / LIMIT_MPS for r in limited])
    out.append(
        Row(
            NAME,
            f"{n_limited} SMS at once, {LIMIT_MPS:.0f} MPS, 1 sender: p99 lateness",
            "s",
            late([r["p99"] for r in limited]),
            "ideal drain at exactly the limit",
            ideal,
            lower_is_better=True,
        )
    )
    return out
