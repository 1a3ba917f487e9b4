"""Benchmark of the state store's hot path: enqueue + claim_due + mark_delivered per email, on both backends.

Starts its own redis-server on a free loopback port (no persistence, like the tests) and stops it by PID; the SQLite
store lives in a temporary directory. Prints emails/s and per-email latency percentiles.

    .venv/bin/python -m bench.bench_state_store [--emails 2000] [--batch 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

from services.state_store import OutboxItem, StateStore, open_state_store
from settings import Settings

PAYLOAD = {
    "event_id": "", "subject": "Your files are ready", "sender": "a***@example.com",
    "links": [{"provider": "dropbox", "url": "https://www.dropbox.com/s/abc/file.zip?dl=1", "r2_url": None}],
    "received_at": "2025-01-01T00:00:00Z", "body_excerpt": "x" * 400,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis(directory: str) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("redis-server")
    if not binary:
        raise SystemExit("redis-server not found (apt-get install -y redis-server)")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--daemonize", "no", "--dir", directory, "--logfile", os.path.join(directory, "log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.02)
    proc.kill()
    proc.wait()
    raise SystemExit("redis-server did not start")


def run(store: StateStore, emails: int, batch: int, tag: str) -> dict:
    latencies: list[float] = []
    started = time.perf_counter()
    for first in range(0, emails, batch):
        t0 = time.perf_counter()
        ids = range(first, min(first + batch, emails))
        for n in ids:
            store.enqueue(OutboxItem(event_id=f"msg_{tag}{n}", email_id=f"{tag}{n}", payload={**PAYLOAD, "n": n},
                                     mailbox="INBOX", uidvalidity=1, uid=n + 1, message_id=f"<{n}@bench>"))
        now = time.time()
        claimed = store.claim_due("bench", now, batch, 60)
        for item in claimed:
            store.mark_delivered(item.event_id, 200, now)
        latencies.append((time.perf_counter() - t0) / max(1, len(ids)))
        if len(claimed) != len(ids):
            raise SystemExit(f"claimed {len(claimed)} of {len(ids)}")
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {"emails/s": emails / elapsed, "p50_ms": statistics.median(latencies) * 1000,
            "p95_ms": latencies[int(len(latencies) * 0.95) - 1] * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=1, help="items per claim_due call")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="bench-state-")
    proc, url = start_redis(workdir)
    results = {}
    try:
        for name, environ in (("redis", {"REDIS_URL": url}), ("sqlite", {"STATE_DIR": os.path.join(workdir, "var")})):
            store = open_state_store(Settings.from_env(environ))
            try:
                run(store, 100, args.batch, "warm")  # scripts loaded, schema created, pages cached
                results[name] = run(store, args.emails, args.batch, "run")
            finally:
                store.close()
    finally:
        proc.terminate()
        proc.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"state store hot path: enqueue + claim_due(limit={args.batch}) + mark_delivered, {args.emails} emails")
    print(f"{'backend':8} {'emails/s':>10} {'p50 ms':>8} {'p95 ms':>8}")
    for name, result in results.items():
        print(f"{name:8} {result['emails/s']:10.0f} {result['p50_ms']:8.3f} {result['p95_ms']:8.3f}")


if __name__ == "__main__":
    main()
