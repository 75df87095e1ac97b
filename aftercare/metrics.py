"""Prometheus metrics the worker counts: defined here, at the bottom, so delivery and dispatch can
count without importing ``ops`` (which reads them and serves them).

Two sources, each correct however many processes run:

* the web app's ``/metrics`` reads the database at scrape time (reminders by state, channel and
  step; open flags; overdue work; see :mod:`aftercare.ops.db_metrics`), so every API replica
  reports the same truth;
* each worker counts what it does (sends by outcome, provider errors, send lateness, claim batch
  sizes) and serves them on ``AFTERCARE_WORKER_METRICS_PORT`` (prefork children aggregate through
  prometheus_client's multiprocess mode).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

SENDS = Counter(
    "aftercare_worker_sends", "Reminders handled by this worker, by outcome", ["outcome"]
)
PROVIDER_ERRORS = Counter(
    "aftercare_worker_provider_errors",
    "Provider errors by transport and code",
    ["transport", "code"],
)
SLOTS_MISSED = Counter(
    "aftercare_worker_sms_slots_missed",
    "Reserved SMS sending slots reached too late and left unused (each message got a new one)",
)
LATENESS = Histogram(
    "aftercare_worker_send_lateness_seconds",
    "Provider hand-off time minus due time",
    ["channel"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 900, 3600, 4 * 3600, 24 * 3600),
)
CLAIM_BATCH = Histogram(
    "aftercare_dispatch_claim_batch_size",
    "Reminders claimed per dispatcher round trip",
    buckets=(0, 1, 10, 50, 100, 250, 500, 1000, 2500, 5000),
)
