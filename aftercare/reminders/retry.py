"""Retry policy for transient provider errors: exponential backoff with full jitter."""

from __future__ import annotations

import os
import random
from datetime import timedelta

MAX_ATTEMPTS = 6
BASE = timedelta(seconds=30)
CAP = timedelta(hours=1)

# Jitter only spreads retries out; it is not a security feature.
_rng = random.Random()  # noqa: S311
# Reseeded in every forked (prefork) worker child, or all children would draw the same jitter.
os.register_at_fork(after_in_child=_rng.seed)


def backoff(attempt: int, *, rng: random.Random | None = None) -> timedelta:
    """Delay before retry number ``attempt`` (1-based): between half and all of base*2^(n-1)."""
    ceiling = min(CAP, BASE * (2 ** max(attempt - 1, 0)))
    fraction = 0.5 + 0.5 * (rng or _rng).random()
    return timedelta(seconds=ceiling.total_seconds() * fraction)
