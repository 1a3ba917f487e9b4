"""APPEND→webhook latency through the real service (Gunicorn master + workers), with IDLE and with polling.

What runs (all on 127.0.0.1, free ports, stopped by PID in ``finally`` even on Ctrl-C/SIGTERM):
- a real Dovecot (``harness.dovecot.DovecotServer``), one fresh account, the service talks IMAPS to it;
- a real webhook receiver (``harness.receiver.WebhookReceiver``) in this process, answering 200 like Make,
  with TCP_NODELAY on its connections (see ``Harness.receiver``; ``--stock-receiver`` leaves it off);
- the service under a real Gunicorn master (``harness.service.ServiceProcess``), 2 workers x 4 threads (the
  production defaults), no REDIS_URL: file lease + SQLite state, timings of ``harness.pipeline.service_env``
  except the polling interval below.

Two runs, each with a fresh service and state:
- ``idle``: IMAP_USE_IDLE=true, EMAIL_POLLING_INTERVAL_SECONDS=30 (the default), so pickup is by IDLE only;
- ``poll``: IMAP_USE_IDLE=false, EMAIL_POLLING_INTERVAL_SECONDS=5 (stated interval; the default is 30 s).

Load: after two warm-up emails (not counted), ``--count`` emails (default 50, ``harness.mail.make_email``,
one Dropbox link each) are APPENDed over one persistent plain IMAP session in an open loop, one every
uniform(0.5, 1.5) s (about 1 email/s, seeded), without waiting for the webhooks. Latency of one email =
receiver's ``received_at`` (time.time() when the request was read) − time.time() just before its APPEND; both
clocks are this process's. The split APPEND→queued / queued→received comes from the service log's
``BG_POLLER: queued`` line (millisecond timestamps).

    .venv/bin/python -m bench.bench_latency [--count 50] [--poll-interval 5] [--only idle|poll]

This module also holds the small harness the other real-server benchmarks import (``Harness``, ``percentile``,
``result``): they reuse the test helpers (``harness/``), they do not copy them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from typing import Any, Callable

from harness.binaries import SEARCH_PATH

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --- shared harness ------------------------------------------------------------------------------------------


def find_binary(name: str, package: str) -> str:
    path = shutil.which(name, path=SEARCH_PATH)
    if not path:
        raise SystemExit(f"{name} not found: install the Debian package {package} (make test does)")
    return path


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


def result(name: str, value: float | None, unit: str, **extra: Any) -> None:
    """One machine-readable figure for bench/run_all.py (the human-readable lines are printed separately)."""
    print("RESULT " + json.dumps({"name": name, "value": value, "unit": unit, **extra}, sort_keys=True), flush=True)


class Harness:
    """Everything a benchmark starts, stopped in reverse order by ``close()``; SIGTERM becomes KeyboardInterrupt
    so the ``finally`` that calls ``close()`` also runs when run_all.py (or a user) terminates the benchmark."""

    def __init__(self) -> None:
        self._stops: list[tuple[str, Callable[[], None]]] = []
        self._old_term = signal.signal(signal.SIGTERM, self._on_term)

    @staticmethod
    def _on_term(signum, frame) -> None:
        raise KeyboardInterrupt("SIGTERM")

    def on_close(self, what: str, stop: Callable[[], None]) -> None:
        self._stops.append((what, stop))

    def close(self) -> None:
        while self._stops:
            what, stop = self._stops.pop()
            try:
                stop()
            except BaseException as exc:  # keep stopping the rest
                print(f"  (stopping {what}: {type(exc).__name__}: {exc})", file=sys.stderr)
        signal.signal(signal.SIGTERM, self._old_term)

    def __enter__(self) -> "Harness":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- servers ---

    def dovecot(self):
        from harness.dovecot import DovecotServer

        server = DovecotServer(find_binary("dovecot", "dovecot-imapd"))
        self.on_close("dovecot", server.stop)
        return server.start()

    def redis(self):
        from harness.redis_server import RedisServer

        server = RedisServer(find_binary("redis-server", "redis-server"))
        self.on_close("redis-server", server.stop)
        return server.start()

    def receiver(self, nodelay: bool = True):
        """The test receiver in this process. ``nodelay``: its handler sets TCP_NODELAY (``disable_nagle_algorithm``,
        a StreamRequestHandler switch). The stock handler writes headers and body in two send() calls with Nagle on,
        so the sender's delayed ACK holds every answer's body ~40 ms on loopback; a real receiver (Make) answers in
        one segment. Applies to every receiver of this process."""
        from harness import receiver as receiver_module

        receiver_module._Handler.disable_nagle_algorithm = nodelay
        receiver = receiver_module.WebhookReceiver()
        self.on_close("webhook receiver", receiver.stop)
        return receiver.start()

    def service(self, env: dict[str, str], workers: int = 2, threads: int = 4):
        from harness.service import ServiceProcess

        service = ServiceProcess(env, workers=workers, threads=threads)

        def stop() -> None:
            try:
                if service.proc is not None and service.proc.poll() is None:
                    service.terminate(timeout=20)  # graceful, like a redeploy
            except Exception:
                pass
            finally:
                service.cleanup()  # SIGKILL of the process group if anything is left
                shutil.rmtree(service.dir, ignore_errors=True)

        self.on_close("service (gunicorn)", stop)
        return service.start()

    def tempdir(self, prefix: str) -> str:
        path = tempfile.mkdtemp(prefix=prefix)
        self.on_close(f"rm {path}", lambda: shutil.rmtree(path, ignore_errors=True))
        return path


_LOG_QUEUED = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z .*BG_POLLER: queued (msg_[0-9a-f]+)", re.M)


def queued_times(log_text: str) -> dict[str, float]:
    """event_id → epoch of the service's ``BG_POLLER: queued`` log line (ms precision, UTC)."""
    out = {}
    for stamp, event_id in _LOG_QUEUED.findall(log_text):
        moment = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=timezone.utc)
        out.setdefault(event_id, moment.timestamp())
    return out


# --- the latency benchmark -----------------------------------------------------------------------------------


def run_mode(mode: str, count: int, poll_interval: float, seed: int, nodelay: bool = True) -> dict:
    from harness.mail import event_id_of, make_email
    from harness.pipeline import service_env

    with Harness() as h:
        dovecot = h.dovecot()
        account = dovecot.new_account("lat")
        receiver = h.receiver(nodelay)
        if mode == "idle":
            overrides = {"IMAP_USE_IDLE": "true", "EMAIL_POLLING_INTERVAL_SECONDS": "30"}
        else:
            overrides = {"IMAP_USE_IDLE": "false", "EMAIL_POLLING_INTERVAL_SECONDS": f"{poll_interval:g}"}
        env = service_env(account, receiver, state_dir=h.tempdir("lat-state-"), **overrides)
        service = h.service(env, workers=2, threads=4)
        appender = dovecot.client(account.user, tls=False)
        h.on_close("imap appender", appender.logout)

        # Warm-up: the lease is taken, the first cycle ran, the modules are imported. Not counted.
        for _ in range(2):
            appender.append("INBOX", make_email())
        receiver.wait_for(2, timeout=3 * poll_interval + 30)
        time.sleep(1.0)

        rng = random.Random(seed)
        sent: dict[str, float] = {}
        for _ in range(count):
            raw = make_email()
            t0 = time.time()
            appender.append("INBOX", raw)
            sent[event_id_of(raw)] = t0
            time.sleep(rng.uniform(0.5, 1.5))
        receiver.wait_for(2 + count, timeout=2 * poll_interval + 30)
        received = {event["headers"].get("webhook-id"): event["received_at"] for event in receiver.delivered()}
        queued = queued_times(service.log_text())
    latencies = [received[event_id] - t0 for event_id, t0 in sent.items()]
    to_queue = [queued[event_id] - t0 for event_id, t0 in sent.items() if event_id in queued]
    to_webhook = [received[event_id] - queued[event_id] for event_id in sent if event_id in queued]
    return {"latencies": latencies, "to_queue": to_queue, "to_webhook": to_webhook}


def describe(values: list[float]) -> str:
    return (f"p50 {percentile(values, 50) * 1000:7.0f} ms  p95 {percentile(values, 95) * 1000:7.0f} ms  "
            f"p99 {percentile(values, 99) * 1000:7.0f} ms  max {max(values) * 1000:7.0f} ms  "
            f"mean {statistics.fmean(values) * 1000:7.0f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--poll-interval", type=float, default=5.0, help="EMAIL_POLLING_INTERVAL_SECONDS, IDLE off")
    parser.add_argument("--only", choices=("idle", "poll"))
    parser.add_argument("--seed", type=int, default=20250601)
    parser.add_argument("--stock-receiver", action="store_true", help="keep the receiver's Nagle 40 ms per answer")
    args = parser.parse_args()
    modes = [args.only] if args.only else ["idle", "poll"]
    print(f"APPEND→webhook latency, {args.count} emails per mode, open loop ~1 email/s, real Gunicorn service "
          f"(2 workers x 4 threads, SQLite state, IMAPS), real Dovecot, real receiver")
    try:
        for mode in modes:
            label = ("IDLE on (polling interval 30 s)" if mode == "idle"
                     else f"IDLE off, polling every {args.poll_interval:g} s")
            figures = run_mode(mode, args.count, args.poll_interval, args.seed, not args.stock_receiver)
            lat = figures["latencies"]
            print(f"  {label}")
            print(f"    APPEND→webhook   {describe(lat)}")
            if figures["to_queue"]:
                print(f"    APPEND→queued    {describe(figures['to_queue'])}")
                print(f"    queued→webhook   {describe(figures['to_webhook'])}")
            for p in (50, 95, 99):
                result(f"latency_{mode}_p{p}", round(percentile(lat, p), 4), "s", emails=len(lat),
                       poll_interval=30 if mode == "idle" else args.poll_interval)
            if figures["to_queue"]:
                result(f"latency_{mode}_to_queue_p50", round(percentile(figures["to_queue"], 50), 4), "s")
                result(f"latency_{mode}_queue_to_webhook_p50", round(percentile(figures["to_webhook"], 50), 4), "s")
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
