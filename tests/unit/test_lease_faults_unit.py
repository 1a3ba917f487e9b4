"""The lease's error paths without a server: a lock file whose token cannot be written (``/dev/full``: open and
flock succeed, truncating and writing fail), and the shared backoff after Redis was found unreachable (issue 15).
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import threading

import pytest

from background.lease import (
    FileLease,
    LeaseKeeper,
    LeaseStoreUnreachable,
    RedisLease,
    outage_backoff,
    wait_for_ownership,
)
from tests.unit.test_lease_unit import FakeClock, FakeLeaseRedis

FULL_DEVICE = "/dev/full"  # a kernel device, present in every Linux container: a missing one must fail, not skip


def descriptor_count() -> int:
    return len(os.listdir("/proc/self/fd"))  # (includes the listing's own descriptor, before and after alike)


def descriptors_on(path: str) -> set[int]:
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == path:
                found.add(int(name))
        except OSError:  # the listing's own descriptor, closed by now
            pass
    return found


def test_a_file_lease_that_cannot_write_its_token_closes_the_descriptor_and_leaves_the_lock_free(caplog):
    caplog.set_level(logging.ERROR, logger="background.lease")
    assert descriptors_on(FULL_DEVICE) == set()
    before = descriptor_count()
    lease = FileLease(FULL_DEVICE)
    keeper = LeaseKeeper(lease, retry_interval=0.05)
    probe = None
    try:
        # When a lease cannot write its token (directly, then three times from the keeper)
        with pytest.raises(OSError):
            lease.try_acquire()
        for _ in range(3):
            assert keeper.step() == pytest.approx(0.05)

        # Then no descriptor was left open, it does not hold the lease, and the keeper logged the failure once
        assert descriptors_on(FULL_DEVICE) == set() and descriptor_count() == before
        assert not lease.holds_locally() and not keeper.held_event.is_set()
        assert len([m for m in caplog.messages if m.startswith("BG_POLLER: cannot open the lock file")]) == 1
        # and anyone else can take the lock
        probe = os.open(FULL_DEVICE, os.O_RDWR)
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        if probe is not None:
            os.close(probe)
        for leaked in descriptors_on(FULL_DEVICE):
            os.close(leaked)  # without the fix: do not keep /dev/full locked for the rest of the session


# --- the shared backoff after Redis was found unreachable ----------------------------------------------------------

def test_the_outage_backoff_doubles_stays_under_its_cap_and_is_jittered():
    rng = random.Random(7)
    delays = [outage_backoff(n, cap=4.0, rng=rng) for n in range(1, 9)]

    assert 0.4 <= delays[0] <= 0.5 and 0.8 <= delays[1] <= 1.0 and 1.6 <= delays[2] <= 2.0
    assert all(3.2 <= d <= 4.0 for d in delays[3:])
    assert len(set(delays[3:])) > 1  # jittered at the cap too
    assert outage_backoff(10_000, cap=1.0, rng=rng) <= 1.0


def test_a_verify_that_finds_redis_unreachable_makes_the_acting_threads_wait_then_probe_again(caplog):
    # Given a holder (30 s TTL, backoff capped at 2 s) whose Redis then refuses every call
    caplog.set_level(logging.INFO, logger="background.lease")
    clock = FakeClock()
    client = FakeLeaseRedis()
    lease = RedisLease(client, 30, clock=clock, max_backoff_s=2.0, rng=random.Random(1))
    assert lease.try_acquire()
    held, stop = threading.Event(), threading.Event()
    held.set()
    stop.set()  # every wait returns at once: the test reads how long it would have waited
    assert wait_for_ownership(lease, held, stop)
    client.broken = True

    # When a thread's verify fails
    with pytest.raises(LeaseStoreUnreachable):
        lease.verify()

    # Then, although the local deadline is far, the acting threads do not act until the backoff has passed
    assert lease.holds_locally()
    first = lease.backoff_remaining()
    assert 0.4 <= first <= 0.5
    assert wait_for_ownership(lease, held, stop) is False
    clock.now += first
    assert wait_for_ownership(lease, held, stop) is True  # time to probe again
    # and each further failure (any thread, the keeper too) doubles the pause, up to the cap
    pauses = []
    for _ in range(5):
        with pytest.raises(LeaseStoreUnreachable):
            lease.verify()
        pauses.append(lease.backoff_remaining())
        clock.now += pauses[-1]
    assert pauses[0] > first and all(1.6 <= p <= 2.0 for p in pauses[2:])
    with pytest.raises(LeaseStoreUnreachable):
        lease.renew()
    assert lease.backoff_remaining() > 0
    # and the outage was logged once
    assert [m for m in caplog.messages if "Redis unreachable" in m] == [
        "BG_POLLER: Redis unreachable (TimeoutError: Timeout reading from socket); "
        "polling nothing until it answers again"]

    # When a call succeeds again, the pause is over and the end is logged once
    client.broken = False
    clock.now += 0.1
    lease.verify()
    assert lease.backoff_remaining() == 0.0 and wait_for_ownership(lease, held, stop)
    assert lease.snapshot()["state"] == "held"
    lease.renew()
    ends = [m for m in caplog.messages if "Redis reachable again" in m]
    assert len(ends) == 1 and ends[0].startswith("BG_POLLER: Redis reachable again after ")
    client.close()


def test_the_file_lease_never_backs_off(tmp_path):
    lease = FileLease(str(tmp_path / "poller.lock"))
    assert lease.backoff_remaining() == 0.0


def test_a_failed_verify_that_nobody_waited_on_is_not_logged_as_an_outage(caplog):
    # Given a holder whose verify fails once and succeeds at the next call (nobody waited on the outage)
    caplog.set_level(logging.INFO, logger="background.lease")
    clock = FakeClock()
    client = FakeLeaseRedis()
    lease = RedisLease(client, 30, clock=clock)
    assert lease.try_acquire()
    client.broken = True
    with pytest.raises(LeaseStoreUnreachable):
        lease.verify()
    client.broken = False
    clock.now += 1
    lease.verify()

    # Then neither a start nor an end was logged, and the backoff is over
    assert caplog.messages == []
    assert lease.backoff_remaining() == 0.0 and lease.snapshot()["state"] == "held"
    client.close()
