"""A target's rate limit: a token bucket shared by the whole cluster (Redis) or by this process (without Redis).

``RedisTokenBucket.take()`` runs one Lua script on ``render_signal:rate:<target_id>`` (tokens and the time they were
counted, in Redis server time, so that the containers' clocks do not matter): it takes a token when one is there and
answers 0, else answers how many seconds until the next one. The bucket holds at most one second's worth of tokens
(at least one), so a quiet target can take a short burst and no more. ``LocalTokenBucket`` is the same rule in this
process only (the state store is SQLite: one container, and each of its workers counts for itself).
When Redis does not answer, ``take`` lets the attempt go: a rate limit must never stop delivery.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Protocol

logger = logging.getLogger(__name__)

RATE_KEY_PREFIX = "render_signal:rate:"

# KEYS: bucket.  ARGV: rate per second, capacity.  Returns seconds to wait (as a string), "0" when a token was taken.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity / rate + 1) * 1000))
return tostring(wait)
"""


class TokenBucket(Protocol):
    def take(self) -> float: ...


def capacity_for(rate_per_second: float) -> float:
    return max(1.0, float(rate_per_second))


class RedisTokenBucket:
    """The cluster-wide bucket of one target."""

    def __init__(self, redis_client: Any, target_id: str, rate_per_second: float) -> None:
        if not rate_per_second > 0:
            raise ValueError("rate_per_second must be > 0")
        self.key = RATE_KEY_PREFIX + target_id
        self.rate = float(rate_per_second)
        self.capacity = capacity_for(rate_per_second)
        self._script = redis_client.register_script(_TAKE)
        self._failing = False

    def take(self) -> float:
        """0 when a token was taken, else the seconds until one is there. Never raises."""
        try:
            wait = float(self._script(keys=[self.key], args=[repr(self.rate), repr(self.capacity)]))
        except Exception as exc:  # Redis errors: the attempt goes (a limit never stops delivery)
            if not self._failing:
                self._failing = True
                logger.warning("WEBHOOK: rate limit of %s not checked (%s); sending", self.key, type(exc).__name__)
            return 0.0
        self._failing = False
        return wait


class LocalTokenBucket:
    """The same bucket in this process (thread-safe)."""

    def __init__(self, rate_per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not rate_per_second > 0:
            raise ValueError("rate_per_second must be > 0")
        self.rate = float(rate_per_second)
        self.capacity = capacity_for(rate_per_second)
        self._tokens = self.capacity
        self._clock = clock
        self._at = clock()
        self._lock = threading.Lock()

    def take(self) -> float:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + max(0.0, now - self._at) * self.rate)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            return (1 - self._tokens) / self.rate
