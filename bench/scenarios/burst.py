"""Scenario 4, burst lateness: N reminders due in the same second, delivered by the product's
own processes (``aftercare beat`` + ``aftercare worker``, prefork x2); lateness is the provider's
receive time minus the due time.

* unlimited: the fake Twilio takes everything; SMS and email mixed as the regimen mixes them.
  The run is capped; a reminder not received by the cap counts as later than the cap, and the
  p99 it implies at the measured drain rate is reported alongside.
* limited: the fake Twilio answers 429 beyond 10 messages per second per sender, Aftercare is
  configured for 10 MPS. Aftercare has one sending identity (``AFTERCARE_TWILIO_FROM`` or one
  Messaging Service), so the issue's 20 senders cannot be configured: this measures one sender
  at a proportionally lower N, and reports achieved MPS as a share of the limit and 429s.
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
    start_worker,
    warm_up,
)
from bench.results import Row, summary

NAME = "burst"
LIMIT_MPS = 10.0
PER_SESSION = 46


def park(bench: Bench, ids: list[int]) -> None:
    """What a capped run left due or in flight must not spill into the next run."""
    with bench.pg.connect() as conn:
        conn.execute(
            "UPDATE reminders SET state = 'cancelled' WHERE id = ANY(%s) "
            "AND state IN ('scheduled', 'queued', 'sending')",
            (ids,),
        )
        conn.commit()


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
) -> dict[str, Any]:
    """One burst: start beat + worker, warm them, make ``n`` reminders due at one instant T0,
    wait for them (at most ``cap`` seconds after T0), stop everything."""
    bench.redis.flush()
    # The burst's reminders scheduled a year ahead for now; the warm-up reminders due now.
    ids = make_due(
        bench, burst_sessions, due=datetime.now(UTC) + timedelta(days=365), channel=channel, limit=n
    )
    warm_ids = make_due(bench, warm, due=datetime.now(UTC) - timedelta(seconds=1))
    started = datetime.now(UTC)
    worker = start_worker(bench, f"{label}-worker", env)
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
    finally:
        # A warm shutdown: the batches being sent are finished and recorded.
        bench.procs.stop(beat)
        bench.procs.stop(worker, grace=30.0)
        states = count_states(bench, ids)
        park(bench, ids)
    lateness = [t - due_at for t in received]
    missing = len(ids) - len(received)
    full = lateness + [math.inf] * max(missing, 0)
    spread = (received[-1] - received[0]) if len(received) > 1 else 0.0
    rate = (len(received) - 1) / spread if spread > 0 else 0.0
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
        # At the measured drain rate, when the 99th percentile would have been received.
        "p99_projected": first + (math.ceil(0.99 * len(ids)) - 1) / rate if rate > 0 else None,
        "429": refused,
        **duplicate_sends(bench, twilio, sink, ids, since=since),
    }


def run(bench: Bench) -> list[Row]:
    bench.truncate()
    n_unlimited = bench.size(100_000, 1_000)
    n_limited = bench.size(120, 20)
    cap = bench.size(45.0, 20.0)
    template = template_session(bench.rt, zone=bench.zone)
    burst_sessions = clone_sessions(bench, template, math.ceil(n_unlimited / PER_SESSION))
    warm = clone_sessions(bench, template, 1, first=10_000_000)
    sms_template = template_session(bench.rt, zone=bench.zone, channels=("sms",), index=1)
    sms_sessions = clone_sessions(bench, sms_template, math.ceil(n_limited / 37), first=20_000_000)
    runs: dict[str, list[dict[str, Any]]] = {"unlimited": [], "limited": []}
    for rep in range(bench.reps):
        log(
            f"burst {rep + 1}/{bench.reps}: {n_unlimited:,} due at once, unlimited, cap {cap:.0f} s"
        )
        with Twilio() as twilio, SmtpSink() as sink:
            env = provider_env(bench, twilio, sink, mps=1_000_000)
            runs["unlimited"].append(
                _burst(
                    bench,
                    twilio=twilio,
                    sink=sink,
                    env=env,
                    warm=warm,
                    burst_sessions=burst_sessions,
                    n=n_unlimited,
                    channel=None,
                    cap=cap,
                    label="burst",
                )
            )
        log(f"burst {rep + 1}/{bench.reps}: {n_limited} SMS at {LIMIT_MPS:.0f} MPS, one sender")
        with Twilio(mps=LIMIT_MPS) as twilio, SmtpSink() as sink:
            env = provider_env(bench, twilio, sink, mps=LIMIT_MPS)
            runs["limited"].append(
                _burst(
                    bench,
                    twilio=twilio,
                    sink=sink,
                    env=env,
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
    return _rows(runs, n_unlimited, n_limited, cap)


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
        note=f"429s {sum(r['429'] for r in limited)}; "
        "one sender only: Aftercare cannot spread patients over 20 senders",
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
