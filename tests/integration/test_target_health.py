"""Targets on ``/health`` and ``/api/status`` through the real app and a real redis-server: a target whose circuit
a holder published open is a ``circuit_open`` problem (200, degraded) and reports ``circuit: open``.

Another process holds the mailbox's lease here (the test, with a real ``RedisLease``) and publishes its status the
way the status observer does, so this app's background is a standby that only observes what the holder published.
"""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.redis

TOKEN = "status-token-Tg51-do-not-print"


def service_env(redis_url: str) -> dict[str, str]:
    # IMAP on port 1: nothing is ever fetched; the lease is the test's anyway.
    return {"IMAP_SERVER": "127.0.0.1", "IMAP_PORT": "1", "EMAIL_ADDRESS": "inbox@render-signal.test",
            "EMAIL_PASSWORD": "imap-pw-Tg51-secret", "WEBHOOK_URL": "http://127.0.0.1:9/hook/whk-path-5e1c",
            "WEBHOOK_ALLOW_INSECURE": "true", "STATUS_API_TOKEN": TOKEN, "REDIS_TIMEOUT_SECONDS": "0.3",
            "REDIS_URL": redis_url}


class Holder:
    """The holder of mailbox ``default`` in another process: a real lease, real poller snapshots, its circuits."""

    def __init__(self, runtime) -> None:
        from background.lease import RedisLease

        self.runtime = runtime
        self.lease = RedisLease(runtime.redis_client, ttl_seconds=30, key="render_signal:poller_lock")
        assert self.lease.try_acquire()

    def publish(self, circuits: dict[str, str]) -> None:
        from background.runner import PollerStatus

        self.lease.renew()
        poller = PollerStatus(mailbox="INBOX", state="polling", imap="ok", uidvalidity=1700000000, last_uid=7,
                              idle=True, last_cycle_at=time.time() - 1, last_success_at=time.time() - 1)
        document = {"lease": self.lease.snapshot(), "poller": poller.snapshot(),
                    "instance": {"host": "holder-host", "pid": 4242, "worker": 1, "uptime_s": 10.0, "version": "x"},
                    "circuits": circuits}
        self.runtime.store.publish_status(document, ttl_seconds=30)

    def release(self) -> None:
        self.lease.release()


def status(app) -> dict:
    response = app.test_client().get("/api/status", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    return response.get_json()


def wait_for_health(app, predicate, seconds: float = 15.0) -> tuple[int, dict]:
    deadline = time.monotonic() + seconds
    while True:
        response = app.test_client().get("/health")
        body = response.get_json()
        if predicate(body) or time.monotonic() > deadline:
            return response.status_code, body
        time.sleep(0.2)


def target_problems(body: dict) -> list[tuple[str, str]]:
    return [(p["id"], p["state"]) for p in body["problems"] if p["kind"] == "target"]


@pytest.mark.timeout(60)
def test_a_target_whose_circuit_a_holder_published_open_is_degraded_on_health_and_open_on_status(make_app, redis_url):
    # Given a holder elsewhere whose breaker for target default is open, and this app's background observing it
    app = make_app(service_env(redis_url))
    runtime = app.extensions["render_signal"]
    holder = Holder(runtime)
    try:
        holder.publish({"default": "open"})
        # Then /api/status says the target's circuit is open, before any background runs here
        [target] = status(app)["targets"]
        assert (target["id"], target["circuit"]) == ("default", "open")
        # And once this app's observer has read the holder's status, /health names the target, 200 degraded
        runtime.start_background()
        code, body = wait_for_health(app, lambda body: ("default", "circuit_open") in target_problems(body))
        assert (code, body["status"]) == (200, "degraded")
        assert target_problems(body) == [("default", "circuit_open")]
        assert body["checks"]["cluster"] == "ok" and body["checks"]["poller"] == "standby"
        document = status(app)
        assert document["health"]["status"] == "degraded"
        assert [(p["id"], p["state"]) for p in document["problems"] if p["kind"] == "target"] == [
            ("default", "circuit_open")]

        # When the breaker closes again (half-open first: a trial delivery is no problem yet)
        holder.publish({"default": "half_open"})
        code, body = wait_for_health(app, lambda body: not target_problems(body))
        assert (code, body["status"], target_problems(body)) == (200, "ok", [])
        assert status(app)["targets"][0]["circuit"] == "half_open"
        holder.publish({"default": "closed"})
        assert status(app)["targets"][0]["circuit"] == "closed"
    finally:
        holder.release()


def test_without_a_published_circuit_the_target_reports_none(make_app, redis_url):
    app = make_app(service_env(redis_url))
    [target] = status(app)["targets"]
    assert target["circuit"] is None


CONFIG = """\
mailboxes:
  - id: default
    server: 127.0.0.1
    port: 1
    tls: none
    user: inbox@render-signal.test
    password: imap-pw-Tg51-secret
targets:
  - id: make
    url: http://127.0.0.1:9/make
    allow_insecure: true
  - id: archive
    url: http://127.0.0.1:9/archive
    allow_insecure: true
  - id: night
    url: http://127.0.0.1:9/night
    allow_insecure: true
"""


def configured_app(make_app, redis_url: str, tmp_path):
    """The app on CONFIG's three targets and a shared Redis, its runtime, and a Holder publishing for it."""
    config = tmp_path / "render-signal.yaml"
    config.write_text(CONFIG)
    app = make_app({"RENDER_SIGNAL_CONFIG": str(config), "REDIS_URL": redis_url, "REDIS_TIMEOUT_SECONDS": "0.3",
                    "STATUS_API_TOKEN": TOKEN})
    runtime = app.extensions["render_signal"]
    return app, runtime, Holder(runtime)


def enqueue_overdue(store, event_id: str, target_id: str, overdue: float) -> None:
    """An item of ``target_id`` whose attempt was due ``overdue`` seconds ago (first attempt: no scheduled delay)."""
    from services.state_store import OutboxItem

    at = time.time() - overdue
    item = OutboxItem(event_id=event_id, email_id=event_id[4:], payload={"event_id": event_id}, mailbox="INBOX",
                      uidvalidity=1, uid=abs(hash(event_id)) % 10000, message_id=None, created_at=at,
                      next_attempt_at=at, target_id=target_id)
    assert store.enqueue(item)


@pytest.mark.timeout(60)
def test_health_names_the_target_whose_due_webhooks_are_overdue_and_not_one_whose_items_are_held(
        make_app, redis_url, tmp_path):
    # Given three targets: make with a webhook due 5 minutes ago, archive with one due 10 s ago, and night with one
    # due 5 minutes ago but held (its window closed) for an hour; nobody here holds the mailbox, so nothing delivers
    app, runtime, holder = configured_app(make_app, redis_url, tmp_path)
    try:
        holder.publish({})
        store = runtime.store
        enqueue_overdue(store, "msg_make1_make", "make", 300)
        enqueue_overdue(store, "msg_arch1_archive", "archive", 10)
        enqueue_overdue(store, "msg_night1_night", "night", 300)
        # (held the way delivery holds it: claimed, then put back until the window opens)
        [claimed] = store.claim_due("test-delivery", time.time(), 1, 30.0, mailbox_id="default", target_id="night")
        assert store.hold(claimed.event_id, time.time() + 3600, time.time())
        # When this app's observer has read the store
        runtime.start_background()
        code, body = wait_for_health(app, lambda body: target_problems(body))
        # Then /health is 200 degraded and names target make, stalled, and no other target
        assert (code, body["status"]) == (200, "degraded")
        assert target_problems(body) == [("make", "stalled")]
        [make] = [p for p in body["problems"] if p["kind"] == "target"]
        assert make["detail"].startswith("the oldest due webhook is ") and make["detail"].endswith(" s overdue")
        # And /api/status's targets[] agree: night's item is held, not pending
        targets = {t["id"]: t for t in status(app)["targets"]}
        assert (targets["make"]["pending"], targets["night"]["pending"], targets["night"]["held"]) == (1, 0, 1)
    finally:
        holder.release()
