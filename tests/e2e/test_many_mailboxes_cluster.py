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


@pytest.mark.timeout(240)
def test_twelve_mailboxes_on_three_masters_survive_a_kill_and_reach_exactly_their_targets(
        dovecot_server, redis_url, service_factory):
    accounts = [dovecot_server.new_account() for _ in range(MAILBOXES)]
    receivers = {name: WebhookReceiver().start() for name in ("folders", "transfers", "down")}
    receivers["down"].respond_with(503, b"Service Unavailable")
    config_dir = tempfile.mkdtemp(prefix="cluster-config-")
    config_path = os.path.join(config_dir, "render-signal.yaml")
    with open(config_path, "w", encoding="utf-8") as handle:
        handle.write(config_text(accounts, receivers))
    env = {"RENDER_SIGNAL_CONFIG": config_path, "REDIS_URL": redis_url, "REDIS_LOCK_TTL_SECONDS": str(TTL),
           "LEASE_RETRY_SECONDS": str(RETRY), "REDIS_TIMEOUT_SECONDS": "1",
           **{f"PW_{n}": account.password for n, account in enumerate(accounts)}}
    ids = ["default", *(f"box-{n:02d}" for n in range(1, MAILBOXES))]
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    samples: list[dict[str, str | None]] = []
    stop_sampling = threading.Event()

    def sample() -> None:
        while not stop_sampling.is_set():
            values = raw.mget([lease_key(mailbox_id) for mailbox_id in ids])
            samples.append({"at": str(time.monotonic()), **dict(zip(ids, values, strict=True))})
            stop_sampling.wait(0.25)

    try:
        # Given three masters of two workers each on one Redis and one configuration file
        masters = [service_factory(env, workers=2) for _ in range(3)]
        sampler = threading.Thread(target=sample, name="lease-sampler", daemon=True)
        sampler.start()
        # and the mailboxes spread over the members (rendezvous hashing; hand-overs once a member lived 2 x TTL)
        def holder_pids() -> set[str]:
            pids = set()
            for value in raw.mget([lease_key(mailbox_id) for mailbox_id in ids]):
                match = HOLDER_PID.search(value or "")
                if match:
                    pids.add(match.group(1))
            return pids

        spread_deadline = time.monotonic() + 30
        while len(holder_pids()) < 4:
            assert time.monotonic() < spread_deadline, f"mailboxes not spread: held by {holder_pids()}"
            time.sleep(0.2)
        expected: dict[str, set[str]] = {name: set() for name in receivers}
        started = time.monotonic()
        # When 120 emails arrive, the first 60 before one master is killed
        order = [(n, accounts[n % MAILBOXES]) for n in range(MAILBOXES * PER_MAILBOX)]
        for n, account in order[:60]:
            body, targets = email_for(n, account.user)
            account.server.append(account.user, body)
            for target in targets:
                expected[target].add(f"cluster email {n}")
        victim = masters[0]
        victim_pids = {str(pid) for pid in victim.worker_pids()}
        victim_boxes = []
        for mailbox_id in ids:
            holder = raw.get(lease_key(mailbox_id)) or ""
            match = HOLDER_PID.search(holder)
            if match and match.group(1) in victim_pids:
                victim_boxes.append(mailbox_id)
        victim.kill9()
        killed_at = time.monotonic()
        for n, account in order[60:]:
            body, targets = email_for(n, account.user)
            account.server.append(account.user, body)
            for target in targets:
                expected[target].add(f"cluster email {n}")
        # Then every mailbox the killed master held is held by a live process within TTL + retry (+ slack)
        live_pids = {str(pid) for master in masters[1:] for pid in master.worker_pids()}

        def all_held_by_the_living() -> bool:
            for mailbox_id in ids:
                match = HOLDER_PID.search(raw.get(lease_key(mailbox_id)) or "")
                if not match or match.group(1) not in live_pids:
                    return False
            return True

        while not all_held_by_the_living():
            assert time.monotonic() - killed_at < 3 * TTL + RETRY + 10, "mailboxes not taken over"
            time.sleep(0.1)
        takeover = time.monotonic() - killed_at
        # (TTL for the key to expire, then the next member's retry; a member whose view still lists the dead
        # workers as live waits TTL + retry more: at most 2 x TTL + retry, plus sampling)
        assert takeover <= 2 * TTL + RETRY + 2.0, takeover
        # and the killed master comes back
        masters.append(service_factory(env, workers=2))
        # and the healthy targets get exactly their emails, once each, while "down" answers 503 throughout
        for name in ("folders", "transfers"):
            receivers[name].wait_for(len(expected[name]), timeout=120)
        healthy_done = time.monotonic() - started
        time.sleep(2.0)  # time for a duplicate to show
        for name in ("folders", "transfers"):
            delivered = receivers[name].delivered()
            subjects = [event["json"]["subject"] for event in delivered]
            assert sorted(subjects) == sorted(expected[name]), name
            assert len({event["headers"]["webhook-id"] for event in delivered}) == len(subjects), name
        assert receivers["down"].events, "the dead target was tried"
        assert not receivers["down"].delivered()
        stop_sampling.set()
        sampler.join(5)
        # and every sampled lease key named one process that was alive then (the killed one only before the kill
        # and for at most one TTL after it, while its key expired)
        for entry in samples:
            at = float(entry["at"] or 0)
            for mailbox_id in ids:
                match = HOLDER_PID.search(entry[mailbox_id] or "")
                if match and match.group(1) in victim_pids:
                    assert at < killed_at + TTL + 0.5, (mailbox_id, at - killed_at)
        print(f"\nCLUSTER: takeover of {len(victim_boxes)} mailboxes in {takeover:.1f} s (TTL {TTL} s, retry "
              f"{RETRY} s); healthy targets done in {healthy_done:.1f} s; {len(samples)} lease samples")
        assert 0 < len(victim_boxes) < MAILBOXES, "the killed master held some of the mailboxes, not all"
    finally:
        stop_sampling.set()
        raw.close()
        for receiver in receivers.values():
            receiver.stop()
