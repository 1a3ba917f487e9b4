"""The file lease (no REDIS_URL): an flock shared by the workers of one container, with separate OS processes."""

from __future__ import annotations

import signal
import time

import pytest

from background.lease import FILE_LOCK_WARNING
from harness.lease_child import Contender, overlaps, spawn, wait_for
from tests.unit.test_lock_file import RETRY  # noqa: F401 - shared with the unit half


@pytest.fixture
def contenders(tmp_path):
    started: list[Contender] = []

    def start(name: str, lock_file: str) -> Contender:
        child = spawn(name, str(tmp_path), "--lock-file", lock_file, "--retry", str(RETRY))
        started.append(child)
        return child

    try:
        yield start
    finally:
        for child in started:
            child.stop()


def holder_among(children: list[Contender]) -> Contender | None:
    holders = [c for c in children if c.acquisitions()]
    return holders[0] if len(holders) == 1 else None


@pytest.mark.timeout(30)
def test_two_processes_share_one_file_lease_and_the_survivor_takes_it_when_the_holder_dies(tmp_path, contenders):
    # Given two worker processes of one container, no REDIS_URL, the lock file in a directory that does not exist yet
    lock_file = str(tmp_path / "state" / "poller.lock")
    children = [contenders(f"f{i}", lock_file) for i in range(2)]
    for child in children:
        wait_for(lambda child=child: child.events("start") or child.proc.poll() is not None, 15,
                 f"{child.name} to start")
        assert child.proc.poll() is None, child.log()

    # Then exactly one holds the lease, and both warned that the file lock is unsafe across containers
    holder = wait_for(lambda: holder_among(children), 10, "one holder")
    time.sleep(1.0)
    (standby,) = [c for c in children if c is not holder]
    assert standby.acquisitions() == []
    for child in children:
        assert child.log().count(FILE_LOCK_WARNING) == 1, child.log()
        assert child.events("start")[0]["backend"] == "file"
    assert f"BG_POLLER: Singleton lock acquired (file) pid={holder.pid}" in holder.log()
    with open(lock_file) as handle:
        assert handle.read().strip() == holder.events("start")[0]["token"]

    # When the holder dies (-9: no release, the kernel drops the flock)
    killed_at = holder.signal(signal.SIGKILL)
    holder.proc.wait(5)

    # Then the other process takes the lease within one retry period (plus scheduling)
    _, acquired_at = wait_for(lambda: [(standby, t) for t in standby.acquisitions() if t > killed_at], 10,
                              "the survivor to take the file lease")[0]
    print(f"\nFILE LEASE takeover after kill -9: {acquired_at - killed_at:.3f}s")
    assert acquired_at - killed_at < RETRY + 1.0
    assert f"BG_POLLER: Singleton lock acquired (file) pid={standby.pid}" in standby.log()
    standby.stop()
    assert not overlaps(children)
