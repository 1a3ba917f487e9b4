"""Open file descriptors of the service's process over 1,000 emails with SQLite state and the R2 offload on, through
the real Cloudflare Worker on Miniflare (issue 15 defect 7: the R2 offload's short-lived threads each opened a SQLite
connection that was never closed; fixed in services/state_store_sqlite.py, a thread's connection is closed when the
thread ends). The count must stay flat.

What runs (127.0.0.1, free ports, everything stopped in ``finally`` even on Ctrl-C/SIGTERM): a real Dovecot (IMAPS,
IDLE), a real webhook receiver (``harness.receiver``), the Worker (worker/src/index.js) on Miniflare with a local R2
bucket (``harness.miniflare.start_worker``, needs ``node`` and ``worker/node_modules``), a loopback HTTP server
playing Dropbox for the Worker's outbound fetches (64 KB per file), and the service's background threads in this
process (``harness.pipeline.RunningPipeline``, ``service_env``'s FAST timings), SQLite state, R2_FETCH_ENABLED=true.

Load: one warm-up email (not counted), then ``--emails`` (1,000) emails (``harness.mail.make_email``, one Dropbox
link each, every link a different file, so each one is a Worker call and an R2 write) APPENDed over one IMAP session
in rounds of ``--every`` (100). After each round: wait until the round's webhooks arrived and the poller idles
again, then count ``/proc/self/fd`` of this process (the service's process: the background runs here), split by
kind (the SQLite files, sockets, pipes, other). A sampler thread also counts every 20 ms for the maximum. Slope =
least-squares descriptors per 100 emails over the round samples.

A second run (``before``; ``--only current`` skips it) repeats the load with the SQLite store's per-thread
connection handling of before the fix (``git show af807ec^:services/state_store_sqlite.py``, ``_conn``: a thread's
connection is kept in the store's list until ``close()``), re-created in this process only: what the benchmark sees
when descriptors leak. Each run has its own servers and state.

The first round grows the count by a few sockets once (connection pools filling up: the delivery threads' keep-alive
connections to the receiver, whose server side is in this process too, and to the Worker), so the slope is also given
from the first round on.

    .venv/bin/python -m bench.bench_descriptors [--emails 1000] [--every 100] [--only current|before]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import sys
import threading
import time
import weakref
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench.bench_latency import Harness, result

SOURCE_BYTES = 64 * 1024


# --- counting descriptors --------------------------------------------------------------------------------------


def descriptors(state_dir: str) -> dict[str, int]:
    """Open descriptors of this process by kind: ``sqlite`` (files under the state directory), ``socket``,
    ``pipe``, ``other``; ``total`` = all of them (the listing's own descriptor excluded)."""
    kinds = {"sqlite": 0, "socket": 0, "pipe": 0, "other": 0}
    names = os.listdir("/proc/self/fd")
    for name in names:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # closed meanwhile, or the listing's own descriptor
            continue
        if target.startswith(state_dir):
            kinds["sqlite"] += 1
        elif target.startswith("socket:"):
            kinds["socket"] += 1
        elif target.startswith("pipe:"):
            kinds["pipe"] += 1
        else:
            kinds["other"] += 1
    kinds["total"] = sum(kinds.values())
    return kinds


class FdSampler:
    """``len(os.listdir('/proc/self/fd'))`` every ``interval`` seconds in a daemon thread; keeps the maximum."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.maximum = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fd-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.maximum = max(self.maximum, len(os.listdir("/proc/self/fd")) - 1)
            self.samples += 1
            self._stop.wait(self.interval)

    def start(self) -> "FdSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def slope_per(xs: list[int], ys: list[int], per: int) -> float:
    """Least-squares slope of ys over xs, in units of ys per ``per`` of xs."""
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    if not var:
        return 0.0
    return per * sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var


# --- the file host the Worker fetches from ---------------------------------------------------------------------


class _Source(BaseHTTPRequestHandler):
    """Any path: 64 KB derived from it, with a length and a file name, like a Dropbox download."""

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        path = self.path.split("?")[0]
        seed = hashlib.sha256(path.encode()).digest()
        body = (seed * (SOURCE_BYTES // len(seed) + 1))[:SOURCE_BYTES]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Disposition", f'attachment; filename="{path.rsplit("/", 1)[-1]}"')
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def file_host(h: Harness) -> str:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Source)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="file-host",
                              daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    h.on_close("file host", stop)
    return f"http://127.0.0.1:{server.server_address[1]}"


def worker(h: Harness, source_origin: str):
    from harness.binaries import MissingRuntime
    from harness.miniflare import find_worker_runtime, start_worker

    try:
        node = find_worker_runtime()
    except MissingRuntime as exc:
        raise SystemExit(str(exc)) from None
    started = start_worker(node, source_origin)
    h.on_close("worker on miniflare", started.stop)
    return started


# --- the connection handling of before the fix ------------------------------------------------------------------


def conn_kept_until_close(self) -> sqlite3.Connection:
    """``SqliteStateStore._conn`` of af807ec^ (before the fix): a thread's connection is remembered in ``_all`` and
    closed only by ``close()``, so every short-lived thread that touches the store leaves one open. Entries carry a
    thread reference only so that today's ``close()`` can unpack them; nothing reaps them."""
    from services.state_store import StateStoreError

    if self._closed:
        raise StateStoreError("sqlite: the state store is closed")
    pid = os.getpid()
    conn = getattr(self._local, "conn", None)
    if conn is not None and self._local.pid == pid:
        return conn
    conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
    conn.execute("PRAGMA synchronous = NORMAL")
    self._local.conn = conn
    self._local.pid = pid
    with self._all_lock:
        self._all.append((pid, weakref.ref(threading.current_thread()), conn))
    return conn


# --- one run ---------------------------------------------------------------------------------------------------


def wait_for(check, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not reached within {timeout:.0f} s")
        time.sleep(interval)


def run(variant: str, emails: int, every: int, timeout: float) -> dict[str, Any]:
    from harness.mail import make_email
    from harness.pipeline import RunningPipeline, service_env
    from services.state_store_sqlite import SqliteStateStore

    with Harness() as h:
        dovecot = h.dovecot()
        account = dovecot.new_account(f"fds-{variant}-")
        hook = h.receiver()
        mf = worker(h, file_host(h))
        state_dir = h.tempdir("fds-state-")
        env = service_env(account, hook, state_dir=state_dir, R2_FETCH_ENABLED="true", R2_FETCH_ENDPOINT=mf.url,
                          R2_ALLOW_INSECURE="true", R2_FETCH_TOKEN=mf.token, R2_BUCKET_NAME="render-signal-bench",
                          R2_PUBLIC_BASE_URL=mf.public_base_url, R2_FETCH_TIMEOUT_SECONDS="20")
        original_conn = SqliteStateStore._conn
        h.on_close("SqliteStateStore._conn", lambda: setattr(SqliteStateStore, "_conn", original_conn))
        if variant == "before":
            SqliteStateStore._conn = conn_kept_until_close  # type: ignore[method-assign]
        pipeline = RunningPipeline(env)
        h.on_close("pipeline", pipeline.stop)
        pipeline.start()
        status = pipeline.runtime.poller_status
        pipeline.wait_until(lambda: status.idle, 30, "idle after the first pass")
        appender = dovecot.client(account.user, tls=False, timeout=30)
        h.on_close("imap appender", appender.logout)

        def settle(count: int) -> None:
            wait_for(lambda: len(hook.delivered()) >= count, timeout, f"{count} webhooks")
            wait_for(lambda: status.idle, timeout, "poller idle")

        appender.append("INBOX", make_email())   # warm-up: imports, pools, the Worker's first request
        settle(1)
        sampler = FdSampler().start()
        h.on_close("fd sampler", sampler.stop)
        samples = [(0, descriptors(state_dir), threading.active_count())]
        started = time.monotonic()
        for done in range(every, emails + every, every):
            for _ in range(min(every, emails - (done - every))):
                appender.append("INBOX", make_email())
            settle(1 + min(done, emails))
            samples.append((min(done, emails), descriptors(state_dir), threading.active_count()))
        seconds = time.monotonic() - started
        sampler.stop()
        events = hook.delivered()[1:]
        with_r2 = sum(1 for event in events
                      if [bool(link.get("r2_url")) for link in (event["json"] or {}).get("delivery_links") or []]
                      == [True])
        counters = pipeline.store.counters()
        r2 = {name: counters.get(name) for name in ("r2_success", "r2_fallback", "r2_reused") if name in counters}
        pipeline.stop()
    return {"variant": variant, "emails": emails, "every": every, "samples": samples, "max": sampler.maximum,
            "sampler_samples": sampler.samples, "seconds": seconds, "webhooks": len(events), "with_r2_url": with_r2,
            "r2_counters": r2}


def report(doc: dict[str, Any]) -> dict[str, Any]:
    label = {"current": "current code (a thread's SQLite connection is closed when the thread ends)",
             "before": "BEFORE THE FIX, re-created in this process (af807ec^ _conn: connections kept until close())"}
    samples = doc["samples"]
    xs = [n for n, _, _ in samples]
    totals = [fds["total"] for _, fds, _ in samples]
    sqlite_fds = [fds["sqlite"] for _, fds, _ in samples]
    slope = slope_per(xs, totals, 100)
    steady = slope_per(xs[1:], totals[1:], 100) if len(xs) > 2 else slope
    print(f"\n{doc['variant']}: {label[doc['variant']]}")
    print(f"  {doc['emails']:,} emails in {doc['seconds']:.1f} s ({doc['emails'] / doc['seconds']:.1f} emails/s); "
          f"{doc['webhooks']:,} webhooks, {doc['with_r2_url']:,} with an r2_url for their link; counters "
          f"{doc['r2_counters']}")
    print("  emails  descriptors  sqlite  sockets  pipes  other  threads")
    for n, fds, threads in samples:
        print(f"  {n:6d}  {fds['total']:11d}  {fds['sqlite']:6d}  {fds['socket']:7d}  {fds['pipe']:5d}  "
              f"{fds['other']:5d}  {threads:7d}")
    print(f"  first {totals[0]}, last {totals[-1]}, max of the round samples {max(totals)}, max of "
          f"{doc['sampler_samples']:,} samples every 20 ms {doc['max']}; slope {slope:+.2f} descriptors per 100 "
          f"emails, {steady:+.2f} from the first round on (SQLite files {slope_per(xs, sqlite_fds, 100):+.2f})")
    return {"emails": doc["emails"], "every": doc["every"], "first": totals[0], "last": totals[-1],
            "max": max(doc["max"], max(totals)), "max_round_samples": max(totals),
            "slope_per_100_emails": round(slope, 3), "slope_from_first_round": round(steady, 3),
            "sqlite_first": sqlite_fds[0], "sqlite_last": sqlite_fds[-1],
            "sqlite_slope_per_100_emails": round(slope_per(xs, sqlite_fds, 100), 3),
            "samples": [[n, fds["total"]] for n, fds, _ in samples], "seconds": round(doc["seconds"], 1),
            "webhooks": doc["webhooks"], "with_r2_url": doc["with_r2_url"], "r2_counters": doc["r2_counters"],
            "worker": "miniflare"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=1000)
    parser.add_argument("--every", type=int, default=100, help="sample after every this many emails")
    parser.add_argument("--only", choices=("current", "before"), help="one run only (default: both)")
    parser.add_argument("--timeout", type=float, default=120.0, help="bound on each wait")
    args = parser.parse_args()
    print(f"descriptors of this process over {args.emails:,} emails: SQLite state, R2 offload through the Worker on "
          f"Miniflare, real Dovecot (IMAPS, IDLE) and receiver, the service's background in this process")
    variants = [args.only] if args.only else ["current", "before"]
    try:
        for variant in variants:
            doc = report(run(variant, args.emails, args.every, args.timeout))
            name = "descriptors_slope" if variant == "current" else "descriptors_slope_before_fix"
            result(name, doc.pop("slope_per_100_emails"), "descriptors/100 emails", **doc)
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
