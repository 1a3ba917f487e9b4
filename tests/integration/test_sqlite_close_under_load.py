"""Closing the SQLite store while delivery threads are still using it ends in ``StateStoreError`` for them, never in
a crash: closing a connection another thread is in the middle of using segfaulted the interpreter (seen at test
teardown, when a fixture closed the store while a delivery loop was claiming). Run in a child process, so a crash
is an exit status here, not the end of the test session."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(120)

CHILD = textwrap.dedent('''
    import sys, threading, time
    from services.state_store import StateStoreError
    from services.state_store_sqlite import SqliteStateStore

    errors = []
    for round_ in range(int(sys.argv[2])):
        store = SqliteStateStore(f"{sys.argv[1]}/state-{round_}.sqlite3", retention_seconds=3600)
        stop = threading.Event()

        def claim():
            while not stop.is_set():
                try:
                    store.claim_due("owner", time.time(), 10, 30.0)
                    store.outbox_stats(time.time())
                except StateStoreError:
                    return
                except Exception as exc:
                    errors.append(repr(exc))
                    return

        threads = [threading.Thread(target=claim) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.05)
        store.close()
        stop.set()
        for thread in threads:
            thread.join(10)
    print("errors", errors)
    sys.exit(1 if errors else 0)
''')


def test_closing_the_store_while_threads_claim_never_crashes_the_process(tmp_path):
    child = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), "40"], capture_output=True, text=True,
                           timeout=100)
    assert child.returncode == 0, (child.returncode, child.stdout[-2000:], child.stderr[-2000:])
