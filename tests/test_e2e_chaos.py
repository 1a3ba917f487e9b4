"""The whole product under faults (issue 10, items 2 and 3): real Dovecot, real Redis, the Worker on Miniflare with a
local R2 bucket and a local file server playing Dropbox, a webhook receiver, and the service as real Gunicorn masters.

100 emails are appended in bursts while, in turn, the lease holder is killed -9 (and restarted), Redis is paused,
Dovecot is paused, the receiver answers 503 and the Worker hangs; each fault lasts about three times the timeout it
exercises. Then: every email that should produce a webhook produced exactly one delivered event id (a second
delivery only with the same webhook-id, and counted as a possible duplicate), the others are recorded skips, there
is no dead letter, every email is flagged $RenderSignalDone, and after teardown no process is left.
"""

from __future__ import annotations

import collections
import time
from typing import Iterator

import pytest
import requests

from tests.infra.binaries import require_binary
from tests.infra.miniflare import require_worker_runtime
from tests.support.cluster import (Cluster, Sent, dropbox_file_link, leftover_processes, source_bytes)
from tests.support.mail import event_id_of, make_email

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.imap]

FAULT_SECONDS = 6.0   # ~3x the 2 s IMAP / webhook / R2 timeouts, 2x the 3 s lease TTL
SETTLE_SECONDS = 45.0


# --- harness -------------------------------------------------------------------------------------------------------

class Mail:
    """Appends tracked emails: most with a Dropbox link (deliver), some that must be skipped."""

    def __init__(self, cluster: Cluster, prefix: str) -> None:
        self.cluster = cluster
        self.prefix = prefix
        self.sent: list[Sent] = []
        self.count = 0

    def one(self, phase: str) -> Sent:
        self.count += 1
        n = self.count
        tag = f"{self.prefix}{n:03d}"
        subject = f"[{self.prefix}] {phase} #{n}"
        source_path = None
        if n % 11 == 5:  # a sender outside SENDER_OF_INTEREST_FOR_POLLING
            raw = make_email(subject=subject, sender="Stranger <promo@elsewhere.test>",
                             links=[dropbox_file_link(tag)])
            expect = "skipped:sender_not_allowed"
        elif n % 11 == 10:  # an allowed sender, but no delivery link
            raw = make_email(subject=subject, links=[], extra_text="Just saying hello, no files this time.")
            expect = "skipped:no_delivery_links"
        else:
            raw = make_email(subject=subject, links=[dropbox_file_link(tag)])
            expect = "deliver"
            source_path = f"/scl/fi/{tag}/render_{tag}.mov"
        event_id = event_id_of(raw)
        appended_at = time.time()
        uid = self.cluster.append(raw)
        sent = Sent(subject=subject, event_id=event_id, email_id=event_id[len("msg_"):], expect=expect, uid=uid,
                    appended_at=appended_at, phase=phase, source_path=source_path)
        self.sent.append(sent)
        return sent

    def burst(self, phase: str, count: int, over_seconds: float = 0.0) -> None:
        for _ in range(count):
            self.one(phase)
            if over_seconds:
                time.sleep(over_seconds / count)


def delivered_events(cluster: Cluster) -> dict[str, list[dict]]:
    by_id: dict[str, list[dict]] = collections.defaultdict(list)
    for event in cluster.receiver.delivered():
        by_id[event["headers"].get("webhook-id")].append(event)
    return by_id


def settled(cluster: Cluster, sent: list[Sent]) -> list[Sent]:
    """The emails not yet at their final state (delivered and recorded, or recorded as skipped)."""
    delivered = delivered_events(cluster)
    store = cluster.store()
    waiting = []
    for item in sent:
        if item.expect == "deliver":
            record = store.get_item(item.event_id)
            if item.event_id not in delivered or record is None or record.status != "delivered":
                waiting.append(item)
        elif store.get_done(item.email_id) != item.expect:
            waiting.append(item)
    return waiting


def wait_settled(cluster: Cluster, sent: list[Sent], what: str, timeout: float = SETTLE_SECONDS) -> float:
    started = time.monotonic()
    deadline = started + timeout
    waiting = sent
    while time.monotonic() < deadline:
        try:
            waiting = settled(cluster, sent)
        except Exception:  # noqa: BLE001 - the store may still be reconnecting after a fault
            pass
        else:
            if not waiting:
                return time.monotonic() - started
        time.sleep(0.25)
    detail = [(item.subject, item.event_id, item.uid) for item in waiting[:10]]
    raise AssertionError(f"{what}: {len(waiting)} email(s) not settled within {timeout}s: {detail}\n"
                         f"status: {cluster.status()}\nlogs:\n{cluster.service_logs()[-12000:]}")


def verify(cluster: Cluster, sent: list[Sent], label: str, check_r2: bool = True) -> dict:
    """The final assertions of a run; returns the tally."""
    store = cluster.store()
    delivered = delivered_events(cluster)
    ours = {item.event_id for item in sent}
    deliverable = [item for item in sent if item.expect == "deliver"]
    skipped = [item for item in sent if item.expect != "deliver"]
    problems: list[str] = []

    # Exactly one delivered event id per deliverable email; skipped emails produced none.
    for item in deliverable:
        if item.event_id not in delivered:
            problems.append(f"LOST {item.subject} ({item.event_id}, uid {item.uid})")
    for item in skipped:
        if item.event_id in delivered:
            problems.append(f"DELIVERED BUT SHOULD SKIP {item.subject} ({item.event_id})")
        outcome = store.get_done(item.email_id)
        if outcome != item.expect:
            problems.append(f"SKIP NOT RECORDED {item.subject}: done record {outcome!r}, expected {item.expect!r}")
    # A second delivery only with an identical webhook-id: group the 2xx requests by the email (subject) they carry.
    ids_per_subject: dict[str, set[str]] = collections.defaultdict(set)
    for webhook_id, events in delivered.items():
        for event in events:
            body = event["json"] or {}
            if body.get("event_id") != webhook_id:
                problems.append(f"webhook-id {webhook_id} but body event_id {body.get('event_id')}")
            ids_per_subject[body.get("subject")].add(webhook_id)
    for item in deliverable:
        if len(ids_per_subject.get(item.subject, set())) > 1:
            problems.append(f"{item.subject} delivered under several webhook-ids {ids_per_subject[item.subject]}")
    duplicates = sum(len(events) - 1 for webhook_id, events in delivered.items() if webhook_id in ours)
    counted = int(store.counters().get("possible_duplicates", 0) or 0)
    if duplicates > counted:
        problems.append(f"{duplicates} duplicate deliveries but only {counted} counted as possible_duplicates")
    dead = store.list_items("dead", limit=1000)
    if dead:
        problems.append(f"dead letters: {[(d.event_id, d.dead_reason, d.last_status) for d in dead]}")
    # Every email flagged done on the server.
    deadline = time.monotonic() + 20
    unflagged = cluster.unflagged([item.uid for item in sent])
    while unflagged and time.monotonic() < deadline:
        time.sleep(0.5)
        unflagged = cluster.unflagged([item.uid for item in sent])
    if unflagged:
        problems.append(f"not flagged $RenderSignalDone: uids {unflagged}")

    # R2: copies that were made serve the source's bytes.
    with_r2 = 0
    for item in deliverable:
        for event in delivered.get(item.event_id, [])[:1]:
            for link in (event["json"] or {}).get("delivery_links", []):
                if link.get("r2_url"):
                    with_r2 += 1
                    if check_r2:
                        body = requests.get(link["r2_url"], timeout=10).content
                        if body != source_bytes(item.source_path):
                            problems.append(f"r2_url of {item.subject} does not serve the source bytes")

    latencies = []
    for item in deliverable:
        events = delivered.get(item.event_id)
        if events:
            latencies.append((events[0]["received_at"] - item.appended_at, item.phase))
    worst = max(latencies, default=(0.0, "-"))
    per_phase: dict[str, float] = {}
    for latency, phase in latencies:
        per_phase[phase] = max(per_phase.get(phase, 0.0), latency)
    tally = {
        "run": label,
        "emails": len(sent),
        "delivered": len([item for item in deliverable if item.event_id in delivered]),
        "expected_deliveries": len(deliverable),
        "duplicates": duplicates,
        "possible_duplicates_counted": counted,
        "skipped": len(skipped),
        "dead_letters": len(dead),
        "with_r2_url": with_r2,
        "max_latency_s": round(worst[0], 2),
        "max_latency_phase": worst[1],
        "max_latency_by_phase_s": {phase: round(value, 2) for phase, value in per_phase.items()},
        "counters": store.counters(),
    }
    assert not problems, (f"{label}: {len(problems)} problem(s):\n" + "\n".join(problems[:40])
                          + f"\ntally: {tally}\nlogs:\n{cluster.service_logs()[-15000:]}")
    return tally


def print_tally(tally: dict, capsys) -> None:
    with capsys.disabled():
        print(f"\n=== e2e tally: {tally['run']} ===")
        for key, value in tally.items():
            if key != "run":
                print(f"  {key}: {value}")


def assert_healthy(cluster: Cluster) -> None:
    for service in cluster.services:
        document = service.get("/health").json()
        assert document["checks"]["poller"] != "down", (f"instance {service.port}: a background thread died: "
                                                        f"{document}\n{service.log_text()[-8000:]}")


def stop_and_check_nothing_left(cluster: Cluster) -> None:
    seen = cluster.stop()
    left = leftover_processes(seen)
    assert not cluster.stop_errors, f"teardown errors: {cluster.stop_errors}"
    assert not left, f"processes left behind after teardown: {left}"
    deadline = time.monotonic() + 5
    threads = cluster.threads_at_stop
    while any(thread.is_alive() for thread in threads) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = [thread.name for thread in threads if thread.is_alive()]
    assert not alive, f"threads left behind: {alive}"
    slow = {port: round(seconds, 1) for port, seconds in getattr(cluster, "graceful_seconds", {}).items()
            if seconds > 10}
    assert not slow, f"graceful SIGTERM took more than 10 s: {slow}"


# --- the shared cluster (Redis, two instances) -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    require_binary("dovecot", "dovecot-imapd")
    require_binary("redis-server", "redis-server")
    require_worker_runtime()
    running = Cluster(instances=2, workers=2, use_redis=True, r2=True).start()
    try:
        yield running
    finally:
        # Nothing left behind: every service / dovecot / redis / workerd PID is gone after the teardown.
        stop_and_check_nothing_left(running)


@pytest.mark.redis
@pytest.mark.timeout(300)
def test_100_emails_through_every_fault_each_delivered_once_or_skipped(cluster: Cluster, capsys) -> None:
    mail = Mail(cluster, "c")

    # Calm: the whole path works, R2 copies made.
    mail.burst("calm", 10)
    wait_settled(cluster, mail.sent, "calm")

    # 1. The lease holder's container is killed -9 mid-burst; restarted (as Render would) after ~3x the TTL.
    mail.burst("kill-9 holder", 6)
    killed_index, killed_pid = cluster.kill_lease_holder()
    try:
        mail.burst("kill-9 holder", 12, over_seconds=FAULT_SECONDS)
        time.sleep(max(0.0, 3 * 3.0 - FAULT_SECONDS))
    finally:
        cluster.restart(killed_index)
    wait_settled(cluster, mail.sent, f"after kill -9 of the holder's master (pid {killed_pid})")

    # 2. Redis paused (SIGSTOP) longer than the lease TTL: the holder can neither renew nor verify.
    with cluster.redis_paused():
        mail.burst("redis paused", 16, over_seconds=FAULT_SECONDS)
    wait_settled(cluster, mail.sent, "after the Redis pause")

    # 3. Dovecot paused (master and children) for 3x IMAP_TIMEOUT_SECONDS, with a burst just queued before it.
    mail.burst("dovecot paused", 8)
    with cluster.dovecot_paused():
        time.sleep(FAULT_SECONDS)
    mail.burst("dovecot paused", 8)
    wait_settled(cluster, mail.sent, "after the Dovecot pause")

    # 4. The receiver answers 503 for 3x WEBHOOK_TIMEOUT_SECONDS.
    with cluster.receiver_failing(503):
        mail.burst("receiver 503", 16, over_seconds=FAULT_SECONDS)
    wait_settled(cluster, mail.sent, "after the receiver's 503s")

    # 5. The Worker hangs (node + workerd stopped) for 3x R2_FETCH_TIMEOUT_SECONDS: fallback to source URLs.
    with cluster.worker_hung():
        mail.burst("worker hung", 16, over_seconds=FAULT_SECONDS)
    wait_settled(cluster, mail.sent, "after the Worker hang")

    # Calm again: R2 is used again once the circuit's cooldown has passed.
    time.sleep(2.5)
    mail.burst("calm after", 8)
    wait_settled(cluster, mail.sent, "final calm")
    assert len(mail.sent) == 100

    tally = verify(cluster, mail.sent, "two instances on Redis, R2 on, five faults")
    print_tally(tally, capsys)
    assert_healthy(cluster)
    logs = cluster.service_logs()
    assert "R2_TRANSFER: fallback to source URL" in logs
    delivered = delivered_events(cluster)
    hung = [item for item in mail.sent if item.phase == "worker hung" and item.expect == "deliver"]
    fell_back = [item for item in hung
                 if not any(link.get("r2_url") for link in delivered[item.event_id][0]["json"]["delivery_links"])]
    assert fell_back, "no email sent with source URLs while the Worker hung"
    after = [item for item in mail.sent if item.phase in ("calm", "calm after") and item.expect == "deliver"]
    assert all(delivered[item.event_id][0]["json"]["delivery_links"][0]["r2_url"] for item in after), \
        "R2 not used while the Worker was healthy"
    assert tally["skipped"] >= 6


@pytest.mark.redis
@pytest.mark.timeout(150)
def test_three_masters_one_killed_midway_every_email_delivered_once(cluster: Cluster, capsys) -> None:
    # Given three Gunicorn masters (2 workers each) on one Redis
    while len(cluster.services) < 3:
        cluster.add_instance()
    cluster.wait_for_holder(15)
    mail = Mail(cluster, "t")
    # When 30 emails arrive and the lease holder's master is killed -9 midway (and not restarted)
    mail.burst("three masters", 12, over_seconds=2)
    killed_index, killed_pid = cluster.kill_lease_holder()
    mail.burst("three masters", 18, over_seconds=4)
    # Then one of the two others takes over and every email is delivered once (or skipped)
    wait_settled(cluster, mail.sent, f"three masters, holder master {killed_pid} killed")
    new_index = cluster.wait_for_holder(10)
    assert new_index != killed_index
    tally = verify(cluster, mail.sent, "three masters on Redis, lease holder killed -9 midway")
    print_tally(tally, capsys)
    cluster.restart(killed_index)  # leave the cluster as Render would: the container comes back


# --- no Redis: file lock, SQLite, one instance with several workers --------------------------------------------------

@pytest.mark.timeout(240)
def test_without_redis_one_instance_several_workers_survives_worker_kill_dovecot_pause_and_503(capsys) -> None:
    require_binary("dovecot", "dovecot-imapd")
    require_worker_runtime()
    cluster = Cluster(instances=1, workers=3, use_redis=False, r2=True)
    try:
        cluster.start()
        mail = Mail(cluster, "s")
        mail.burst("calm", 6)
        wait_settled(cluster, mail.sent, "no-redis calm")

        # kill -9 of the worker process holding the file lock: Gunicorn forks a new one, another takes the lock
        mail.burst("kill-9 holding worker", 6)
        _, killed_pid = cluster.kill_lease_holder()
        mail.burst("kill-9 holding worker", 6, over_seconds=FAULT_SECONDS)
        wait_settled(cluster, mail.sent, f"after kill -9 of holding worker {killed_pid}")
        new_pid = cluster.holder_pid()
        assert new_pid != killed_pid and new_pid in cluster.services[0].worker_pids()
        assert cluster.services[0].proc.poll() is None, "the Gunicorn master died"

        mail.burst("dovecot paused", 6)
        with cluster.dovecot_paused():
            time.sleep(FAULT_SECONDS)
        mail.burst("dovecot paused", 6)
        wait_settled(cluster, mail.sent, "no-redis: after the Dovecot pause")

        with cluster.receiver_failing(503):
            mail.burst("receiver 503", 10, over_seconds=FAULT_SECONDS)
        wait_settled(cluster, mail.sent, "no-redis: after the receiver's 503s")

        tally = verify(cluster, mail.sent, "one instance, 3 workers, file lock + SQLite")
        print_tally(tally, capsys)
        assert_healthy(cluster)
        assert cluster.store().backend == "sqlite"
    finally:
        stop_and_check_nothing_left(cluster)
