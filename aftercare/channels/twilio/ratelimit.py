"""Per-sender sending rate, shared by every worker process through Redis.

Twilio accepts a fixed number of messages per second per sender (a number, an alphanumeric
sender ID or a Messaging Service). At 08:00 thousands of reminders fall due at once; without a
shared limit each worker process would send as fast as it can and the burst would draw 429s.

The limit is a GCRA (generic cell rate algorithm) with *reservations*: a caller atomically takes
the next free slot for its sender (one Lua script, Redis's own clock, so every worker agrees on
time), then sends at that slot. Delivery reserves a batch's slots in one call, only those at
most :data:`LEAD` seconds away (:meth:`RedisRateLimiter.reserve_many`), and sends in slot
order, so its threads always work on the earliest slots and waits stay short; the backlog
waits in the broker, in due order, not in sleeping workers. Slots are spaced
``1 / (mps * HEADROOM)`` seconds apart with no burst allowance, so a one-second window never
holds more than ``mps`` sends even when network jitter bunches them.

Without Redis (the embedded default, one worker process) an in-process limiter gives the same
spacing within that process only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import redis

from aftercare.channels.base import Slot

# Spare capacity kept below the configured rate: a send reserved for t may reach the provider a
# few milliseconds late, and the next one on time; 3% leaves room for that jitter (at 10 MPS
# against a provider counting per second: 0.97 achieved 0.969 of the limit with no 429, 0.99
# drew a 429; docs/benchmarks.md).
HEADROOM = 0.97
# A caller never sleeps longer than this for its slot; beyond it the send is retried later.
MAX_WAIT = 30.0
# A send this much later than its reserved slot gives the slot up and waits for a new one. The
# headroom leaves 1/0.97 - 1 = 31 ms in a full one-second window: a window's first send more
# than that late, and the rest on time, would put one more than the limit in the window. 20 ms
# leaves the rest for building and sending the request.
MISSED = 0.020
# How far ahead delivery reserves slots for a batch; a message whose sender's next slot is
# further away is reserved later, by the same batch, without failing anything.
LEAD = 1.0

# KEYS[1]: the sender's key. ARGV: interval and longest wait, in microseconds.
# Returns {1, wait_us} when a slot was reserved, {0, wait_us} when the wait would be too long
# (nothing reserved). The stored value is the sender's next free slot (its "TAT").
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now
if wait > tonumber(ARGV[2]) then return {0, wait} end
local ttl = math.ceil((tat + interval - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%d', tat + interval), 'PX', ttl)
return {1, wait}
"""

# The same for several slots in one call, in order: KEYS are the senders (repeated for several
# slots of one sender), ARGV as above. Returns, per key, wait_us when a slot was reserved and
# -1 - wait_us when it was not (that sender's later keys are then refused too).
_RESERVE_MANY = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local within = tonumber(ARGV[2])
local tats = {}
local taken = {}
local out = {}
for i, key in ipairs(KEYS) do
  local tat = tats[key]
  if tat == nil then
    tat = tonumber(redis.call('GET', key) or '0')
    if tat < now then tat = now end
  end
  local wait = tat - now
  if wait > within then
    out[i] = -1 - wait
  else
    out[i] = wait
    tat = tat + interval
    taken[key] = true
  end
  tats[key] = tat
end
for key in pairs(taken) do
  local ttl = math.ceil((tats[key] - now) / 1000) + 1000
  redis.call('SET', key, string.format('%d', tats[key]), 'PX', ttl)
end
return out
"""


class RateLimitTimeout(Exception):
    """The next free slot is further away than the caller may wait."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"next sending slot is {wait:.1f}s away")
        self.wait = wait


class RateLimiterUnavailable(Exception):
    """The shared limiter (Redis) could not be asked; nothing was sent."""


class RateLimiter(Protocol):
    def acquire(self, key: str) -> float:
        """Wait for ``key``'s next slot; returns the seconds waited.

        Raises RateLimitTimeout (nothing reserved) or RateLimiterUnavailable.
        """
        ...

    def reserve_many(self, keys: Sequence[str], *, within: float) -> list[Slot]:
        """Reserve, in order, one slot per key (a key once per slot) when it is at most
        ``within`` seconds away; never sleeps. Raises RateLimiterUnavailable (nothing
        reserved)."""
        ...


def interval_for(mps: float) -> float:
    """Seconds between two sends from one sender at ``mps`` messages per second."""
    return 1.0 / (mps * HEADROOM)


class RedisRateLimiter:
    """The shared limiter: every worker process reserves slots in the same Redis keys."""

    def __init__(
        self,
        url: str,
        *,
        mps: float,
        max_wait: float = MAX_WAIT,
        prefix: str = "aftercare:sms-rate:",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._url = url
        self._interval_us = round(interval_for(mps) * 1_000_000)
        self._max_wait_us = round(max_wait * 1_000_000)
        self._prefix = prefix
        self._sleep = sleep
        self._client: redis.Redis | None = None

    def _redis(self) -> redis.Redis:
        # Built on first use, in the process that uses it (after Celery's fork).
        if self._client is None:
            self._client = redis.Redis.from_url(
                self._url, socket_connect_timeout=5, socket_timeout=5
            )
        return self._client

    def reserve(self, key: str) -> float:
        """Reserve ``key``'s next slot without sleeping; returns the seconds until it."""
        try:
            reply = self._redis().eval(
                _RESERVE, 1, self._prefix + key, self._interval_us, self._max_wait_us
            )
        except redis.RedisError as exc:
            raise RateLimiterUnavailable(type(exc).__name__) from exc
        granted, wait_us = (int(value) for value in reply)
        if not granted:
            raise RateLimitTimeout(wait_us / 1_000_000)
        return wait_us / 1_000_000

    def reserve_many(self, keys: Sequence[str], *, within: float) -> list[Slot]:
        if not keys:
            return []
        try:
            reply = self._redis().eval(
                _RESERVE_MANY,
                len(keys),
                *(self._prefix + key for key in keys),
                self._interval_us,
                round(within * 1_000_000),
            )
        except redis.RedisError as exc:
            raise RateLimiterUnavailable(type(exc).__name__) from exc
        return [
            Slot(wait_us / 1_000_000, True) if wait_us >= 0 else Slot((-1 - wait_us) / 1e6, False)
            for wait_us in (int(value) for value in reply)
        ]

    def acquire(self, key: str) -> float:
        wait = self.reserve(key)
        if wait > 0:
            self._sleep(wait)
        return wait


class LocalRateLimiter:
    """The same spacing within one process (threads included); for the embedded default."""

    def __init__(
        self,
        *,
        mps: float,
        max_wait: float = MAX_WAIT,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._interval = interval_for(mps)
        self._max_wait = max_wait
        self._monotonic = monotonic
        self._sleep = sleep
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def reserve(self, key: str) -> float:
        """Reserve ``key``'s next slot without sleeping; returns the seconds until it."""
        with self._lock:
            now = self._monotonic()
            slot = max(self._next.get(key, now), now)
            wait = slot - now
            if wait > self._max_wait:
                raise RateLimitTimeout(wait)
            self._next[key] = slot + self._interval
            return wait

    def reserve_many(self, keys: Sequence[str], *, within: float) -> list[Slot]:
        slots: list[Slot] = []
        with self._lock:
            now = self._monotonic()
            for key in keys:
                slot = max(self._next.get(key, now), now)
                if slot - now > within:
                    slots.append(Slot(slot - now, False))
                else:
                    self._next[key] = slot + self._interval
                    slots.append(Slot(slot - now, True))
        return slots

    def acquire(self, key: str) -> float:
        wait = self.reserve(key)
        if wait > 0:
            self._sleep(wait)
        return wait


def build_rate_limiter(*, broker_url: str, mps: float) -> RateLimiter:
    """The Redis limiter when the broker is Redis (production), else the in-process one."""
    if broker_url.startswith(("redis://", "rediss://")):
        return RedisRateLimiter(broker_url, mps=mps)
    return LocalRateLimiter(mps=mps)
