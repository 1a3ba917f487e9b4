"""The one way render-signal builds a Redis client (shared by the state store and the poller lease).

Every call fails fast: connect and read timeouts of ``REDIS_TIMEOUT_SECONDS`` and no hidden retries. redis-py 6+
retries timeouts three times with backoff by default, which turns a 3 s timeout against a frozen server into tens of
seconds (see ../shared/TESTING-INFRA.md); callers here have their own loops and retry on their own schedule.
Building the client opens no socket; the first command does.
"""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from settings import Settings

# A connection idle for longer than this is PINGed before reuse, so a connection dropped by a proxy or a Redis
# restart is found on a harmless PING rather than on a state-changing script.
HEALTH_CHECK_INTERVAL_SECONDS = 30


def make_redis_client(settings: Settings) -> redis.Redis:
    """A thread-safe, fork-safe client for ``settings.redis_url`` with fail-fast timeouts; replies are ``str``."""
    if not settings.redis_url:
        raise ValueError("make_redis_client needs settings.redis_url")
    timeout = settings.redis_timeout_seconds
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=HEALTH_CHECK_INTERVAL_SECONDS,
        decode_responses=True,
    )
