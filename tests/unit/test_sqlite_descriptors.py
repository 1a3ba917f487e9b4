"""The SQLite store's descriptors stay flat however many short-lived threads use it (issue 15 defect 7: the R2
offload runs each copy in a thread of its own, and each used to leave an open connection behind)."""

from __future__ import annotations

import gc
import os
import threading
import time

from services.state_store_sqlite import SqliteStateStore


def _open_descriptors() -> int:
    # A thread's locals (and so its connection) go a moment after join() returns: let the last batch settle.
    gc.collect()
    time.sleep(0.1)
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
        # a connection per thread would add about a thousand; at most the last batch may still be tearing down
        assert _open_descriptors() <= baseline + 50
    finally:
        store.close()
