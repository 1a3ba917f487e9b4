"""A target's rate limit is one token bucket for the whole cluster (issue 17), in a real redis-server.

Only lower bounds are asserted: whatever the machine's speed, N attempts at R per second cannot take less than
(N - burst) / R seconds, whichever process takes the tokens.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis

from services.rate_limit import LocalTokenBucket, RedisTokenBucket

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


def take_all(bucket, count: int) -> None:
    for _ in range(count):
        while (wait := bucket.take()) > 0:
            time.sleep(wait)


def test_two_processes_sharing_a_targets_bucket_together_stay_under_its_rate(redis_url):
    # Given two workers' buckets for one target limited to 20 per second (a burst of 20)
    clients = [redis.Redis.from_url(redis_url, decode_responses=True) for _ in range(2)]
    buckets = [RedisTokenBucket(client, "zapier", 20.0) for client in clients]
    started = time.monotonic()
    # When each takes 30 tokens at once
    threads = [threading.Thread(target=take_all, args=(bucket, 30)) for bucket in buckets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # Then the 60 attempts took at least (60 - 20) / 20 = 2 seconds: one bucket, not two
    assert time.monotonic() - started >= 2.0 * 0.95
    for client in clients:
        client.close()


def test_a_quiet_target_takes_a_burst_of_one_seconds_worth_at_once(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    bucket = RedisTokenBucket(client, "burst", 5.0)
    assert [bucket.take() for _ in range(5)] == [0.0] * 5
    assert bucket.take() > 0
    client.close()


def test_an_unreachable_redis_never_stops_delivery():
    client = redis.Redis(host="127.0.0.1", port=9, socket_connect_timeout=0.2, decode_responses=True)
    assert RedisTokenBucket(client, "t", 1.0).take() == 0.0


def test_the_local_bucket_follows_the_same_rule():
    now = [0.0]
    bucket = LocalTokenBucket(2.0, clock=lambda: now[0])
    assert [bucket.take() for _ in range(2)] == [0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)
    now[0] = 0.5
    assert bucket.take() == 0.0
