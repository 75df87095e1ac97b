"""Deliberate crash points for the fault-injection suite (tests/faults).

``AFTERCARE_FAULTS`` (never set in production) arms them, e.g.
``before_send=0.1,after_send=0.1,after_record=0.05,dispatch_after_claim=0.2``: at each named
point the process kills itself with SIGKILL with that probability, exactly as an OOM kill or a
power cut would, so no ``finally`` block, no rollback and no acknowledgement runs.
"""

from __future__ import annotations

import os
import random
import signal

POINTS = frozenset({"before_send", "after_send", "after_record", "dispatch_after_claim"})
# Not security: only spreads the crashes over the run.
_rng = random.Random()  # noqa: S311
# Celery's prefork children are forked from one parent: without a fresh seed each child would
# draw the same numbers and crash at the same instruction as the child it replaced, forever.
os.register_at_fork(after_in_child=_rng.seed)


def _armed() -> dict[str, float]:
    spec = os.environ.get("AFTERCARE_FAULTS", "")
    armed: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, value = part.partition("=")
        if name in POINTS:
            armed[name] = float(value or "1")
    return armed


def crash_point(name: str) -> None:
    """Die here, with the configured probability, when the fault suite armed this point."""
    probability = _armed().get(name)
    if probability and _rng.random() < probability:
        os.kill(os.getpid(), signal.SIGKILL)
