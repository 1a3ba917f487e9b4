"""The file lease (no REDIS_URL): an flock shared by the workers of one container, with separate OS processes."""

from __future__ import annotations

import logging
import os
import time

import pytest

from background import lease as lease_module
from background.lease import FILE_LOCK_WARNING, FileLease, LeaseKeeper, LeaseLost, make_lease
from settings import Settings

RETRY = 0.2


def test_make_lease_without_redis_uses_the_file_lock_under_the_state_dir_and_warns_once(tmp_path, monkeypatch, caplog):
    # Given no REDIS_URL and a state directory that does not exist yet
    monkeypatch.setattr(lease_module, "_file_warning_logged", False)
    settings = Settings.from_env({"STATE_DIR": str(tmp_path / "var")})
    caplog.set_level(logging.WARNING, logger="background.lease")

    # When two leases are made in one process
    first, second = make_lease(settings), make_lease(settings)

    # Then both are file leases on $STATE_DIR/poller.lock, and the WARNING was logged exactly once
    assert first.backend == second.backend == "file"
    assert first.path == os.path.join(str(tmp_path / "var"), "poller.lock")
    assert os.path.isdir(tmp_path / "var")
    assert [r.getMessage() for r in caplog.records].count(FILE_LOCK_WARNING) == 1
    assert [r.levelno for r in caplog.records if r.getMessage() == FILE_LOCK_WARNING] == [logging.WARNING]


def test_two_file_leases_exclude_each_other_and_release_hands_over(tmp_path):
    path = str(tmp_path / "poller.lock")
    a, b = FileLease(path), FileLease(path)
    try:
        # Given A holds the lock
        assert a.try_acquire() is True
        # Then B cannot take it and sees A's token as the holder
        assert b.try_acquire() is False
        assert b.snapshot()["holder"] == a.token and b.snapshot()["state"] == "standby"
        assert a.holds_locally() and a.snapshot()["state"] == "held"
        a.verify()
        with pytest.raises(LeaseLost):
            b.verify()
        # When A releases, B takes it
        a.release()
        assert not a.holds_locally()
        assert b.try_acquire() is True
    finally:
        a.release()
        b.release()


def test_a_file_lease_whose_lock_file_was_deleted_counts_as_lost(tmp_path):
    # Given A holds the lock and someone deletes the lock file (a new process could now lock a new file)
    path = str(tmp_path / "poller.lock")
    a = FileLease(path)
    assert a.try_acquire()
    os.unlink(path)

    # When A's keeper renews
    # Then the lease is lost and A stops acting
    assert a.renew() is False
    assert not a.holds_locally()
    assert a.snapshot()["losses"] == 1


@pytest.mark.timeout(10)
def test_the_file_keeper_acquires_logs_and_releases_on_stop(tmp_path, caplog):
    import threading

    caplog.set_level(logging.INFO, logger="background.lease")
    lease = FileLease(str(tmp_path / "poller.lock"), renew_period_s=0.05)
    keeper = LeaseKeeper(lease, retry_interval=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=keeper.run, args=(stop,))
    thread.start()
    try:
        assert keeper.held_event.wait(5)
        assert f"BG_POLLER: Singleton lock acquired (file) pid={os.getpid()}" in caplog.messages
        time.sleep(0.2)  # a few renewals
        assert lease.snapshot()["renewals"] >= 2
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert not lease.holds_locally() and not keeper.held_event.is_set()
