"""The whole product under faults (issue 10, items 2 and 3): real Dovecot, real Redis, the Worker on Miniflare with a
local R2 bucket and a local file server playing Dropbox, a webhook receiver, and the service as real Gunicorn masters.

100 emails are appended in bursts while, in turn, the lease holder is killed -9 (and restarted), Redis is paused,
Dovecot is paused, the receiver answers 503 and the Worker hangs; each fault lasts about three times the timeout it
exercises. Then: every email that should produce a webhook produced exactly one delivered event id (a second
delivery only with the same webhook-id, and counted as a possible duplicate), the others are recorded skips, there
is no dead letter, every email is flagged $RenderSignalDone, and after teardown no process is left.
"""

from __future__ import annotations

import time
from typing import Iterator

import pytest
import requests

from harness.cluster import Cluster, Mail, check_run, delivered_events, leftover_processes, wait_settled
from harness.waiting import wait_for
from tests.fixtures.runtime import require_binary, require_worker_runtime

pytestmark = [pytest.mark.slow, pytest.mark.imap]

FAULT_SECONDS = 6.0   # ~3x the 2 s IMAP / webhook / R2 timeouts, 2x the 3 s lease TTL


def _answers(url: str) -> bool:
    try:
        requests.get(url, timeout=1)
    except requests.RequestException:
        return False
    return True


def verify(cluster: Cluster, sent, label: str) -> dict:
    tally, problems = check_run(cluster, sent, label)
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

    # Calm again: R2 is used again once the circuit's cooldown has passed. The Worker is first seen answering
    # again (resumed after SIGSTOP on a loaded machine, it may take a moment before its first answer).
    wait_for(lambda: _answers(cluster.worker.url), 20, "the Worker answering again after the hang")
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


# --- push latency while the poller is busy ---------------------------------------------------------------------------

@pytest.mark.timeout(90)
def test_emails_arriving_while_the_poller_is_busy_are_picked_up_without_waiting_for_the_poll_interval() -> None:
    require_binary("dovecot", "dovecot-imapd")
    require_worker_runtime()
    # Given a production-like poll interval (30 s), so only IDLE can pick mail up quickly
    cluster = Cluster(instances=1, workers=2, use_redis=False, r2=True,
                      env_overrides={"EMAIL_POLLING_INTERVAL_SECONDS": "30", "R2_FETCH_TIMEOUT_SECONDS": "10"})
    try:
        cluster.start()
        mail = Mail(cluster, "b")
        mail.burst("warm-up", 1)
        wait_settled(cluster, mail.sent, "warm-up", timeout=10)
        # When the poller is busy with one email (its R2 copy stalls 3 s) while three more arrive
        with cluster.source_stalled():
            mail.burst("busy", 1)
            time.sleep(1.0)
            mail.burst("busy", 3, over_seconds=1.5)
            time.sleep(0.5)
        released = time.monotonic()
        # Then all of them are delivered within a few seconds of the poller being free again
        wait_settled(cluster, mail.sent, "emails that arrived while the poller was busy", timeout=6)
        assert time.monotonic() - released < 6
    finally:
        stop_and_check_nothing_left(cluster)
