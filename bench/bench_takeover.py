"""Benchmark: how long the poller lease stays without a holder after the holder dies (kill -9) or stops (SIGTERM).

Starts its own redis-server on a free loopback port, then, per run, two lease_child.py processes (the production
lease and keeper), waits for a holder, lets it renew for a while, kills or terminates it and measures the wall time
until the other process reports the lease held. Stops everything it started, by PID.

    .venv/bin/python -m bench.bench_takeover [--runs 5] [--ttl 3]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from harness.lease_child import spawn, wait_for
from harness.ports import free_port, stop_process, wait_until

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

KEY = "render_signal:poller_lock"


def start_redis(workdir: str) -> tuple[subprocess.Popen, int]:
    binary = shutil.which("redis-server", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if not binary:
        raise SystemExit("redis-server not found: install the Debian package redis-server")
    port = free_port()
    log_path = os.path.join(workdir, "redis.log")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--daemonize", "no", "--dir", workdir, "--logfile", log_path, "--protected-mode", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def pong() -> bool:
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    wait_until(pong, 10, "redis-server", proc, log_path)
    return proc, port


def one_run(kind: str, run: int, url: str, ttl: float, workdir: str, client) -> float:
    client.delete(KEY)
    rundir = os.path.join(workdir, f"{kind}-{run}")
    os.makedirs(rundir)
    children = [spawn(f"c{i}", rundir, "--redis-url", url, "--ttl", str(ttl), "--timeout", "1") for i in range(2)]
    try:
        def holder():
            token = client.get(KEY)
            for child in children:
                starts = child.events("start")
                if token and starts and starts[0]["token"] == token:
                    return child
            return None

        first = wait_for(holder, 20, "a holder")
        (other,) = [c for c in children if c is not first]
        # Kill at a random point of the renewal cycle, not right after an acquisition.
        time.sleep(ttl / 3 + random.uniform(0, ttl / 3))
        sig = signal.SIGKILL if kind == "kill -9" else signal.SIGTERM
        stopped_at = first.signal(sig)
        acquired_at = wait_for(lambda: [t for t in other.acquisitions() if t > stopped_at], 4 * ttl + 10,
                               "the takeover")[0]
        return acquired_at - stopped_at
    finally:
        for child in children:
            child.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ttl", type=float, default=3.0)
    args = parser.parse_args()
    retry = min(args.ttl / 3.0, 30.0)

    import redis

    workdir = tempfile.mkdtemp(prefix="bench-lease-")
    proc, port = start_redis(workdir)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)
    try:
        print(f"lease takeover, TTL {args.ttl:g}s, retry {retry:.2f}s, {args.runs} runs each, 2 processes")
        for kind, bound in (("SIGTERM", "a few seconds (next retry)"),
                            ("kill -9", f"TTL + retry = {args.ttl + retry:.2f}s")):
            figures = [one_run(kind, run, url, args.ttl, workdir, client) for run in range(args.runs)]
            print(f"  {kind:8s} min {min(figures):.3f}s  median {statistics.median(figures):.3f}s  "
                  f"max {max(figures):.3f}s   (bound: {bound})   runs: {', '.join(f'{f:.3f}' for f in figures)}")
    finally:
        client.close()
        stop_process(proc)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
