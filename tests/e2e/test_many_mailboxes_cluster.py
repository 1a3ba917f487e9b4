"""Many mailboxes, many receivers, across a cluster (issue 17), on the real stack.

Three Gunicorn masters × 2 workers share one redis-server and one configuration file (RENDER_SIGNAL_CONFIG): 12
mailboxes (Dovecot users), 3 targets, routes by sender and provider with one fan-out route, one target answering
503 for the whole run. 120 emails arrive; one master is killed with SIGKILL mid-run and started again.
Holds when every email reaches exactly the targets its routes name, once each; the killed master's mailboxes are
polled again elsewhere within TTL + retry (+ slack); every lease key, sampled, names a live process; and the 503
target delays none of the others.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import pytest
import redis

from harness.receiver import WebhookReceiver

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.imap]

MAILBOXES = 12
PER_MAILBOX = 10
TTL = 3.0
RETRY = 0.5
HOLDER_PID = re.compile(r"pid=(\d+)")


def lease_key(mailbox_id: str) -> str:
    return "render_signal:poller_lock" if mailbox_id == "default" else f"render_signal:poller_lock:{mailbox_id}"


def config_text(accounts, receivers) -> str:
    lines = ["mailboxes:"]
    for n, account in enumerate(accounts):
        lines += [f"  - id: {'default' if n == 0 else f'box-{n:02d}'}",
                  f"    server: {account.host}", f"    port: {account.ssl_port}", "    tls: implicit",
                  f"    ca_file: {account.ca_file}", f"    user: {account.user}", f"    password: ${{PW_{n}}}",
                  "    poll_interval_seconds: 1", "    timeout_seconds: 2", "    reconnect_max_seconds: 2"]
    lines.append("targets:")
    for name, receiver in receivers.items():
        lines += [f"  - id: {name}", f"    url: {receiver.url}", "    allow_insecure: true", "    timeout_seconds: 2",
                  "    concurrency: 2", "    retry: {schedule: [0.5, 1, 2], hours: 1}"]
    lines += ["routes:",
              "  - match: {sender: ['@agency.example']}",
              "    to: [folders, transfers]",
              "  - match: {provider: [dropbox]}",
              "    to: [folders, down]",
              "  - match: {provider: [wetransfer]}",
              "    to: [transfers]"]
    return "\n".join(lines) + "\n"


def email_for(n: int, to: str) -> tuple[bytes, tuple[str, ...]]:
    """Email ``n`` and the targets its routes name."""
    kind = n % 3
    message = EmailMessage()
    message["To"] = to
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain="cluster.example")
    message["Subject"] = f"cluster email {n}"
    if kind == 0:
        message["From"] = "Client <client@client.example>"
        message.set_content(f"https://www.dropbox.com/scl/fi/c{n:04d}/cut.mov?rlkey=k{n}&dl=0\n")
        targets: tuple[str, ...] = ("folders", "down")
    elif kind == 1:
        message["From"] = "Client <client@client.example>"
        message.set_content(f"https://we.tl/t-CLUSTER{n:04d}\n")
        targets = ("transfers",)
    else:
        message["From"] = "Agency <studio@agency.example>"
        message.set_content(f"https://www.dropbox.com/scl/fi/a{n:04d}/final.mov?rlkey=a{n}&dl=0\n")
        targets = ("folders", "transfers")
    return bytes(message), targets


def holder_pids(raw, ids) -> dict[str, str | None]:
    """The worker pid each mailbox's lease key names (None: no holder)."""
    pids: dict[str, str | None] = {}
    for mailbox_id, value in zip(ids, raw.mget([lease_key(mailbox_id) for mailbox_id in ids]), strict=True):
        match = HOLDER_PID.search(value or "")
        pids[mailbox_id] = match.group(1) if match else None
    return pids


class LeaseSampler:
    """Reads every lease key every 0.25 s in a thread: (monotonic time, {mailbox: holder pid})."""

    def __init__(self, raw, ids) -> None:
        self.raw, self.ids = raw, ids
        self.samples: list[tuple[float, dict[str, str | None]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-sampler", daemon=True)

    def start(self) -> "LeaseSampler":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), holder_pids(self.raw, self.ids)))
            self._stop.wait(0.25)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def wait_until(check, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, what
        time.sleep(0.1)
    return time.monotonic() - started


def send(batch, expected: dict[str, set[str]]) -> None:
    for n, account in batch:
        body, targets = email_for(n, account.user)
        account.server.append(account.user, body)
        for target in targets:
            expected[target].add(f"cluster email {n}")


def assert_exactly_their_emails_once(receivers, expected) -> None:
    for name in ("folders", "transfers"):
        delivered = receivers[name].delivered()
        subjects = [event["json"]["subject"] for event in delivered]
        assert sorted(subjects) == sorted(expected[name]), name
        assert len({event["headers"]["webhook-id"] for event in delivered}) == len(subjects), name
    assert receivers["down"].events, "the dead target was tried"
    assert not receivers["down"].delivered()


@pytest.mark.timeout(240)
def test_twelve_mailboxes_on_three_masters_survive_a_kill_and_reach_exactly_their_targets(
        dovecot_server, redis_url, service_factory):
    accounts = [dovecot_server.new_account() for _ in range(MAILBOXES)]
    receivers = {name: WebhookReceiver().start() for name in ("folders", "transfers", "down")}
    receivers["down"].respond_with(503, b"Service Unavailable")
    config_path = os.path.join(tempfile.mkdtemp(prefix="cluster-config-"), "render-signal.yaml")
    with open(config_path, "w", encoding="utf-8") as handle:
        handle.write(config_text(accounts, receivers))
    env = {"RENDER_SIGNAL_CONFIG": config_path, "REDIS_URL": redis_url, "REDIS_LOCK_TTL_SECONDS": str(TTL),
           "LEASE_RETRY_SECONDS": str(RETRY), "REDIS_TIMEOUT_SECONDS": "1",
           **{f"PW_{n}": account.password for n, account in enumerate(accounts)}}
    ids = ["default", *(f"box-{n:02d}" for n in range(1, MAILBOXES))]
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    sampler = LeaseSampler(raw, ids)
    try:
        # Given three masters of two workers each on one Redis and one configuration file
        masters = [service_factory(env, workers=2) for _ in range(3)]
        sampler.start()
        # and the mailboxes spread over the members (rendezvous hashing; hand-overs once a member lived 2 x TTL)
        wait_until(lambda: len(set(holder_pids(raw, ids).values()) - {None}) >= 4, 30, "mailboxes not spread")
        expected: dict[str, set[str]] = {name: set() for name in receivers}
        started = time.monotonic()
        # When 120 emails arrive, the first 60 before one master is killed with SIGKILL
        order = [(n, accounts[n % MAILBOXES]) for n in range(MAILBOXES * PER_MAILBOX)]
        send(order[:60], expected)
        victim = masters[0]
        victim_pids = {str(pid) for pid in victim.worker_pids()}
        victim_boxes = [m for m, pid in holder_pids(raw, ids).items() if pid in victim_pids]
        victim.kill9()
        killed_at = time.monotonic()
        send(order[60:], expected)
        # Then every mailbox is held by a live worker within TTL for the key to expire plus the next member's
        # retry (a member whose view still lists the dead workers waits TTL + retry more: 2 x TTL + retry at most)
        live_pids = {str(pid) for master in masters[1:] for pid in master.worker_pids()}
        takeover = wait_until(lambda: set(holder_pids(raw, ids).values()) <= live_pids, 3 * TTL + RETRY + 10,
                              "mailboxes not taken over")
        assert takeover <= 2 * TTL + RETRY + 2.0, takeover
        assert 0 < len(victim_boxes) < MAILBOXES, "the killed master held some of the mailboxes, not all"
        # and the killed master comes back
        masters.append(service_factory(env, workers=2))
        # and the healthy targets get exactly their emails, once each, while "down" answers 503 throughout
        for name in ("folders", "transfers"):
            receivers[name].wait_for(len(expected[name]), timeout=120)
        healthy_done = time.monotonic() - started
        time.sleep(2.0)  # time for a duplicate to show
        assert_exactly_their_emails_once(receivers, expected)
        sampler.stop()
        # and no sampled lease key named a killed worker later than one TTL after the kill (its key expiring)
        for at, holders in sampler.samples:
            for mailbox_id, pid in holders.items():
                if pid in victim_pids:
                    assert at < killed_at + TTL + 0.5, (mailbox_id, at - killed_at)
        print(f"\nCLUSTER: takeover of {len(victim_boxes)} mailboxes in {takeover:.1f} s (TTL {TTL} s, retry "
              f"{RETRY} s); healthy targets done in {healthy_done:.1f} s; {len(sampler.samples)} lease samples")
    finally:
        sampler.stop()
        raw.close()
        for receiver in receivers.values():
            receiver.stop()
