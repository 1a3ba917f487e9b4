"""/api/status: token rules, the document's shape, and where each section comes from.

The app runs in-process (Flask test client) against a real redis-server; the lease holder's published document is
written the way the status observer writes it (a real ``RedisLease`` snapshot and a real ``PollerStatus``
snapshot), so these tests read what production reads.
"""

from __future__ import annotations

import json
import re
import time

import pytest

pytestmark = pytest.mark.redis

TOKEN = "status-token-Vq93-do-not-print"
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")
SERVICE_ADDRESS = "inbox@render-signal.test"


def service_env(redis_url: str | None, **extra: str) -> dict[str, str]:
    env = {"IMAP_SERVER": "127.0.0.1", "IMAP_PORT": "1", "EMAIL_ADDRESS": SERVICE_ADDRESS,
           "EMAIL_PASSWORD": "imap-pw-Kx71-secret", "WEBHOOK_URL": "http://127.0.0.1:9/hook/whk-path-7f3a",
           "WEBHOOK_ALLOW_INSECURE": "true", "STATUS_API_TOKEN": TOKEN, "REDIS_TIMEOUT_SECONDS": "0.3"}
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    return {key: value for key, value in env.items() if value is not None}


def publish_holder_status(runtime, *, state: str = "polling", last_uid: int = 42, error: str | None = None,
                          ttl: float = 30.0) -> dict:
    """Publish a holder's status the way ``StatusObserver`` does: real lease and poller snapshots."""
    from background.lease import RedisLease
    from background.runner import PollerStatus

    lease = RedisLease(runtime.redis_client, ttl_seconds=ttl, key="render_signal:poller_lock")
    assert lease.try_acquire()
    lease.renew()
    poller = PollerStatus(mailbox="INBOX", state=state, imap="ok", uidvalidity=1700000000, last_uid=last_uid,
                          idle=True, last_cycle_at=time.time() - 1, last_success_at=time.time() - 2)
    if error:
        poller.error(error, imap_state="unreachable")
        poller.update(state=state)
    document = {"lease": lease.snapshot(), "poller": poller.snapshot(),
                "instance": {"host": "holder-host", "pid": 4242, "worker": 3, "uptime_s": 10.0, "version": "x"}}
    runtime.store.publish_status(document, ttl_seconds=ttl)
    return document


def get_status(app, **headers):
    return app.test_client().get("/api/status", headers=headers)


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- token rules ------------------------------------------------------------------------------------------------------

def test_status_route_is_404_when_no_token_is_configured(make_app, redis_url):
    # Given no STATUS_API_TOKEN
    app = make_app(service_env(redis_url, STATUS_API_TOKEN=None))
    # When asked, even with some bearer token
    response = get_status(app, **bearer("anything"))
    # Then the route does not exist
    assert response.status_code == 404
    assert response.get_json() == {"error": "not_found"}


def test_status_route_answers_401_json_without_a_token(make_app, redis_url):
    app = make_app(service_env(redis_url))
    response = get_status(app)
    assert response.status_code == 401
    assert response.get_json() == {"error": "unauthorized"}
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer wrong-token"},
    {"X-API-Key": "wrong-token"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Bearer {TOKEN[:-1]}"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": TOKEN},
], ids=["bearer", "api-key", "longer", "prefix", "basic-scheme", "no-scheme"])
def test_status_route_answers_401_with_a_wrong_token(make_app, redis_url, headers):
    app = make_app(service_env(redis_url))
    response = get_status(app, **headers)
    assert response.status_code == 401
    assert response.get_json() == {"error": "unauthorized"}
    assert TOKEN not in response.get_data(as_text=True)


def test_status_route_answers_200_with_the_bearer_token(make_app, redis_url):
    app = make_app(service_env(redis_url))
    response = get_status(app, **bearer())
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Cache-Control"] == "no-store"


def test_status_route_answers_200_with_the_x_api_key_header(make_app, redis_url):
    app = make_app(service_env(redis_url))
    assert get_status(app, **{"X-API-Key": TOKEN}).status_code == 200


# --- the document -----------------------------------------------------------------------------------------------------

def test_status_document_has_the_documented_sections_and_fields(make_app, redis_url):
    # Given a holder that published its status, some counters, one pending webhook and one dead letter
    app = make_app(service_env(redis_url))
    runtime = app.extensions["render_signal"]
    publish_holder_status(runtime, error="IMAP: connect timed out")
    store = runtime.store
    store.incr("emails_seen", 3)
    store.incr("emails_skipped", label="no_links")
    store.incr("r2_fallback", label="timeout")
    enqueue(store, "msg_pending")
    enqueue(store, "msg_dead")
    store.dead_letter("msg_dead", "http_410", 410, "Gone")
    # When the status is asked for
    body = get_status(app, **bearer()).get_json()
    # Then every documented field is there, with ISO 8601 UTC timestamps
    assert body["stale"] is False
    assert set(body["lease"]) >= {"backend", "holder", "acquired_at", "expires_in_s", "renewals", "losses"}
    assert body["lease"]["backend"] == "redis"
    assert body["lease"]["holder"].startswith("pid=")
    assert ISO_UTC.match(body["lease"]["acquired_at"])
    assert 0 < body["lease"]["expires_in_s"] <= 30
    assert body["lease"]["renewals"] == 1 and body["lease"]["losses"] == 0
    poller = body["poller"]
    assert set(poller) >= {"state", "mailbox", "uidvalidity", "last_uid", "idle", "last_cycle_at", "last_success_at",
                           "last_error", "consecutive_errors"}
    assert (poller["state"], poller["mailbox"], poller["uidvalidity"], poller["last_uid"], poller["idle"]) == (
        "polling", "INBOX", 1700000000, 42, True)
    assert ISO_UTC.match(poller["last_cycle_at"]) and ISO_UTC.match(poller["last_success_at"])
    assert poller["last_error"]["message"] == "IMAP: connect timed out" and ISO_UTC.match(poller["last_error"]["at"])
    assert poller["consecutive_errors"] == 1
    counters = body["counters"]
    assert counters["emails_seen"] == 3
    assert counters["emails_skipped"] == {"no_links": 1}
    assert counters["r2_fallback"] == {"timeout": 1}
    assert counters["dead_letters"] == 1
    assert set(counters) >= {"emails_seen", "emails_processed", "emails_skipped", "webhooks_delivered",
                             "webhook_retries", "dead_letters", "r2_success", "r2_fallback", "html_truncations",
                             "parse_failures"}
    outbox = body["outbox"]
    # (the store measures the age from when the item entered the outbox, not from the email's date)
    assert outbox["pending"] == 1 and 0 <= outbox["oldest_pending_age_s"] < 60
    assert outbox["dead_letters"]["count"] == 1
    assert outbox["dead_letters"]["recent"][0]["event_id"] == "msg_dead"
    assert outbox["dead_letters"]["recent"][0]["reason"] == "http_410"
    assert ISO_UTC.match(outbox["dead_letters"]["recent"][0]["at"])
    assert set(body["instance"]) >= {"host", "pid", "worker", "uptime_s", "version"}
    assert ISO_UTC.match(body["generated_at"]) and ISO_UTC.match(body["source"]["published_at"])
    assert body["source"]["published_by"] == {"host": "holder-host", "pid": 4242, "worker": 3}


def test_lease_and_poller_come_from_the_holders_published_document_not_the_answering_worker(make_app, redis_url):
    # Given this worker's own poller is a standby, and the holder (elsewhere) published "backoff"
    app = make_app(service_env(redis_url))
    runtime = app.extensions["render_signal"]
    assert runtime.poller_status.snapshot()["state"] == "standby"
    published = publish_holder_status(runtime, state="backoff", last_uid=7)
    # When any worker answers
    body = get_status(app, **bearer()).get_json()
    # Then it tells the holder's truth
    assert body["poller"]["state"] == "backoff" and body["poller"]["last_uid"] == 7
    assert body["lease"]["holder"] == published["lease"]["holder"]
    assert body["lease_held"] is True and body["source"]["kind"] == "published"


def test_two_workers_sharing_the_store_give_the_same_lease_poller_counters_and_outbox(make_app, redis_url):
    # Given two app instances (two workers of two containers) on the same Redis
    first, second = make_app(service_env(redis_url)), make_app(service_env(redis_url))
    publish_holder_status(first.extensions["render_signal"])
    first.extensions["render_signal"].store.incr("webhooks_delivered", 5)
    # When both are asked
    answers = [get_status(app, **bearer()).get_json() for app in (first, second, first, second)]
    # Then the cluster sections are identical; only the instance differs
    for section in ("lease", "poller", "counters", "outbox", "source"):
        assert all(answer[section] == answers[0][section] for answer in answers), section
    assert answers[0]["instance"]["pid"] == answers[1]["instance"]["pid"]  # same process here, distinct runtimes


def test_without_a_published_holder_every_worker_says_standby_with_no_holder(make_app, redis_url):
    app = make_app(service_env(redis_url))
    body = get_status(app, **bearer()).get_json()
    assert body["poller"]["state"] == "standby"
    assert body["lease"]["holder"] is None and body["lease_held"] is False
    assert body["source"]["kind"] == "no_holder"
    assert body["counters"]["emails_seen"] == 0


def test_it_answers_stale_with_its_own_view_when_redis_is_paused(make_app, private_redis):
    # Given a runtime on a Redis that then freezes
    app = make_app(service_env(private_redis.url))
    runtime = app.extensions["render_signal"]
    publish_holder_status(runtime)
    runtime.poller_status.update(state="redis_unavailable")
    private_redis.pause()
    try:
        # When the status is asked for
        started = time.monotonic()
        response = get_status(app, **bearer())
        elapsed = time.monotonic() - started
    finally:
        private_redis.resume()
    # Then it answers within about one store timeout, saying the answer is this instance's own view
    assert response.status_code == 200
    body = response.get_json()
    assert body["stale"] is True
    assert body["source"]["kind"] == "local"
    assert body["poller"]["state"] == "redis_unavailable"
    assert body["counters"] is None
    assert elapsed < 3.0, elapsed


@pytest.mark.parametrize("extra, mode", [
    ({"IMAP_SERVER": None, "EMAIL_ADDRESS": None, "EMAIL_PASSWORD": None, "WEBHOOK_URL": None}, "not_configured"),
    ({"ENABLE_BACKGROUND_TASKS": "false"}, "disabled"),
])
def test_the_poller_state_says_when_the_background_is_not_configured_or_disabled(make_app, extra, mode):
    env = {key: value for key, value in service_env(None).items() if key not in extra or extra[key] is not None}
    env.update({key: value for key, value in extra.items() if value is not None})
    app = make_app(env)
    response = get_status(app, **bearer())
    assert response.status_code == 200
    body = response.get_json()
    assert body["background"] == mode and body["poller"]["state"] == mode
    assert body["stale"] is False and body["lease"]["holder"] is None


def test_an_error_inside_the_route_answers_json_500_without_internals(make_app, redis_url, monkeypatch, caplog):
    app = make_app(service_env(redis_url))

    def explode(*args, **kwargs):
        raise RuntimeError("internal detail /srv/app/secret.py line 12")

    monkeypatch.setattr("routes.operator.build_status", explode)
    response = get_status(app, **bearer())
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal_error"}
    assert "internal detail" not in response.get_data(as_text=True)
    assert any("STATUS: /api/status failed" in record.getMessage() for record in caplog.records)


def test_secrets_and_correspondent_addresses_in_published_errors_never_reach_the_answer(make_app, redis_url):
    # Given a holder whose last error message quotes a password and a correspondent's address
    app = make_app(service_env(redis_url))
    runtime = app.extensions["render_signal"]
    publish_holder_status(runtime, error=f"login imap-pw-Kx71-secret for john.doe@example.com as {SERVICE_ADDRESS}")
    text = get_status(app, **bearer()).get_data(as_text=True)
    assert "imap-pw-Kx71-secret" not in text
    assert "john.doe@example.com" not in text and "j***@example.com" in text
    assert SERVICE_ADDRESS in text


# --- mailboxes, targets and problems (issue 14) --------------------------------------------------------------------

def test_status_document_lists_the_default_mailbox_and_target_from_its_sections(make_app, redis_url):
    # Given a holder that published its status, one pending webhook and one dead letter
    app = make_app(service_env(redis_url))
    runtime = app.extensions["render_signal"]
    published = publish_holder_status(runtime)
    enqueue(runtime.store, "msg_pending")
    enqueue(runtime.store, "msg_dead")
    runtime.store.dead_letter("msg_dead", "http_410", 410, "Gone")
    # When the status is asked for
    response = get_status(app, **bearer())
    body = response.get_json()
    # Then there is one mailbox, "default", restating the poller and lease sections
    assert body["mailboxes"] == [{
        "id": "default", "folder": "INBOX", "state": "polling", "imap": "ok",
        "lease": {"held": True, "holder": published["lease"]["holder"], "state": "held",
                  "expires_in_s": body["lease"]["expires_in_s"]},
        "checkpoint": {"uidvalidity": 1700000000, "last_uid": 42}, "idle": True,
        "last_success_at": body["poller"]["last_success_at"], "backlog": 1,
        "auth": {"method": "password", "oauth_provider": None, "token_expires_at": None, "last_refresh_at": None}}]
    # And one target, "default", with its own figures and nothing of its URL
    assert body["targets"] == [{"id": "default", "profile": "generic", "pending": 1, "held": 0,
                                "oldest_pending_age_s": body["outbox"]["oldest_pending_age_s"], "dead": 1,
                                "window": None, "rate_per_second": None, "body_cap_bytes": 16_000_000,
                                "circuit": None, "paused": False, "paused_at": None}]
    text = response.get_data(as_text=True)
    assert "whk-path-7f3a" not in text and "127.0.0.1:9" not in text
    # And no background runs here, so health has nothing to report
    assert body["problems"] == [] and body["health"]["status"] == "ok"


def test_without_a_background_the_default_mailbox_says_the_mode_and_the_target_has_no_figures(make_app):
    env = {key: value for key, value in service_env(None, ENABLE_BACKGROUND_TASKS="false").items()}
    body = get_status(make_app(env), **bearer()).get_json()
    assert [(m["id"], m["state"], m["folder"]) for m in body["mailboxes"]] == [("default", "disabled", "INBOX")]
    assert [(t["id"], t["pending"], t["held"], t["oldest_pending_age_s"], t["dead"]) for t in body["targets"]] == [
        ("default", None, None, None, None)]
    assert body["problems"] == []


def test_health_is_ok_with_an_empty_problem_list_and_the_same_checks(make_app, redis_url):
    response = make_app(service_env(redis_url)).test_client().get("/health")
    body = response.get_json()
    assert response.status_code == 200 and body["status"] == "ok" and body["problems"] == []
    assert set(body) == {"status", "checks", "problems", "version"}
    assert set(body["checks"]) == {"poller", "lease", "imap", "outbox", "cluster"}


def wait_for_health(app, predicate, seconds: float = 20.0) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        body = app.test_client().get("/health").get_json()
        if predicate(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


@pytest.mark.timeout(60)
def test_an_unreachable_imap_server_is_a_degraded_mailbox_problem_on_health_and_status(make_app, redis_url):
    # Given a running background whose IMAP server refuses connections (port 1)
    app = make_app(service_env(redis_url, EMAIL_POLLING_INTERVAL_SECONDS="30"))
    runtime = app.extensions["render_signal"]
    runtime.start_background()
    # When the holder has tried once
    body = wait_for_health(app, lambda body: body["checks"]["imap"] == "unreachable")
    # Then /health is 200 degraded with one problem naming the default mailbox, and /api/status says the same
    assert body["checks"]["imap"] == "unreachable" and body["status"] == "degraded"
    assert app.test_client().get("/health").status_code == 200
    assert {"kind": "mailbox", "id": "default", "state": "unreachable",
            "detail": "the IMAP server cannot be reached"} in body["problems"]
    status = get_status(app, **bearer()).get_json()
    assert status["health"]["status"] == "degraded"
    assert [p for p in status["problems"] if p["kind"] == "mailbox"] == [
        p for p in body["problems"] if p["kind"] == "mailbox"]


@pytest.mark.timeout(60)
def test_an_unreachable_redis_is_a_cluster_problem_and_still_200(make_app):
    # Given a running background whose Redis refuses connections
    from harness.ports import free_port

    app = make_app(service_env(f"redis://127.0.0.1:{free_port()}/0"))
    app.extensions["render_signal"].start_background()
    # When the lease keeper and the observer have tried for longer than the store's stale limit
    body = wait_for_health(app, lambda body: {p["state"] for p in body["problems"]} >= {"redis_unreachable", "stale"})
    # Then a restart would not help: 200 degraded, naming the lease and the unreadable store as cluster problems
    assert body["status"] == "degraded"
    assert app.test_client().get("/health").status_code == 200
    assert [(p["kind"], p["id"], p["state"]) for p in body["problems"]] == [
        ("cluster", None, "redis_unreachable"), ("cluster", None, "stale")]


# --- helpers ----------------------------------------------------------------------------------------------------------

def enqueue(store, event_id: str, created_at: float | None = None) -> None:
    from services.state_store import OutboxItem

    now = time.time() if created_at is None else created_at
    item = OutboxItem(event_id=event_id, email_id=event_id[4:], payload={"event_id": event_id}, mailbox="INBOX",
                      uidvalidity=1, uid=abs(hash(event_id)) % 10000, message_id=None, created_at=now,
                      next_attempt_at=now)
    assert store.enqueue(item)


def test_a_worker_that_cannot_reach_redis_reports_its_poller_as_redis_unavailable():
    from routes.status_view import ClusterReads, build_status_document

    # Given a worker whose lease keeper found Redis unreachable and whose store read failed
    document = build_status_document(
        mode="enabled", lease_backend="redis", mailbox_folder="INBOX", version="v", instance={"host": "h", "pid": 1},
        local_lease={"backend": "redis", "state": "redis_unreachable"}, local_poller={"state": "standby"},
        health=None, reads=ClusterReads(stale=True), now=time.time())
    # Then the status says so, as its own (stale) view
    assert document["stale"] is True
    assert document["poller"]["state"] == "redis_unavailable"


def test_with_alerts_on_the_status_document_lists_the_ops_target_after_the_configured_ones(make_app, redis_url):
    # Given alerts sent to an ops receiver (a reserved target besides the configured one)
    app = make_app(service_env(redis_url, OPS_WEBHOOK_URL="http://127.0.0.1:9/ops/hook-path-91",
                               OPS_WEBHOOK_ALLOW_INSECURE="true",
                               OPS_WEBHOOK_SECRET="whsec_" + "b3BzLXNlY3JldC1mb3ItdGVzdHMtb25seQ=="))
    # When the status is read, Then the ops target's delivery shows like any target's, its URL never
    body = get_status(app, **bearer()).get_json()
    assert [entry["id"] for entry in body["targets"]] == ["default", "ops"]
    assert "hook-path-91" not in json.dumps(body)
