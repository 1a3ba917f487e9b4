"""The state store fails fast and with its own error when its backend is frozen, gone, locked or unwritable."""

from __future__ import annotations

import os
import time
from typing import Callable

import pytest

from harness.ports import free_port
from services.state_store import StateStore, StateStoreError, open_state_store
from settings import Settings
from tests.unit.test_state_store_faults import FAIL_FAST_BOUND, REDIS_TIMEOUT, an_item  # noqa: F401 - shared with the unit half

# redis-py's default retries (3, with backoff) would take >= 4 timeouts; one timeout plus slack proves there are none.
ONE_TIMEOUT_BOUND = 2 * REDIS_TIMEOUT + 0.5


def operations(store: StateStore) -> dict[str, Callable[[], object]]:
    """One call of each kind: plain command, Lua script, pipeline."""
    now = time.time()
    return {
        "ping": store.ping,
        "get_checkpoint": lambda: store.get_checkpoint("INBOX", 1),
        "enqueue": lambda: store.enqueue(an_item(99)),
        "claim_due": lambda: store.claim_due("w", now, 5, 30),
        "mark_delivered": lambda: store.mark_delivered("msg_f1", 200, now),
        "outbox_stats": lambda: store.outbox_stats(now),
        "record_recent": lambda: store.record_recent({"n": 1}),
        "counters": store.counters,
        "replay": lambda: store.replay("msg_f1", now=now, since=now - 60, target_id="default"),
        "pause_target": lambda: store.pause_target("default", now),
        "hit": lambda: store.hit("login", 60, now),
        "compare_and_put_record": lambda: store.compare_and_put_record("streak", "k", None, {"n": 1}, 60),
        "items_for_email": lambda: store.items_for_email("f1"),
    }


def redis_store(url: str) -> StateStore:
    settings = Settings.from_env({"REDIS_URL": url, "REDIS_TIMEOUT_SECONDS": str(REDIS_TIMEOUT)})
    return open_state_store(settings)


@pytest.mark.redis
@pytest.mark.timeout(60)
def test_a_paused_redis_raises_state_store_error_within_the_timeout_and_recovers(private_redis) -> None:
    # Given a working store with one pending item
    store = redis_store(private_redis.url)
    try:
        store.enqueue(an_item(1))
        # When Redis is frozen
        private_redis.pause()
        try:
            # Then every kind of call fails with StateStoreError, each within about the timeout
            for name, call in operations(store).items():
                started = time.monotonic()
                with pytest.raises(StateStoreError) as caught:
                    call()
                elapsed = time.monotonic() - started
                assert elapsed < min(FAIL_FAST_BOUND, ONE_TIMEOUT_BOUND), f"{name} took {elapsed:.2f}s"
                assert REDIS_TIMEOUT * 0.8 <= elapsed, f"{name} failed before the timeout: {caught.value}"
                assert "Timeout" in str(caught.value), str(caught.value)
        finally:
            private_redis.resume()
        # And after the resume it works again, with the state intact
        store.ping()
        [item] = store.claim_due("w", time.time(), 5, 30)
        assert item.event_id == "msg_f1"
        assert store.mark_delivered("msg_f1", 200, time.time()) is True
    finally:
        store.close()


@pytest.mark.redis
@pytest.mark.timeout(60)
def test_a_stopped_redis_raises_state_store_error_without_leaking_the_password(private_redis) -> None:
    # Given two stores, one whose REDIS_URL carries a password (never used: the server is stopped first)
    store = redis_store(private_redis.url)
    secret_store = redis_store(f"redis://:Sup3r-Secret-pw@127.0.0.1:{private_redis.port}/0")
    try:
        store.ping()
        # When the server is gone
        private_redis.stop()
        # Then calls fail fast with StateStoreError, and the message never carries the password
        for name, call in [*operations(store).items(), *operations(secret_store).items()]:
            started = time.monotonic()
            with pytest.raises(StateStoreError) as caught:
                call()
            assert time.monotonic() - started < FAIL_FAST_BOUND, name
            assert "Sup3r-Secret-pw" not in str(caught.value)
            assert "Sup3r-Secret-pw" not in repr(caught.value.__cause__)
    finally:
        store.close()
        secret_store.close()


@pytest.mark.redis
@pytest.mark.timeout(30)
def test_an_unreachable_redis_does_not_fail_open_but_fails_every_call() -> None:
    # Opening does no I/O (the service starts and reports the outage); the first call fails.
    store = redis_store(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(StateStoreError):
            store.ping()
        with pytest.raises(StateStoreError):
            store.enqueue(an_item(1))
    finally:
        store.close()


def test_the_sqlite_store_is_usable_after_fork(tmp_path) -> None:
    # Gunicorn may open the store in the master (preload) and fork workers: a child must open its own connection.
    store = open_state_store(Settings.from_env({"STATE_DIR": str(tmp_path)}))
    try:
        store.enqueue(an_item(1))
        pid = os.fork()
        if pid == 0:  # child: exit code tells the parent what it saw
            code = 1
            try:
                code = 0 if store.enqueue(an_item(2)) and store.get_item("msg_f1") is not None else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert store.get_item("msg_f2") is not None
    finally:
        store.close()
