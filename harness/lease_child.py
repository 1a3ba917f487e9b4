"""One contender for the poller lease, run as its own OS process by the multi-process lease tests.

As a script it runs the production pieces (``make_lease`` + ``LeaseKeeper`` in a thread) and, in the main thread,
plays the poller: every ``--sample-ms`` it records whether it believes it holds the lease (``holds_locally()``,
bracketed by wall-clock times) and, when it does, attempts one "mailbox action" behind the ``OwnershipGuard``
(local check, then the token GET). With ``--ground-truth`` the action is a Lua script that atomically records, in
Redis, whether the lease key held this process's token at the moment the action happened: an external witness
that does not trust the child's own bookkeeping. SIGTERM stops it gracefully (the keeper releases the lease).

Everything it observes goes to ``--events`` as JSON lines, flushed per line, so a child killed with -9 still leaves
its record. Imported as a module it offers the parent-side helpers (``Contender``, ``read_events`` ...).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from harness.waiting import wait_for  # noqa: F401 - re-exported for the lease tests

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
ACTIONS_KEY = "render_signal:test:actions"

# KEYS[1] lease key, KEYS[2] witness list; ARGV[1] our token, ARGV[2] wall time. Atomic inside Redis.
WITNESS_SCRIPT = """
local owner = redis.call('GET', KEYS[1])
local ok = 0
if owner == ARGV[1] then ok = 1 end
redis.call('RPUSH', KEYS[2], ARGV[1] .. '|' .. ok .. '|' .. ARGV[2])
return ok
"""


# --- the child -------------------------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    import argparse
    import logging
    import threading

    from background.lease import LeaseKeeper, LeaseLost, OwnershipGuard, RedisLease, make_lease
    from services.redis_client import make_redis_client
    from settings import Settings

    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url")
    parser.add_argument("--lock-file")
    parser.add_argument("--ttl", type=float, default=1.0)
    parser.add_argument("--retry", type=float, default=None)
    parser.add_argument("--timeout", type=float, default=0.25)
    parser.add_argument("--events", required=True)
    parser.add_argument("--sample-ms", type=float, default=20.0)
    parser.add_argument("--ground-truth", action="store_true")
    args = parser.parse_args(argv)

    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(process)d %(levelname)s %(name)s %(message)s")
    env = {"REDIS_LOCK_TTL_SECONDS": str(args.ttl), "REDIS_TIMEOUT_SECONDS": str(args.timeout)}
    if args.retry is not None:
        env["LEASE_RETRY_SECONDS"] = str(args.retry)
    if args.redis_url:
        env["REDIS_URL"] = args.redis_url
    if args.lock_file:
        env["BG_POLLER_LOCK_FILE"] = args.lock_file
        env["STATE_DIR"] = os.path.dirname(args.lock_file)
    settings = Settings.from_env(env)

    client = make_redis_client(settings) if settings.redis_url else None
    lease = make_lease(settings, client)
    guard = OwnershipGuard(lease)
    out = open(args.events, "a", buffering=1, encoding="utf-8")
    write_lock = threading.Lock()

    def emit(**event) -> None:
        with write_lock:
            out.write(json.dumps(event) + "\n")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    keeper = LeaseKeeper(lease, settings,
                         on_change=lambda snap: emit(ev="change", t=time.time(), state=snap["state"],
                                                     held=keeper.held_event.is_set(), losses=snap["losses"]))
    witness = None
    witness_keys: list[str] = []
    # A Redis client means make_lease gave a RedisLease: its key is what the witness script reads.
    if args.ground_truth and client is not None and isinstance(lease, RedisLease):
        witness = client.register_script(WITNESS_SCRIPT)
        witness_keys = [lease.key, ACTIONS_KEY]
    emit(ev="start", t=time.time(), pid=os.getpid(), token=lease.token, backend=lease.backend)
    thread = threading.Thread(target=keeper.run, args=(stop,), name="lease-keeper")
    thread.start()
    period = args.sample_ms / 1000.0
    samples = 0
    try:
        while not stop.is_set():
            before = time.time()
            held = lease.holds_locally()
            after = time.time()
            samples += 1
            emit(ev="s", t0=before, t1=after, h=held)
            # Like the poller: it works while the keeper says "held" and relies on the guard for the rest, so a
            # stale event (e.g. right after SIGCONT, before the keeper ran) is caught by check_local().
            if keeper.held_event.is_set():
                try:
                    guard.check_local()   # before every "IMAP command"
                    guard.check_remote()  # before each batch / STORE / webhook attempt
                    guard.record_action()
                    ok = witness(keys=witness_keys, args=[lease.token, repr(time.time())]) \
                        if witness is not None else 1
                    emit(ev="a", t=time.time(), ok=bool(ok))
                except LeaseLost as exc:
                    emit(ev="refused", t=time.time(), why=str(exc))
                except Exception as exc:  # the witness call itself failed (Redis paused): not an action
                    emit(ev="action_error", t=time.time(), why=type(exc).__name__)
            stop.wait(period)
    finally:
        stop.set()
        thread.join(10)
        emit(ev="exit", t=time.time(), samples=samples, actions=guard.actions,
             actions_without_ownership=guard.actions_without_ownership, refusals=guard.refusals,
             snapshot=lease.snapshot(), keeper_alive=thread.is_alive())
        out.close()
    return 0


# --- parent-side helpers ---------------------------------------------------------------------------------------

def read_events(path: str) -> list[dict]:
    events = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.endswith("\n"):
                    events.append(json.loads(line))
    except FileNotFoundError:
        pass
    return events


@dataclass
class Contender:
    """A running lease_child.py process, its event file and its stderr log."""

    name: str
    proc: subprocess.Popen
    events_path: str
    log_path: str
    killed: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self, kind: str | None = None) -> list[dict]:
        events = read_events(self.events_path)
        return [e for e in events if kind is None or e["ev"] == kind]

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return ""

    def acquisitions(self) -> list[float]:
        """Wall times at which the keeper reported the lease held (acquired or re-confirmed)."""
        return [e["t"] for e in self.events("change") if e["held"]]

    def signal(self, sig: int) -> float:
        now = time.time()
        os.kill(self.proc.pid, sig)
        if sig == signal.SIGKILL:
            self.killed = True
        return now

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (resuming it first if stopped), then SIGKILL; always reaps."""
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
                self.proc.terminate()
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            except ProcessLookupError:
                pass


def spawn(name: str, workdir: str, *args: str) -> Contender:
    events_path = os.path.join(workdir, f"{name}.events")
    log_path = os.path.join(workdir, f"{name}.log")
    log = open(log_path, "ab")
    try:
        proc = subprocess.Popen([sys.executable, "-m", "harness.lease_child", "--events", events_path,
                                 *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        log.close()
    return Contender(name, proc, events_path, log_path)


def held_intervals(contender: Contender) -> list[tuple[float, float]]:
    """Merge runs of consecutive samples where the child believed it held the lease into [first t0, last t1].

    A run is never split by a long gap between two held samples: the interval is taken as continuous, which can
    only make the overlap check stricter.
    """
    intervals: list[list[float]] = []
    previous_held = False
    for sample in contender.events("s"):
        if sample["h"]:
            if previous_held and intervals:
                intervals[-1][1] = sample["t1"]
            else:
                intervals.append([sample["t0"], sample["t1"]])
        previous_held = sample["h"]
    return [(a, b) for a, b in intervals]


def overlaps(contenders: list[Contender]) -> list[tuple[str, tuple[float, float], str, tuple[float, float]]]:
    """Every pair of held intervals of two different contenders that overlap in time."""
    found = []
    spans = [(c.name, iv) for c in contenders for iv in held_intervals(c)]
    for i, (name_a, a) in enumerate(spans):
        for name_b, b in spans[i + 1:]:
            if name_a != name_b and a[0] <= b[1] and b[0] <= a[1]:
                found.append((name_a, a, name_b, b))
    return found


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
