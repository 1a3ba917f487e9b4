"""Faults of the lease's own stores, with real ones: a redis-server that refuses connections, a lock file that
cannot be written (RLIMIT_FSIZE in a child process, so the kernel itself refuses the write).

Issue 15: #6 the poller spun (a WARNING per loop, a whole core) while Redis refused connections and the local
deadline had not passed yet; #9 a failed token write leaked a descriptor holding the flock, so no other worker of the
container could take the lease until that worker exited.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from background.lease import LeaseKeeper, OwnershipGuard, make_lease
from background.poller import MailboxPoller
from background.runner import PollerStatus
from config import MailboxConfig, PasswordCredentials
from harness.lease_child import REPO, Contender, spawn, wait_for
from harness.ports import stop_process
from services.redis_client import make_redis_client
from services.state_store_sqlite import SqliteStateStore
from settings import Settings

OUTAGE_SECONDS = 3.0


class LogTally(logging.Handler):
    """Counts records by level and keeps the first messages: a spinning thread logs far too many to keep."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.lock_ = threading.Lock()
        self.warnings = 0
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with self.lock_:
            if record.levelno >= logging.WARNING:
                self.warnings += 1
            if len(self.messages) < 200:
                self.messages.append(f"{record.levelname} {record.getMessage()}")

    def snapshot(self) -> tuple[int, list[str]]:
        with self.lock_:
            return self.warnings, list(self.messages)

    def count(self, prefix: str) -> int:
        return sum(m.split(" ", 1)[1].startswith(prefix) for m in self.snapshot()[1])


class MailboxNotExpected:
    """The poller's IMAP client: with Redis refusing connections from the start it must never be used."""

    connects = 0

    def __init__(self, config, guard=None) -> None:
        pass

    def connect(self) -> None:
        MailboxNotExpected.connects += 1
        raise AssertionError("the poller connected to IMAP although it could not prove it holds the lease")

    def close(self) -> None:
        pass


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def log_tally():
    tally = LogTally()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(tally)
    root.setLevel(logging.INFO)
    try:
        yield tally
    finally:
        root.removeHandler(tally)
        root.setLevel(previous)


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_holder_whose_redis_refuses_connections_backs_off_logs_the_outage_once_and_stays_idle(
        private_redis, tmp_path, log_tally):
    # Given a worker holding the lease (TTL 15 s: the local deadline outlasts the whole outage)
    MailboxNotExpected.connects = 0
    settings = Settings.from_env({"REDIS_URL": private_redis.url, "REDIS_LOCK_TTL_SECONDS": "15",
                                  "LEASE_RETRY_SECONDS": "1", "REDIS_TIMEOUT_SECONDS": "0.5",
                                  "STATE_DIR": str(tmp_path / "state")})
    client = make_redis_client(settings)
    lease = make_lease(settings, client)
    keeper = LeaseKeeper(lease, settings)
    store = SqliteStateStore(str(tmp_path / "state.sqlite3"), retention_seconds=3600)
    mailbox = MailboxConfig(id="default", server="127.0.0.1", user="u", credentials=PasswordCredentials("p"))
    poller = MailboxPoller(mailbox, store, lease, OwnershipGuard(lease), PollerStatus(),
                           offloader_factory=lambda: None, delivery_wakeup=threading.Event(),
                           flag_wakeup=threading.Event(), client_factory=MailboxNotExpected)
    stop_keeper, stop_poller = threading.Event(), threading.Event()
    cpu: dict[str, float] = {}

    def run_poller() -> None:
        started = time.thread_time()
        try:
            poller.run(stop_poller, keeper.held_event)
        finally:
            cpu["poller"] = time.thread_time() - started

    keeper_thread = threading.Thread(target=keeper.run, args=(stop_keeper,), name="test-lease-keeper")
    poller_thread = threading.Thread(target=run_poller, name="test-poller")
    keeper_thread.start()
    try:
        assert keeper.held_event.wait(5), log_tally.snapshot()
        assert lease.holds_locally()

        # When Redis refuses connections for 3 s while the poller runs
        assert private_redis.proc is not None
        stop_process(private_redis.proc)
        assert refuses_connections(private_redis.port)
        poller_thread.start()
        time.sleep(OUTAGE_SECONDS)
        stop_poller.set()
        poller_thread.join(10)
        assert not poller_thread.is_alive()
        held_throughout = lease.holds_locally()
        warnings, messages = log_tally.snapshot()

        # Then the poller waited instead of spinning: a few lines, little CPU, no IMAP connection
        print(f"\nLEASE redis refused {OUTAGE_SECONDS:.0f}s: {warnings} WARNING+ lines, "
              f"poller CPU {cpu['poller'] * 1000:.0f} ms")
        assert held_throughout, "the test needs the local deadline to outlast the outage"
        assert warnings < 20, messages[:40]
        assert cpu["poller"] < 0.1 * OUTAGE_SECONDS, cpu
        assert MailboxNotExpected.connects == 0
        # and the outage was logged once, by whichever thread found it first
        assert log_tally.count("BG_POLLER: Redis unreachable") == 1, messages
        assert lease.snapshot()["state"] == "redis_unreachable"

        # When Redis answers again (a restarted, empty server on the same port)
        private_redis.start()

        # Then its return is logged once, and the worker holds the lease again by itself
        wait_for(lambda: log_tally.count("BG_POLLER: Redis reachable again") >= 1, 10, "the end of the outage")
        wait_for(lambda: lease.holds_locally(), 10, "the lease to be held again")
        _, messages = log_tally.snapshot()
        assert log_tally.count("BG_POLLER: Redis reachable again") == 1, messages
        assert log_tally.count("BG_POLLER: Redis unreachable") == 1, messages
    finally:
        stop_poller.set()
        stop_keeper.set()
        if poller_thread.is_alive():
            poller_thread.join(10)
        keeper_thread.join(10)
        store.close()
        client.close()
    assert not keeper_thread.is_alive() and not poller_thread.is_alive()


# The failing worker: the production FileLease and LeaseKeeper in a process whose file writes fail with EFBIG.
# It reports on stdout (a pipe: RLIMIT_FSIZE applies to regular files only) and stays alive until stdin closes,
# so whatever it leaked is still open while another process tries to take the lease.
TOKEN_WRITE_FAILS = textwrap.dedent("""
    import json, logging, os, resource, sys
    from background.lease import FileLease, LeaseKeeper

    logging.basicConfig(stream=sys.stderr, level=logging.INFO)
    path = sys.argv[1]

    def lock_file_fds():
        found = []
        for name in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{name}") == path:
                    found.append(int(name))
            except OSError:
                pass
        return found

    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    lease = FileLease(path)
    before = len(os.listdir("/proc/self/fd"))
    try:
        lease.try_acquire()
        outcome = "acquired"
    except OSError as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    keeper = LeaseKeeper(lease, retry_interval=0.2)
    for _ in range(3):  # the keeper's path: logged once, retried, nothing kept open either
        keeper.step()
    after = len(os.listdir("/proc/self/fd"))
    print(json.dumps({"outcome": outcome, "fds_before": before, "fds_after": after,
                      "lock_file_fds": lock_file_fds(), "held": lease.holds_locally()}), flush=True)
    sys.stdin.read()
""")


@pytest.mark.timeout(30)
def test_a_worker_that_cannot_write_its_token_closes_the_lock_file_and_another_process_takes_the_lease(tmp_path):
    # Given a worker whose writes to regular files fail (RLIMIT_FSIZE 0: the token write gets EFBIG)
    lock_file = str(tmp_path / "state" / "poller.lock")
    os.makedirs(os.path.dirname(lock_file))
    failing = subprocess.Popen([sys.executable, "-c", TOKEN_WRITE_FAILS, lock_file], cwd=REPO,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    other: Contender | None = None
    try:
        assert failing.stdout is not None
        line = failing.stdout.readline()
        assert line, failing.communicate(timeout=10)
        report = json.loads(line)

        # Then its failed acquisitions closed every descriptor they opened, and it does not hold the lease
        assert report["outcome"].startswith("OSError: [Errno 27]"), report
        assert report["lock_file_fds"] == [], report
        assert report["fds_after"] == report["fds_before"], report
        assert report["held"] is False

        # When another worker of the container tries, while the failing one is still alive
        other = spawn("taker", str(tmp_path), "--lock-file", lock_file, "--retry", "0.2")

        # Then it takes the lease
        wait_for(lambda: other.acquisitions() or other.proc.poll() is not None, 10, "the other worker to acquire")
        assert other.acquisitions(), other.log()
        assert failing.poll() is None, "the failing worker must still be alive: exiting would drop a leaked lock"
        with open(lock_file) as handle:
            assert handle.read().strip() == other.events("start")[0]["token"]
    finally:
        if other is not None:
            other.stop()
        if failing.poll() is None:
            try:
                failing.communicate(input="", timeout=10)
            except subprocess.TimeoutExpired:
                failing.kill()
                failing.communicate(timeout=5)
        else:
            failing.communicate(timeout=5)
    assert failing.returncode == 0
