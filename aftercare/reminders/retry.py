"""Retry policy for transient provider errors: exponential backoff with full jitter."""

from __future__ import annotations

import os
import random
from datetime import timedelta

# Eight attempts are at least 31 minutes apart from first to last (half of 30 s x (2^7 - 1),
# the least the jitter allows): a provider outage of half an hour fails no reminder. (Six gave
# as little as 7.75 minutes, so a ten-minute outage failed some reminders at random.)
MAX_ATTEMPTS = 8
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
