"""The Redis poller lease with separate OS processes (harness/lease_child.py) against a real redis-server.

Each child records, every 20 ms, whether it believes it holds the lease (wall-clock bracketed samples) and, while its
keeper says "held", performs guarded "mailbox actions" that a Lua witness in Redis marks as owned or not at the
moment they happen. Every test has a watchdog and stops every child it started (SIGCONT, SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time

import pytest

from background import lease as lease_module
from background.lease import LeaseStoreUnreachable, make_lease
from harness.lease_child import ACTIONS_KEY, Contender, overlaps, spawn, wait_for
from settings import Settings

KEY = "render_signal:poller_lock"
TTL = 1.0
RETRY = TTL / 3.0           # the default LEASE_RETRY_SECONDS for this TTL (a third of it)
TIMEOUT = 0.25              # REDIS_TIMEOUT_SECONDS in the children
SCHEDULING_SLACK = 0.5      # process start-up jitter and a loaded 2-core CI machine
TOKEN_RE = re.compile(r"^pid=(\d+) host=(\S+) nonce=([0-9a-f]{16})$")


@pytest.fixture
def contenders(tmp_path):
    """Start lease_child.py processes; whatever happens, every one of them is stopped and reaped afterwards."""
    started: list[Contender] = []

    def start(name: str, redis_url: str, *extra: str) -> Contender:
        child = spawn(name, str(tmp_path), "--redis-url", redis_url, "--ttl", str(TTL), "--timeout", str(TIMEOUT),
                      *extra)
        started.append(child)
        return child

    try:
        yield start
    finally:
        for child in started:
            child.stop()


def wait_started(children: list[Contender]) -> None:
    for child in children:
        wait_for(lambda child=child: child.events("start") or child.proc.poll() is not None, 15,
                 f"{child.name} to start")
        assert child.proc.poll() is None, child.log()


def current_holder(client, children: list[Contender]) -> Contender | None:
    token = client.get(KEY)
    for child in children:
        starts = child.events("start")
        if token and starts and starts[0]["token"] == token:
            return child
    return None


def acquired_after(children: list[Contender], since: float) -> tuple[Contender, float] | None:
    found = [(child, t) for child in children for t in child.acquisitions() if t > since]
    return min(found, key=lambda item: item[1]) if found else None


def stop_gracefully(children: list[Contender]) -> None:
    for child in children:
        if child.proc.poll() is None:
            child.proc.terminate()
    for child in children:
        child.proc.wait(10)


def assert_witness_clean(client) -> int:
    entries = client.lrange(ACTIONS_KEY, 0, -1)
    unowned = [entry for entry in entries if entry.split("|")[1] != "1"]
    assert not unowned, f"mailbox actions performed without owning the lease: {unowned[:5]}"
    return len(entries)


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(60)
def test_contending_processes_never_hold_together_and_the_holder_changes_only_when_killed(
        redis_url, redis_server, contenders):
    # Given three processes contending for a 1 s lease
    client = redis_server.client()
    children = [contenders(f"c{i}", redis_url, "--ground-truth") for i in range(3)]
    wait_started(children)
    first = wait_for(lambda: current_holder(client, children), 10, "a first holder")
    began = time.time()

    # When they run for 10 s and the holder is killed (-9) halfway
    time.sleep(5.0)
    assert current_holder(client, children) is first, "the holder changed although nobody was killed"
    killed_at = first.signal(signal.SIGKILL)
    first.proc.wait(5)
    time.sleep(10.0 - (time.time() - began))
    window_end = time.time()
    second = current_holder(client, children)
    # (standbys first, so the holder's release on SIGTERM cannot hand the lease on inside the window)
    stop_gracefully([c for c in children if c is not second and c is not first] + [second])

    # Then at no sample did two processes believe they held the lease
    samples = sum(len(child.events("s")) for child in children)
    clashes = overlaps(children)
    assert not clashes, f"two holders at once: {clashes[:3]}"
    # and the holder changed exactly once, after the kill, to the process that holds it at the end
    changes = sorted((t, child.name) for child in children for t in child.acquisitions() if t <= window_end)
    assert [name for _, name in changes] == [first.name, second.name], changes
    takeover = changes[1][0] - killed_at
    assert 0 < takeover <= TTL + RETRY + SCHEDULING_SLACK
    # and nobody lost the lease or acted without it
    for child in children:
        assert "BG_POLLER: lease lost" not in child.log(), child.log()
    actions = assert_witness_clean(client)
    for child in children:
        if child is not first:
            (exit_event,) = child.events("exit")
            assert exit_event["actions_without_ownership"] == 0
    print(f"\nLEASE contention: 3 processes, {samples} samples over {window_end - began:.1f}s, "
          f"{actions} witnessed actions, 0 overlaps; kill -9 takeover {takeover:.3f}s")
    client.close()


@pytest.mark.redis
@pytest.mark.timeout(30)
def test_another_process_holds_the_lease_within_ttl_plus_retry_after_the_holder_is_killed(
        redis_url, redis_server, contenders):
    # Given a holder and a standby
    client = redis_server.client()
    children = [contenders(f"k{i}", redis_url) for i in range(2)]
    wait_started(children)
    holder = wait_for(lambda: current_holder(client, children), 10, "a holder")
    (standby,) = [c for c in children if c is not holder]
    time.sleep(0.5)  # a few renewals

    # When the holder is killed with -9
    killed_at = holder.signal(signal.SIGKILL)

    # Then the standby holds the lease within TTL + one retry period
    _, acquired_at = wait_for(lambda: acquired_after([standby], killed_at), 10, "the standby to take over")
    takeover = acquired_at - killed_at
    print(f"\nLEASE kill -9 takeover: {takeover:.3f}s (bound TTL {TTL}s + retry {RETRY:.3f}s)")
    assert takeover <= TTL + RETRY + SCHEDULING_SLACK
    assert client.get(KEY) == standby.events("start")[0]["token"]
    assert f"BG_POLLER: Singleton lock acquired (Redis) pid={standby.pid}" in standby.log()
    client.close()


@pytest.mark.redis
@pytest.mark.timeout(30)
def test_another_process_holds_the_lease_within_5s_after_the_holder_gets_sigterm(
        redis_url, redis_server, contenders):
    # Given a holder and a standby
    client = redis_server.client()
    children = [contenders(f"t{i}", redis_url) for i in range(2)]
    wait_started(children)
    holder = wait_for(lambda: current_holder(client, children), 10, "a holder")
    (standby,) = [c for c in children if c is not holder]

    # When the holder gets SIGTERM (a redeploy)
    termed_at = holder.signal(signal.SIGTERM)

    # Then it releases the key on its way out, and the standby holds the lease within 5 s
    _, acquired_at = wait_for(lambda: acquired_after([standby], termed_at), 10, "the standby to take over")
    takeover = acquired_at - termed_at
    print(f"\nLEASE graceful (SIGTERM) takeover: {takeover:.3f}s")
    assert takeover < 5.0
    assert holder.proc.wait(5) == 0
    assert "BG_POLLER: lease released" in holder.log()
    assert not overlaps(children)
    client.close()


@pytest.mark.redis
@pytest.mark.timeout(30)
def test_a_holder_paused_past_the_ttl_acts_on_nothing_after_it_resumes(redis_url, redis_server, contenders):
    # Given a holder acting on the "mailbox" every 20 ms and a standby
    client = redis_server.client()
    children = [contenders(f"p{i}", redis_url, "--ground-truth") for i in range(2)]
    wait_started(children)
    holder = wait_for(lambda: current_holder(client, children), 10, "a holder")
    (standby,) = [c for c in children if c is not holder]
    wait_for(lambda: holder.events("a"), 5, "the holder's first action")

    # When it is frozen (SIGSTOP) until the standby has taken the lease, then resumed
    stopped_at = holder.signal(signal.SIGSTOP)
    _, taken_at = wait_for(lambda: acquired_after([standby], stopped_at), 10, "the standby to take over")
    time.sleep(0.3)
    resumed_at = holder.signal(signal.SIGCONT)
    wait_for(lambda: "BG_POLLER: lease lost (" in holder.log(), 5, "the resumed holder to notice the loss")
    time.sleep(0.5)
    stop_gracefully([holder, standby])

    # Then the resumed process performed no action once it had been frozen, logged the loss with the new holder,
    assert [a for a in holder.events("a") if a["t"] >= stopped_at] == []
    (exit_event,) = holder.events("exit")
    assert exit_event["actions_without_ownership"] == 0
    assert exit_event["snapshot"]["losses"] == 1
    assert f"BG_POLLER: lease lost (renewal found another holder: pid={standby.pid} " in holder.log()
    # and every witnessed action happened while its actor owned the lease; no two believed at once
    assert_witness_clean(client)
    assert not overlaps(children)
    assert [a for a in standby.events("a") if a["t"] > taken_at]  # the new holder did work meanwhile
    print(f"\nLEASE paused holder: frozen {resumed_at - stopped_at:.2f}s, standby took over after "
          f"{taken_at - stopped_at:.3f}s, resumed holder refused {exit_event['refusals']} action(s)")
    client.close()


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(40)
def test_a_paused_redis_gives_no_second_holder_and_a_holder_again_after_it_resumes(private_redis, contenders):
    # Given a holder and a standby on a Redis of the test's own
    client = private_redis.client()
    children = [contenders(f"r{i}", private_redis.url) for i in range(2)]
    wait_started(children)
    wait_for(lambda: current_holder(client, children), 10, "a holder")
    client.close()
    time.sleep(0.5)

    # When Redis is frozen for longer than the TTL, then resumed
    paused_at = time.time()
    private_redis.pause()
    time.sleep(2.5)
    private_redis.resume()
    resumed_at = time.time()

    # Then a process holds the lease again soon after
    winner, again_at = wait_for(lambda: acquired_after(children, resumed_at), 10, "a holder after the outage")
    time.sleep(0.5)
    stop_gracefully(children)

    # and nobody believed it held the lease once its last confirmation was a TTL old, nor did two at once
    assert not overlaps(children)
    for child in children:
        late = [s for s in child.events("s") if s["h"] and paused_at + TTL <= s["t0"] <= resumed_at]
        assert late == [], f"{child.name} believed it held the lease during the outage"
        # and each logged the outage once (not per retry) and its end, and reported it in its state
        log = child.log()
        assert log.count("BG_POLLER: Redis unreachable") == 1, log
        assert log.count("BG_POLLER: Redis reachable again") == 1, log
        assert any(e["state"] == "redis_unreachable" for e in child.events("change"))
    print(f"\nLEASE redis paused {resumed_at - paused_at:.2f}s: {winner.name} holds again "
          f"{again_at - resumed_at:.3f}s after resume")


@pytest.mark.redis
def test_the_key_holds_the_holders_token_for_redis_cli_and_is_released_by_compare_and_delete(
        redis_url, redis_server):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from background.lease import RedisLease

    def fail_fast():
        return redis.Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))

    reader = redis_server.client()
    a, b = RedisLease(fail_fast(), 5), RedisLease(fail_fast(), 5)
    try:
        # Given A holds the lease
        assert a.try_acquire() and not b.try_acquire()
        # Then `redis-cli GET render_signal:poller_lock` shows A's token, with a TTL of about 5 s
        assert reader.get(KEY) == a.token
        match = TOKEN_RE.match(a.token)
        assert match and match.group(1) == str(os.getpid())
        assert 4000 < reader.pttl(KEY) <= 5000
        assert b.snapshot()["holder"] == a.token and b.snapshot()["state"] == "standby"
        # When B releases (it does not hold it) nothing happens; when the key is B's, A's release leaves it alone
        b.release()
        assert reader.get(KEY) == a.token
        reader.set(KEY, b.token, px=5000)
        assert a.renew() is False
        a.release()
        assert reader.get(KEY) == b.token
    finally:
        a.redis.close()
        b.redis.close()
        reader.close()


# A real connection attempt to a closed loopback port (the unit tier refuses sockets, which would hide it).
def test_make_lease_with_redis_url_is_redis_even_when_redis_is_unreachable(tmp_path, monkeypatch, caplog):
    # Given REDIS_URL pointing at nothing
    monkeypatch.setattr(lease_module, "_file_warning_logged", False)
    caplog.set_level(logging.WARNING, logger="background.lease")
    settings = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0", "REDIS_TIMEOUT_SECONDS": "0.2",
                                  "STATE_DIR": str(tmp_path / "var")})

    lease = make_lease(settings)
    try:
        # Then it is the Redis lease, which reports the outage instead of falling back to the file lock
        assert lease.backend == "redis"
        with pytest.raises(LeaseStoreUnreachable):
            lease.try_acquire()
        assert lease.snapshot()["state"] == "redis_unreachable"
        assert not os.path.exists(tmp_path / "var")
        assert caplog.records == []
    finally:
        lease.redis.close()
