"""Edges of the lease that a real server cannot produce on demand: foreign tokens, errors mid-renewal, frozen clocks.

fakeredis has no Lua without the optional ``lupa`` package, so ``FakeLeaseRedis`` answers redis-py ``Lock``'s three
scripts (looked up by SHA) in Python. It is single-threaded test code; atomicity is proven against the real server
in test_lock_redis.py.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading

import fakeredis
import pytest
import redis
from redis.lock import Lock

from background import lease as lease_module
from background.lease import (
    LEASE_KEY,
    LeaseKeeper,
    LeaseLost,
    LeaseStoreUnreachable,
    OwnershipGuard,
    RedisLease,
)


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


class FakeLeaseRedis(fakeredis.FakeRedis):
    """fakeredis plus Lock's Lua scripts, and a switch that makes every call fail like an unreachable server."""

    broken = False

    def execute_command(self, *args, **options):
        if self.broken:
            raise redis.exceptions.TimeoutError("Timeout reading from socket")
        return super().execute_command(*args, **options)

    def evalsha(self, sha, numkeys, *keys_and_args):
        if self.broken:
            raise redis.exceptions.TimeoutError("Timeout reading from socket")
        key, token = keys_and_args[0], keys_and_args[1]
        token = token if isinstance(token, bytes) else str(token).encode()
        owned = self.get(key) == token
        if sha == _sha(Lock.LUA_RELEASE_SCRIPT):
            return int(owned and bool(self.delete(key)))
        if sha == _sha(Lock.LUA_EXTEND_SCRIPT):
            if not owned or self.pttl(key) < 0:
                return 0
            return int(self.pexpire(key, int(keys_and_args[2])))  # replace_ttl=True is all the lease uses
        if sha == _sha(Lock.LUA_REACQUIRE_SCRIPT):
            return int(owned and self.pexpire(key, int(keys_and_args[2])))
        raise AssertionError(f"unexpected script {sha}")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def client():
    fake = FakeLeaseRedis()
    yield fake
    fake.close()


@pytest.fixture
def clock():
    return FakeClock()


def held_lease(client, clock, ttl=30.0) -> RedisLease:
    lease = RedisLease(client, ttl, clock=clock)
    assert lease.try_acquire()
    return lease


def messages(caplog, level=None) -> list[str]:
    return [r.getMessage() for r in caplog.records if level is None or r.levelno == level]


def test_acquisition_sets_the_key_with_the_ttl_and_logs_the_exact_line(client, clock, caplog):
    caplog.set_level(logging.INFO, logger="background.lease")
    lease = RedisLease(client, 30, clock=clock)
    keeper = LeaseKeeper(lease, retry_interval=10)

    delay = keeper.step()

    assert client.get(LEASE_KEY).decode() == lease.token
    assert 29_000 < client.pttl(LEASE_KEY) <= 30_000
    assert f"BG_POLLER: Singleton lock acquired (Redis) pid={os.getpid()}" in messages(caplog, logging.INFO)
    assert keeper.held_event.is_set() and delay == pytest.approx(10.0)
    snapshot = lease.snapshot()
    assert set(snapshot) == {"backend", "holder", "acquired_at", "expires_in_s", "renewals", "losses", "state"}
    assert snapshot["state"] == "held" and snapshot["holder"] == lease.token
    assert snapshot["acquired_at"].endswith("Z") and snapshot["expires_in_s"] == pytest.approx(30.0)


def test_a_renewal_that_finds_a_foreign_token_loses_the_lease_and_logs_it(client, clock, caplog):
    # Given a holder whose key was overwritten by another process (e.g. after it expired)
    caplog.set_level(logging.INFO, logger="background.lease")
    lease = held_lease(client, clock)
    keeper = LeaseKeeper(lease, retry_interval=10)
    keeper.held_event.set()
    foreign = "pid=42 host=other nonce=0123456789abcdef"
    client.set(LEASE_KEY, foreign, px=30_000)

    # When the keeper renews
    delay = keeper.step()

    # Then the lease is lost, with the exact operator line, and this process is back in standby
    assert f"BG_POLLER: lease lost (renewal found another holder: {foreign})" in messages(caplog, logging.ERROR)
    assert not lease.holds_locally() and not keeper.held_event.is_set()
    assert lease.snapshot() | {"acquired_at": None} == {
        "backend": "redis", "holder": foreign, "acquired_at": None, "expires_in_s": None, "renewals": 0,
        "losses": 1, "state": "standby"}
    assert delay == pytest.approx(10.0)
    assert client.get(LEASE_KEY).decode() == foreign  # never touched


def test_a_renewal_that_finds_the_key_gone_loses_the_lease(client, clock, caplog):
    caplog.set_level(logging.ERROR, logger="background.lease")
    lease = held_lease(client, clock)
    keeper = LeaseKeeper(lease, retry_interval=10)
    client.flushall()  # Redis restarted without persistence

    keeper.step()

    assert messages(caplog) == ["BG_POLLER: lease lost (renewal found the key gone (expired or deleted))"]
    assert lease.snapshot()["losses"] == 1 and not lease.holds_locally()


def test_a_redis_error_during_renewal_stops_the_holder_at_its_deadline_and_is_logged_once_per_outage(
        client, clock, caplog):
    # Given a holder with a 30 s TTL (deadline 30 - 6 s after its last confirmed renewal)
    caplog.set_level(logging.INFO, logger="background.lease")
    changes = []
    lease = held_lease(client, clock)
    keeper = LeaseKeeper(lease, retry_interval=5, on_change=changes.append)
    keeper.held_event.set()

    # When Redis stops answering for several renewals
    client.broken = True
    for _ in range(3):
        clock.now += 5
        keeper.step()
        # Then until the deadline it may still act (the key cannot have expired yet) ...
        assert lease.holds_locally()
    assert lease.snapshot()["state"] == "redis_unreachable"
    clock.now += 9.5  # 24.5 s after the last confirmed renewal
    keeper.step()
    # ... and after it, it acts on nothing: no I/O needed to know
    assert not lease.holds_locally() and not keeper.held_event.is_set()
    with pytest.raises(LeaseLost):
        OwnershipGuard(lease).check_local()
    errors = messages(caplog, logging.ERROR)
    assert len(errors) == 1 and errors[0].startswith("BG_POLLER: Redis unreachable (TimeoutError")
    assert any(change["state"] == "redis_unreachable" for change in changes)

    # When Redis answers again and the key is still ours, the holder re-extends and continues (no loss)
    client.broken = False
    keeper.step()
    assert lease.holds_locally() and keeper.held_event.is_set()
    assert lease.snapshot()["state"] == "held" and lease.snapshot()["losses"] == 0
    infos = messages(caplog, logging.INFO)
    assert sum(m.startswith("BG_POLLER: Redis reachable again after") for m in infos) == 1
    assert "BG_POLLER: lease re-confirmed pid=%d" % os.getpid() in infos

    # And a second outage is logged once again
    client.broken = True
    keeper.step()
    keeper.step()
    assert len(messages(caplog, logging.ERROR)) == 2


def test_a_standby_that_cannot_reach_redis_reports_it_once_and_never_falls_back(client, clock, caplog):
    caplog.set_level(logging.INFO, logger="background.lease")
    lease = RedisLease(client, 30, clock=clock)
    keeper = LeaseKeeper(lease, retry_interval=5)
    client.broken = True

    for _ in range(4):
        assert keeper.step() == pytest.approx(5.0)

    assert lease.snapshot()["state"] == "redis_unreachable" and not keeper.held_event.is_set()
    assert len(messages(caplog, logging.ERROR)) == 1
    with pytest.raises(LeaseStoreUnreachable):
        lease.try_acquire()
    client.broken = False
    keeper.step()
    assert keeper.held_event.is_set()


def test_a_holder_frozen_past_its_deadline_does_not_hold_locally_until_redis_confirms(client, clock):
    # Given a holder whose process was frozen (SIGSTOP) longer than TTL - margin
    lease = held_lease(client, clock, ttl=10)
    clock.now += 8.5

    # Then it does not hold the lease locally, and verify() refuses without even asking Redis
    assert not lease.holds_locally()
    client.broken = True
    with pytest.raises(LeaseLost) as refused:
        lease.verify()
    assert not isinstance(refused.value, LeaseStoreUnreachable)

    # When its keeper re-checks and the key is still its own (nobody took it), it re-extends and continues
    client.broken = False
    assert lease.renew() is True
    assert lease.holds_locally()
    lease.verify()


def test_verify_refuses_when_the_key_holds_another_token_and_stops_local_belief_at_once(client, clock):
    lease = held_lease(client, clock)
    client.set(LEASE_KEY, "pid=1 host=x nonce=ffffffffffffffff")

    with pytest.raises(LeaseLost, match="holds"):
        lease.verify()
    assert not lease.holds_locally()
    assert lease.renew() is False


def test_verify_refuses_when_redis_cannot_be_reached(client, clock):
    lease = held_lease(client, clock)
    client.broken = True

    with pytest.raises(LeaseStoreUnreachable):
        lease.verify()
    assert lease.snapshot()["state"] == "redis_unreachable"


def test_an_acquire_whose_reply_was_lost_is_adopted_when_the_key_holds_our_token(client, clock):
    # Given our SET NX executed but its reply never arrived (the key holds our token, we think we are standby)
    lease = RedisLease(client, 30, clock=clock)
    client.set(LEASE_KEY, lease.token, px=30_000)

    # Then the next attempt re-proves it with a compare-and-extend instead of waiting for it to expire
    assert lease.try_acquire() is True
    assert lease.holds_locally()


def test_release_deletes_only_our_own_key(client, clock):
    lease = held_lease(client, clock)
    lease.release()
    assert client.get(LEASE_KEY) is None and not lease.holds_locally()

    other = held_lease(client, clock)
    lease2 = RedisLease(client, 30, clock=clock)
    lease2.release()  # never held: no-op
    assert client.get(LEASE_KEY).decode() == other.token


def test_the_keeper_releases_the_lease_when_stopped(client, clock):
    lease = RedisLease(client, 30)
    keeper = LeaseKeeper(lease, retry_interval=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=keeper.run, args=(stop,))
    thread.start()
    try:
        assert keeper.held_event.wait(5)
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert client.get(LEASE_KEY) is None and not keeper.held_event.is_set()


def test_the_guard_counts_actions_taken_without_ownership(client, clock):
    lease = held_lease(client, clock, ttl=10)
    guard = OwnershipGuard(lease)
    guard.check_local()
    guard.check_remote()
    guard.record_action()
    assert (guard.actions, guard.actions_without_ownership) == (1, 0)

    clock.now += 9  # past the deadline, e.g. frozen between a check and the action
    guard.record_action()
    with pytest.raises(LeaseLost):
        guard.check_local()
    assert (guard.actions, guard.actions_without_ownership, guard.refusals) == (2, 1, 1)


def test_a_forked_child_gets_its_own_token(client, clock, monkeypatch):
    lease = held_lease(client, clock)
    parent_token = lease.token
    monkeypatch.setattr(lease_module.os, "getpid", lambda: 999_999)

    assert lease.token != parent_token and lease.token.startswith("pid=999999 ")
    assert not lease.holds_locally()


def test_the_safety_margin_must_leave_room_for_renewals(client):
    with pytest.raises(ValueError):
        RedisLease(client, 3, safety_margin_s=2.5)
