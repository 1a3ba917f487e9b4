"""500-email burst → every email delivered AND flagged done on the server, on Redis and on SQLite; ``/health`` p99
at 200 req/s while the burst is processed.

What runs (127.0.0.1, free ports, stopped by PID in ``finally`` even on Ctrl-C/SIGTERM), once per backend:
- a real Dovecot with one fresh account; the service talks IMAPS to it, IDLE on, polling interval 30 s (default);
- the webhook receiver as its own process (``python -m harness.receiver --log``: one JSON line per request);
- the service under a real Gunicorn master, 2 workers x 4 threads (production defaults), timings of
  ``harness.pipeline.service_env``; backend ``redis`` = a real redis-server (Redis lease + state),
  backend ``sqlite`` = no REDIS_URL (file lease + SQLite state);
- a ``/health`` load generator as its own process (this file with ``--health-load``): open loop at ``--rate``
  requests/s (request i is due at start + i/rate), spread over 16 threads, each with one keep-alive
  ``http.client`` connection; latency = response fully read − request sent (the lateness against the schedule is
  reported too, so a client that cannot keep up is visible). It runs 3 s before the burst (baseline) and then until
  the burst is done.

The burst: two warm-up emails first (delivered and flagged, not counted), then ``--count`` small emails
(``harness.mail.make_email``, one Dropbox link each) APPENDed as fast as possible over ``--connections`` (4)
plain IMAP sessions in parallel threads, one APPEND command per email (no MULTIAPPEND). Clock starts just before
the first APPEND. "Delivered" = the receiver logged a 2xx for every email (its ``received_at``); "flagged" = a
separate IMAP session (NOOP, then ``UID SEARCH KEYWORD $RenderSignalDone``, every 100 ms) counts all of them.

    .venv/bin/python -m bench.bench_burst [--count 500] [--rate 200] [--only redis|sqlite] [--timeout 180]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from bench.bench_latency import Harness, percentile, queued_times, result

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DONE_KEYWORD = "$RenderSignalDone"
HEALTH_THREADS = 16
BASELINE_SECONDS = 3.0


# --- /health load generator (runs as its own process) ----------------------------------------------------------


def health_load(url: str, rate: float, max_seconds: float) -> None:
    """Open-loop GETs of /health until stdin closes (or max_seconds); prints one JSON line of samples."""
    host_port = url.split("//", 1)[1]
    host, port = host_port.split(":")
    start = time.monotonic() + 0.2
    stop = threading.Event()
    mark = {"burst_at": None}

    def watch_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "burst":
                mark["burst_at"] = time.monotonic() - start
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    samples: list[list[tuple[float, float, float, int]]] = [[] for _ in range(HEALTH_THREADS)]
    threads = [threading.Thread(target=_health_requests,
                                args=(host, port, k, start, rate, max_seconds, stop, samples[k]), daemon=True)
               for k in range(HEALTH_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    flat = sorted(sample for per_thread in samples for sample in per_thread)
    print(json.dumps({"samples": flat, "burst_at": mark["burst_at"]}), flush=True)


def _health_requests(host: str, port: str, k: int, start: float, rate: float, max_seconds: float,
                     stop: threading.Event, out: list[tuple[float, float, float, int]]) -> None:
    """Thread ``k`` of the load: requests k, k + HEALTH_THREADS, ... each at its due time, one sample per request
    (sent since start, latency, lateness against the schedule, status; 0 = no answer)."""
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    i = k
    while not stop.is_set():
        due = start + i / rate
        if due - start > max_seconds:
            break
        delay = due - time.monotonic()
        if delay > 0 and stop.wait(delay):
            break
        sent = time.monotonic()
        conn, status = _get_health(conn, host, port)
        done = time.monotonic()
        out.append((sent - start, done - sent, sent - due, status))
        i += HEALTH_THREADS
    conn.close()


def _get_health(conn: http.client.HTTPConnection, host: str,
                port: str) -> tuple[http.client.HTTPConnection, int]:
    """One GET /health on the keep-alive connection: (connection to use next, status). On a failure the status is 0
    and the connection is a new one."""
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        response.read()
        return conn, response.status
    except (OSError, http.client.HTTPException):
        conn.close()
        return http.client.HTTPConnection(host, int(port), timeout=5), 0


def start_health_load(h: Harness, url: str, rate: float, max_seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "bench.bench_burst", "--health-load", url, "--rate", str(rate),
                             "--max-seconds", str(max_seconds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=REPO)

    def stop() -> None:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)

    h.on_close("health load generator", stop)
    return proc


def health_figures(samples: list, since: float | None, until: float | None = None) -> dict | None:
    chosen = [s for s in samples if (since is None or s[0] >= since) and (until is None or s[0] < until)]
    if not chosen:
        return None
    latencies = [s[1] for s in chosen]
    late = [s[2] for s in chosen]
    span = max(s[0] for s in chosen) - min(s[0] for s in chosen)
    return {"n": len(chosen), "rate": len(chosen) / span if span > 0 else 0.0,
            "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000,
            "max_ms": max(latencies) * 1000, "late_p99_ms": percentile(late, 99) * 1000,
            "errors": sum(1 for s in chosen if s[3] != 200)}


# --- webhook receiver process ----------------------------------------------------------------------------------


# The stock test receiver writes the status line + headers and the body with two send() calls on a socket with
# Nagle's algorithm on; the client's delayed ACK then holds the body back ~40 ms, so every sequential webhook
# attempt costs 40 ms on loopback. A real receiver (Make) answers in one segment. ``--stock-receiver`` keeps that
# artifact; by default the receiver process sets TCP_NODELAY (``disable_nagle_algorithm``, a StreamRequestHandler
# switch) and is otherwise the unmodified harness.receiver.
_NODELAY_RECEIVER = ("import sys, harness.receiver as r; r._Handler.disable_nagle_algorithm = True; "
                     "sys.exit(r.receiver_main(sys.argv[1:]))")


class ReceiverProcess:
    def __init__(self, h: Harness, workdir: str, nodelay: bool = True) -> None:
        self.log_path = os.path.join(workdir, "receiver.jsonl")
        launch = ["-c", _NODELAY_RECEIVER] if nodelay else ["-m", "harness.receiver"]
        self.proc = subprocess.Popen([sys.executable, *launch, "--port", "0", "--log", self.log_path],
                                     stdout=subprocess.PIPE, text=True, cwd=REPO)

        def stop() -> None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)

        h.on_close("webhook receiver process", stop)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the receiver process did not start")
        self.url = json.loads(line)["url"]
        self._offset = 0
        self.received: dict[str, float] = {}

    def refresh(self) -> dict[str, float]:
        """webhook-id → received_at of the first 2xx-answered request (log lines are appended after answering)."""
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return self.received
        end = chunk.rfind(b"\n") + 1
        self._offset += end
        for line in chunk[:end].splitlines():
            event = json.loads(line)
            status = event.get("status")
            if status is not None and 200 <= status <= 299 and event.get("webhook_id"):
                self.received.setdefault(event["webhook_id"], event["received_at"])
        return self.received


# --- the steps of one run ---------------------------------------------------------------------------------------


def _wait_warm_up(receiver: ReceiverProcess, flagged: Callable[[], int], service: Any) -> None:
    """Up to 60 s for the two warm-up emails to be delivered and flagged."""
    deadline = time.monotonic() + 60
    while (len(receiver.refresh()) < 2 or flagged() < 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    if flagged() < 2:
        raise RuntimeError("warm-up emails not delivered and flagged within 60 s:\n" + service.log_text()[-3000:])


def _start_appenders(emails: list[bytes], sessions: list[Any], go: threading.Event, append_done: list[float],
                     errors: list[BaseException]) -> list[threading.Thread]:
    """One thread per IMAP session; once ``go`` is set, session k APPENDs emails k, k + sessions, ...; each records
    when it finished (``append_done``) and what failed (``errors``)."""
    connections = len(sessions)

    def append_slice(k: int) -> None:
        go.wait()
        try:
            for raw in emails[k::connections]:
                sessions[k].append("INBOX", raw)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)
        append_done.append(time.time())

    threads = [threading.Thread(target=append_slice, args=(k,)) for k in range(connections)]
    for thread in threads:
        thread.start()
    return threads


def _wait_delivered_and_flagged(receiver: ReceiverProcess, flagged: Callable[[], int], ids: set[str],
                                flagged_total: int, timeout: float) -> tuple[float | None, float | None]:
    """(when the last of ``ids`` was received, when ``flagged_total`` emails were flagged), None for what did not
    happen within ``timeout``."""
    delivered_at = flagged_at = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (delivered_at is None or flagged_at is None):
        now = time.time()
        if delivered_at is None and ids <= receiver.refresh().keys():
            delivered_at = max(receiver.received[i] for i in ids)
        if flagged_at is None and flagged() >= flagged_total:
            flagged_at = now
        time.sleep(0.1)
    return delivered_at, flagged_at


# --- one run ---------------------------------------------------------------------------------------------------


def run_backend(backend: str, count: int, connections: int, rate: float, timeout: float,
                nodelay: bool = True) -> dict:
    from harness.mail import event_id_of, make_email
    from harness.pipeline import service_env

    with Harness() as h:
        workdir = h.tempdir("burst-")
        dovecot = h.dovecot()
        account = dovecot.new_account("burst")
        receiver = ReceiverProcess(h, workdir, nodelay)
        redis_url = h.redis().url if backend == "redis" else None

        class _Url:  # service_env reads .url of the receiver
            url = receiver.url

        env = service_env(account, _Url, redis_url=redis_url, state_dir=os.path.join(workdir, "state"),
                          IMAP_USE_IDLE="true", EMAIL_POLLING_INTERVAL_SECONDS="30")
        service = h.service(env, workers=2, threads=4)

        checker = dovecot.client(account.user, tls=False)
        h.on_close("imap checker", checker.logout)
        checker.select_folder("INBOX", readonly=True)

        def flagged() -> int:
            checker.noop()  # Dovecot syncs a session's view at command end: NOOP first, then SEARCH
            return len(checker.search(["KEYWORD", DONE_KEYWORD]))

        # Warm-up (not counted): lease taken, first cycle done, modules imported, flags applied.
        warm = dovecot.client(account.user, tls=False)
        h.on_close("imap warm-up", warm.logout)
        for _ in range(2):
            warm.append("INBOX", make_email())
        _wait_warm_up(receiver, flagged, service)
        base_delivered = len(receiver.refresh())

        emails = [make_email() for _ in range(count)]
        ids = {event_id_of(raw) for raw in emails}
        sessions = [dovecot.client(account.user, tls=False) for _ in range(connections)]
        for session in sessions:
            h.on_close("imap appender", session.logout)

        load = start_health_load(h, service.url, rate, BASELINE_SECONDS + timeout + 10)
        time.sleep(BASELINE_SECONDS + 0.2)

        append_done: list[float] = []
        errors: list[BaseException] = []
        go = threading.Event()
        threads = _start_appenders(emails, sessions, go, append_done, errors)
        load.stdin.write("burst\n")
        load.stdin.flush()
        t0 = time.time()
        go.set()
        delivered_at, flagged_at = _wait_delivered_and_flagged(receiver, flagged, ids, count + 2, timeout)
        for thread in threads:
            thread.join()
        load.stdin.close()
        samples = json.loads(load.stdout.readline())
        load.wait(10)
        if errors:
            raise RuntimeError(f"APPEND failed: {errors[0]!r}")
        got = receiver.refresh()
        queued = queued_times(service.log_text())
        log = service.log_text()
    burst_at = samples["burst_at"] or BASELINE_SECONDS
    end_at = burst_at + ((flagged_at or time.time()) - t0)
    return {
        "appended_s": max(append_done) - t0,
        "queued_s": (max(queued[i] for i in ids) - t0) if ids <= queued.keys() else None,
        "delivered_s": (delivered_at - t0) if delivered_at else None,
        "flagged_s": (flagged_at - t0) if flagged_at else None,
        "delivered": len(ids & got.keys()),
        "duplicates": len(got) - base_delivered - len(ids & got.keys()),
        "health_baseline": health_figures(samples["samples"], 0.5, burst_at),
        "health_burst": health_figures(samples["samples"], burst_at, end_at),
        "warnings": [line for line in log.splitlines() if " ERROR " in line][:5],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--timeout", type=float, default=180.0, help="bound of one burst, seconds")
    parser.add_argument("--only", choices=("redis", "sqlite"))
    parser.add_argument("--stock-receiver", action="store_true",
                        help="keep the test receiver's Nagle/delayed-ACK 40 ms per answer (see _NODELAY_RECEIVER)")
    parser.add_argument("--health-load", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--max-seconds", type=float, default=300.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.health_load:
        health_load(args.health_load, args.rate, args.max_seconds)
        return 0

    print(f"burst of {args.count} emails over {args.connections} parallel IMAP sessions (one APPEND each), real "
          f"Gunicorn service (2 workers x 4 threads, IMAPS, IDLE), /health at {args.rate:g} req/s from another process"
          f"; receiver {'stock (Nagle on)' if args.stock_receiver else 'with TCP_NODELAY'}")
    try:
        for backend in ([args.only] if args.only else ["redis", "sqlite"]):
            r = run_backend(backend, args.count, args.connections, args.rate, args.timeout, not args.stock_receiver)

            def fmt(value):
                return f"{value:7.2f} s" if value is not None else "  (not within the timeout)"

            print(f"  {backend}:")
            print(f"    all APPENDed after       {fmt(r['appended_s'])}")
            print(f"    all queued after         {fmt(r['queued_s'])}")
            print(f"    all delivered after      {fmt(r['delivered_s'])}   ({r['delivered']}/{args.count}, "
                  f"{r['duplicates']} duplicate(s))")
            print(f"    all flagged done after   {fmt(r['flagged_s'])}   (target: fully delivered <= 5 s)")
            for label, key in (("idle baseline", "health_baseline"), ("during burst", "health_burst")):
                figures = r[key]
                if figures:
                    print(f"    /health {label:14s} n={figures['n']:5d} at {figures['rate']:5.0f} req/s  "
                          f"p50 {figures['p50_ms']:6.1f} ms  p99 {figures['p99_ms']:7.1f} ms  "
                          f"max {figures['max_ms']:7.1f} ms  send lateness p99 {figures['late_p99_ms']:6.1f} ms  "
                          f"errors {figures['errors']}")
            for line in r["warnings"]:
                print(f"    service ERROR: {line[:200]}")
            done = max(v for v in (r["delivered_s"], r["flagged_s"]) if v is not None) \
                if r["delivered_s"] is not None and r["flagged_s"] is not None else None
            suffix = "_stock_receiver" if args.stock_receiver else ""
            result(f"burst_{backend}{suffix}_done", round(done, 3) if done is not None else None, "s",
                   emails=args.count,
                   appended=round(r["appended_s"], 3), queued=r["queued_s"] and round(r["queued_s"], 3),
                   delivered=r["delivered_s"] and round(r["delivered_s"], 3),
                   flagged=r["flagged_s"] and round(r["flagged_s"], 3))
            for key, name in (("health_burst", f"health_{backend}{suffix}_burst_p99"),
                              ("health_baseline", f"health_{backend}{suffix}_idle_p99")):
                if r[key]:
                    result(name, round(r[key]["p99_ms"], 2), "ms", n=r[key]["n"], rate=round(r[key]["rate"], 1),
                           p50=round(r[key]["p50_ms"], 2), max=round(r[key]["max_ms"], 2),
                           late_p99=round(r[key]["late_p99_ms"], 2), errors=r[key]["errors"])
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
