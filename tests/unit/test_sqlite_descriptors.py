"""The SQLite store's descriptors stay flat however many short-lived threads use it (issue 15 defect 7: the R2
offload runs each copy in a thread of its own, and each used to leave an open connection behind)."""

from __future__ import annotations

import os
import threading

from services.state_store_sqlite import SqliteStateStore


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_thousand_short_lived_threads_leave_no_connection_open(tmp_path):
    store = SqliteStateStore(str(tmp_path / "state.sqlite3"), retention_seconds=3600)
    try:
        def use_store(n: int) -> None:
            store.put_r2_copy(f"https://files.example.test/{n}", {"r2_url": "x"}, 60)
            assert store.get_r2_copy(f"https://files.example.test/{n}") == {"r2_url": "x"}

        def run_batch(start: int) -> None:
            threads = [threading.Thread(target=use_store, args=(n,)) for n in range(start, start + 50)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        run_batch(0)
        baseline = _open_descriptors()
        for start in range(50, 1000, 50):
            run_batch(start)
        # a connection (with its WAL and shm descriptors) per thread would add thousands
        assert _open_descriptors() <= baseline + 10
    finally:
        store.close()
