"""The operator surface on the real stack: Redis, Dovecot, a webhook receiver and two Gunicorn masters.

Proves what a single process cannot: whichever worker of whichever container answers, the lease, poller, counters
and outbox sections are the same; ``/health`` keeps answering fast while Redis or Dovecot is frozen; and when no
instance can poll, every instance says ``degraded`` with a ``stalled`` mailbox problem (the one stall rule).
"""

from __future__ import annotations

import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import pytest

from harness.ports import free_port
from harness.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.imap]

TOKEN = "cluster-status-token-Hh31"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLUSTER_SECTIONS = ("lease", "poller", "counters", "outbox")


def dropbox_email(to: str, sender: str = "John Doe <john.doe@client.example>",
                  subject: str = "Final renders for Friday") -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain="client.example")
    message.set_content("Hi,\n\nthe renders are here:\n"
                        "https://www.dropbox.com/scl/fi/abc123def456ghi/renders.zip?rlkey=k3yk3yk3y&dl=0\n\nJohn\n")
    return bytes(message)


def stack_env(redis_url: str, account, receiver_url: str, **extra: str) -> dict[str, str]:
    env = {**account.settings_env(), "REDIS_URL": redis_url, "WEBHOOK_URL": receiver_url,
           "WEBHOOK_ALLOW_INSECURE": "true", "STATUS_API_TOKEN": TOKEN, "REDIS_LOCK_TTL_SECONDS": "3",
           "EMAIL_POLLING_INTERVAL_SECONDS": "1", "IMAP_TIMEOUT_SECONDS": "2", "REDIS_TIMEOUT_SECONDS": "0.5",
           "IMAP_RECONNECT_MAX_SECONDS": "2"}
    env.update(extra)
    return env


def status(service) -> dict:
    response = service.get("/api/status", headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.timeout(150)
def test_thirty_requests_over_three_workers_of_two_masters_give_the_same_cluster_answer(
        service_factory, redis_url, imap_account, webhook_receiver):
    # Given two Gunicorn masters (2 + 1 workers) on one Redis, one mailbox and one receiver
    env = stack_env(redis_url, imap_account, webhook_receiver.url)
    masters = [service_factory(env, workers=2), service_factory(env, workers=1)]
    # When an email with a Dropbox link arrives and its webhook is delivered
    uid = imap_account.server.append(imap_account.user, dropbox_email(imap_account.user))
    webhook_receiver.wait_for(1, timeout=60)

    def caught_up():
        doc = status(masters[0])
        return (doc["source"]["kind"] == "published" and (doc["counters"] or {}).get("webhooks_delivered") == 1
                and doc["outbox"]["pending"] == 0 and (doc["poller"]["last_uid"] or 0) >= uid
                and doc["poller"]["state"] in ("polling", "backoff") and doc)

    wait_for(caught_up, 30, "the published status catching up with the delivery", interval=0.2)
    # … and requests are spread over every worker of both masters
    expected_pids = set(masters[0].worker_pids()) | set(masters[1].worker_pids())
    assert len(expected_pids) == 3
    answers: list[dict] = []
    while len(answers) < 30 or {a["instance"]["pid"] for a in answers} != expected_pids:
        assert len(answers) < 400, f"only workers {sorted({a['instance']['pid'] for a in answers})} answered"
        answers.append(status(masters[len(answers) % 2]))
    # Then counters and outbox are identical everywhere, and so are lease and poller as published
    first = answers[0]
    for answer in answers:
        assert answer["stale"] is False
        assert answer["counters"] == first["counters"]
        assert answer["outbox"] == first["outbox"]
        for field in ("backend", "holder", "acquired_at", "losses"):
            assert answer["lease"][field] == first["lease"][field], field
        for field in ("state", "mailbox", "uidvalidity", "last_uid", "last_error"):
            assert answer["poller"][field] == first["poller"][field], field
    # The holder republishes every second (renewals, expiry and cycle times move): answers built from the same
    # publication are identical in every field of the four sections, whichever worker built them.
    by_publication: dict[str, list[dict]] = {}
    for answer in answers:
        by_publication.setdefault(answer["source"]["published_at"], []).append(answer)
    for group in by_publication.values():
        for answer in group:
            assert {s: answer[s] for s in CLUSTER_SECTIONS} == {s: group[0][s] for s in CLUSTER_SECTIONS}
    assert any(len({a["instance"]["pid"] for a in group}) > 1 for group in by_publication.values())
    print(f"{len(answers)} answers from {len(expected_pids)} workers, {len(by_publication)} publications")
    assert first["counters"]["emails_seen"] == 1 and first["counters"]["emails_processed"] == 1
    assert first["lease"]["holder"].startswith("pid=")


def health_latencies(service, seconds: float) -> list[float]:
    """GET /health back to back for ``seconds``; every answer must be 200. Returns each request's latency."""
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        response = service.get("/health", timeout=5)
        latencies.append(time.monotonic() - started)
        assert response.status_code == 200, response.text
    return latencies


@pytest.mark.timeout(120)
def test_health_answers_within_a_second_while_redis_is_paused(service_factory, private_redis, imap_account,
                                                              webhook_receiver):
    # Given a service whose holder is polling
    service = service_factory(stack_env(private_redis.url, imap_account, webhook_receiver.url), workers=2)
    wait_for(lambda: status(service)["poller"]["state"] == "polling", 30, "a polling holder", interval=0.2)
    # When Redis freezes for a few seconds
    private_redis.pause()
    try:
        latencies = health_latencies(service, seconds=6)
        stale = status(service)
    finally:
        private_redis.resume()
    # Then every /health answered 200 within a second, and the status route says its answer is stale
    assert max(latencies) < 1.0, latencies
    print(f"/health under a paused Redis: {len(latencies)} requests, max {max(latencies) * 1000:.1f} ms, "
          f"median {sorted(latencies)[len(latencies) // 2] * 1000:.1f} ms")
    assert stale["stale"] is True and stale["counters"] is None


@pytest.mark.timeout(120)
def test_health_answers_within_a_second_while_dovecot_is_paused(service_factory, redis_url, private_dovecot,
                                                                webhook_receiver):
    account = private_dovecot.new_account()
    service = service_factory(stack_env(redis_url, account, webhook_receiver.url), workers=2)
    wait_for(lambda: status(service)["poller"]["state"] == "polling", 30, "a polling holder", interval=0.2)
    private_dovecot.pause()
    try:
        latencies = health_latencies(service, seconds=6)
    finally:
        private_dovecot.resume()
    assert max(latencies) < 1.0, latencies
    print(f"/health under a paused Dovecot: {len(latencies)} requests, max {max(latencies) * 1000:.1f} ms")


@pytest.mark.timeout(120)
def test_every_instance_says_degraded_with_a_stalled_mailbox_when_no_poller_can_poll(
        service_factory, redis_url, imap_account, webhook_receiver):
    # Given two masters whose IMAP server address points at a port where nothing listens: every instance's
    # poller, whichever holds the lease, fails every cycle (connection refused), so nobody ever succeeds
    env = stack_env(redis_url, imap_account, webhook_receiver.url, IMAP_PORT=str(free_port()))
    masters = [service_factory(env, workers=2), service_factory(env, workers=1)]

    def stalled(answer: dict) -> bool:
        return any((p["kind"], p["id"], p["state"]) == ("mailbox", "default", "stalled") for p in answer["problems"])

    def everyone_says_stalled():
        answers = [master.get("/health").json() for master in masters for _ in range(4)]
        return all(a["status"] == "degraded" and stalled(a) for a in answers) and answers

    # When more than a few polling intervals have passed (the one stall rule: no cycle completed)
    answers = wait_for(everyone_says_stalled, 45, "degraded/mailbox stalled from every instance", interval=0.5)
    # Then every instance says so with 200 (a restart would not fix it), and the status route agrees
    assert all(master.get("/health").status_code == 200 for master in masters)
    doc = status(masters[1])
    assert doc["poller"]["state"] == "backoff" and doc["poller"]["last_success_at"] is None
    assert doc["poller"]["consecutive_errors"] >= 1 and doc["poller"]["last_error"]["message"]
    assert len(answers) == 8

