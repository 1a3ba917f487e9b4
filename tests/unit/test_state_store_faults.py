"""The state store fails fast and with its own error when its backend is frozen, gone, locked or unwritable."""

from __future__ import annotations

import sqlite3
import time

import pytest

from services.state_store import OutboxItem, StateStoreError, open_state_store
from settings import Settings

REDIS_TIMEOUT = 0.5
FAIL_FAST_BOUND = 5.0   # generous: the budget is one REDIS_TIMEOUT_SECONDS per call, with no hidden retries
# redis-py's default retries (3, with backoff) would take >= 4 timeouts; one timeout plus slack proves there are none.


def an_item(n: int) -> OutboxItem:
    return OutboxItem(event_id=f"msg_f{n}", email_id=f"f{n}", payload={"n": n}, mailbox="INBOX", uidvalidity=1,
                      uid=n, message_id=None)


@pytest.mark.timeout(30)
def test_sqlite_in_an_unwritable_state_dir_raises_state_store_error(tmp_path) -> None:
    # Running as root makes chmod useless, so the "directory" is a regular file: nothing can be created under it.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(StateStoreError):
        open_state_store(Settings.from_env({"STATE_DIR": str(blocker / "state")}))


@pytest.mark.timeout(30)
def test_sqlite_path_taken_by_a_directory_raises_state_store_error(tmp_path) -> None:
    (tmp_path / "state.sqlite3").mkdir()
    with pytest.raises(StateStoreError):
        open_state_store(Settings.from_env({"STATE_DIR": str(tmp_path)}))


@pytest.mark.timeout(30)
def test_a_corrupt_sqlite_file_raises_state_store_error(tmp_path) -> None:
    (tmp_path / "state.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateStoreError):
        open_state_store(Settings.from_env({"STATE_DIR": str(tmp_path)}))


@pytest.mark.timeout(30)
def test_a_sqlite_writer_blocked_past_the_busy_timeout_raises_then_recovers(tmp_path) -> None:
    from services.state_store_sqlite import SqliteStateStore

    path = str(tmp_path / "state.sqlite3")
    store = SqliteStateStore(path, retention_seconds=3600, busy_timeout_seconds=0.3)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        # Given another process/worker holding the write lock
        blocker.execute("BEGIN IMMEDIATE")
        # Then a write waits about the busy timeout and fails with StateStoreError; reads still work (WAL)
        started = time.monotonic()
        with pytest.raises(StateStoreError) as caught:
            store.enqueue(an_item(1))
        assert 0.2 <= time.monotonic() - started < FAIL_FAST_BOUND
        assert "locked" in str(caught.value)
        assert store.get_item("msg_f1") is None
        # And once the lock is released the write succeeds
        blocker.execute("ROLLBACK")
        assert store.enqueue(an_item(1)) is True
    finally:
        blocker.close()
        store.close()


def test_a_closed_sqlite_store_raises_state_store_error(tmp_path) -> None:
    store = open_state_store(Settings.from_env({"STATE_DIR": str(tmp_path)}))
    store.close()
    with pytest.raises(StateStoreError):
        store.ping()


def test_a_redis_client_returning_bytes_is_refused_at_construction() -> None:
    import redis

    from services.state_store_redis import RedisStateStore

    client = redis.Redis.from_url("redis://127.0.0.1:9/0")  # no I/O happens (a unit test opens no socket)
    try:
        with pytest.raises(ValueError):
            RedisStateStore(client, retention_seconds=60)
    finally:
        client.close()
