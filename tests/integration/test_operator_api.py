"""The operator API (routes/actions.py) and its access rules (routes/access.py), in-process (Flask test client) over
the real state store (a SQLite file; a real redis-server where the rule is cluster-wide), with real webhook
receivers. Every action: its answer, its 401/404/409, its history entry; concurrent replays of one dead letter are
delivered once by the running delivery loop; a sample is one signed attempt the receiver answers; a try-email is a
dry run that sends nothing; pause and resume are durable.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from background.operator_actions import DryRunPolicy, dry_run
from email_processing.identity import event_id_for
from email_processing.payload import for_target
from harness.mail import make_email
from routes.access import (
    LOGIN_FAILURES_PER_CLIENT,
    SESSION_COOKIE,
)
from services.state_store import OutboxItem, ParkedEmail

ADMIN = "admin-token-Wq81-do-not-print"
STATUS = "status-token-Hb27-do-not-print"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "synthetic"

ACTION_ROUTES = [
    "/api/outbox/msg_00000000000000000000000000000000/replay",
    "/api/parked/default:1:1/replay",
    "/api/replay",
    "/api/targets/default/sample",
    "/api/targets/default/pause",
    "/api/targets/default/resume",
    "/api/try-email",
]


def write_config(tmp_path: Path, default_url: str, archive_url: str, *, secret: str | None = None) -> str:
    """One mailbox nobody can reach (the lease is taken all the same: delivery runs) and two targets."""
    path = tmp_path / "render-signal.yaml"
    secret_line = f"\n    secret: {secret}" if secret else ""
    path.write_text(f"""mailboxes:
  - id: default
    server: 127.0.0.1
    port: 1
    tls: none
    user: inbox@render-signal.test
    password: imap-pw-Kx71-secret
    senders: ["@example.com"]
targets:
  - id: default
    url: "{default_url}"
    allow_insecure: true
    timeout_seconds: 2
    retry: {{schedule: [0.2, 0.4], hours: 1}}{secret_line}
  - id: archive
    url: "{archive_url}"
    allow_insecure: true
    timeout_seconds: 2
""", encoding="utf-8")
    return str(path)


def operator_env(tmp_path: Path, default_url: str = "http://127.0.0.1:9/hook/a",
                 archive_url: str = "http://127.0.0.1:9/hook/b", **extra: Any) -> dict[str, str]:
    env = {"RENDER_SIGNAL_CONFIG": write_config(tmp_path, default_url, archive_url, secret=extra.pop("secret", None)),
           "STATE_DIR": str(tmp_path / "state"), "STATUS_API_TOKEN": STATUS, "ADMIN_API_TOKEN": ADMIN,
           "REDIS_TIMEOUT_SECONDS": "1", "LEASE_RETRY_SECONDS": "0.3", "REDIS_LOCK_TTL_SECONDS": "3"}
    env.update({key: str(value) for key, value in extra.items()})
    return {key: value for key, value in env.items() if value != "None"}


def bearer(token: str = ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


_uids = iter(range(1, 10_000))


def queue_item(store, target_id: str = "default", subject: str | None = None) -> OutboxItem:
    """An outbox item of a real payload (the dry run of a generated email), as ingest queues it."""
    payload = dry_run(make_email(subject=subject), DryRunPolicy(allow_without_links=True))["payload"]
    email_id = payload["microsoft_graph_email_id"]
    now = time.time()
    item = OutboxItem(event_id=event_id_for(email_id, target_id), email_id=email_id,
                      payload=for_target(payload, target_id), mailbox="INBOX", uidvalidity=7, uid=next(_uids),
                      message_id=payload["message_id"], created_at=now, next_attempt_at=now, target_id=target_id)
    assert store.enqueue(item)
    return item


def dead_item(store, target_id: str = "default", dead_at: float | None = None) -> OutboxItem:
    item = queue_item(store, target_id)
    assert store.dead_letter(item.event_id, "http_400", 400, "bad scenario", now=dead_at)
    return item


def park(store, uid: int, parked_at: float | None = None) -> ParkedEmail:
    parked = ParkedEmail(parked_id=f"default:7:{uid}", mailbox_id="default", mailbox="INBOX", uidvalidity=7, uid=uid,
                         reason="fetch_failed", email_id="ab" * 16, subject="stuck", parked_at=parked_at or time.time())
    store.park(parked)
    return parked


def store_of(app):
    return app.extensions["render_signal"].store


# --- who may act --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ACTION_ROUTES)
def test_every_action_route_is_404_when_no_admin_token_is_configured(make_app, tmp_path, path):
    app = make_app(operator_env(tmp_path, ADMIN_API_TOKEN=None))
    response = app.test_client().post(path, headers=bearer(STATUS))
    assert response.status_code == 404 and response.get_json() == {"error": "not_found"}


@pytest.mark.parametrize("path", ACTION_ROUTES)
@pytest.mark.parametrize("headers", [{}, bearer(STATUS), bearer(ADMIN + "x"), {"Authorization": f"Basic {ADMIN}"}],
                         ids=["none", "status-token", "wrong-token", "basic"])
def test_every_action_route_answers_401_without_the_admin_token(make_app, tmp_path, path, headers):
    app = make_app(operator_env(tmp_path))
    response = app.test_client().post(path, headers=headers)
    assert response.status_code == 401 and response.get_json() == {"error": "unauthorized"}
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_the_admin_token_also_reads_the_status(make_app, tmp_path):
    app = make_app(operator_env(tmp_path))
    assert app.test_client().get("/api/status", headers=bearer(ADMIN)).status_code == 200
    assert app.test_client().get("/api/status", headers=bearer(STATUS)).status_code == 200
    assert app.test_client().get("/api/status", headers=bearer("nope")).status_code == 401


def test_no_token_is_ever_in_an_answer_or_the_log(make_app, tmp_path, caplog):
    app = make_app(operator_env(tmp_path))
    client = app.test_client()
    answers = [client.post("/api/replay", headers=bearer(ADMIN + "x")), client.post("/api/replay", headers=bearer()),
               client.get("/login"), client.post("/login", data={"token": ADMIN + "typo"})]
    for response in answers:
        assert ADMIN not in response.get_data(as_text=True) and STATUS not in response.get_data(as_text=True)
    assert ADMIN not in caplog.text and STATUS not in caplog.text


# --- replay one dead letter ---------------------------------------------------------------------------------------

def test_replaying_a_dead_letter_makes_it_pending_and_records_who_did_it(make_app, tmp_path):
    app = make_app(operator_env(tmp_path))
    store = store_of(app)
    item = dead_item(store)
    response = app.test_client().post(f"/api/outbox/{item.event_id}/replay", headers=bearer(),
                                      environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert response.status_code == 202 and response.get_json() == {"count": 1, "event_id": item.event_id}
    assert store.get_item(item.event_id).status == "pending"
    entry = store.actions(limit=1)[0]
    assert (entry["action"], entry["subject"], entry["token"], entry["client"], entry["result"]) == (
        "replay_dead_letter", item.event_id, "admin_token", "203.0.113.9", "replayed")
    assert entry["at"].endswith("Z")


def test_replaying_an_unknown_event_is_404_and_one_not_dead_is_409(make_app, tmp_path):
    app = make_app(operator_env(tmp_path))
    store = store_of(app)
    pending = queue_item(store)
    client = app.test_client()
    unknown = client.post("/api/outbox/msg_ffffffffffffffffffffffffffffffff/replay", headers=bearer())
    assert unknown.status_code == 404 and unknown.get_json()["error"] == "unknown_event"
    conflict = client.post(f"/api/outbox/{pending.event_id}/replay", headers=bearer())
    assert conflict.status_code == 409 and conflict.get_json()["error"] == "not_dead"
    assert [entry["result"] for entry in store.actions(limit=2)] == ["not_dead", "unknown_event"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_concurrent_replays_of_one_dead_letter_deliver_it_exactly_once(make_app, make_webhook_receiver,
                                                                       pipeline_factory, tmp_path, request, backend):
    # Given a running service whose receiver refused an email (a dead letter, made by the delivery loop itself)
    receiver = make_webhook_receiver()
    receiver.respond_with(400, b'{"error": "bad scenario"}')
    extra = {"REDIS_URL": request.getfixturevalue("redis_url")} if backend == "redis" else {}
    env = operator_env(tmp_path, receiver.url, **extra)
    pipeline = pipeline_factory(env)
    pipeline.wait_until_holding()
    item = queue_item(pipeline.store)
    pipeline.background.delivery_wakeup.set()
    pipeline.wait_until(lambda: pipeline.store.get_item(item.event_id).status == "dead", what="dead letter")
    receiver.respond_with(200, b"Accepted")
    # When eight operators (two app instances) replay it at the same moment
    apps = [make_app(env), make_app(env)]
    start = threading.Barrier(8)
    codes: list[int] = []

    def replay(app) -> None:
        client = app.test_client()
        start.wait()
        codes.append(client.post(f"/api/outbox/{item.event_id}/replay", headers=bearer()).status_code)

    threads = [threading.Thread(target=replay, args=(apps[n % 2],)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    # Then exactly one replay took it, and the receiver gets it exactly once
    assert sorted(codes) == [202] + [409] * 7
    pipeline.background.delivery_wakeup.set()
    receiver.wait_for(1, timeout=15)
    pipeline.wait_until(lambda: pipeline.store.get_item(item.event_id).status == "delivered", what="delivered")
    time.sleep(1.0)  # time for a second delivery, were there one
    assert receiver.delivered_ids() == [item.event_id]


# --- replay a parked email, replay many ---------------------------------------------------------------------------

def test_replaying_a_parked_email_asks_its_mailbox_once(make_app, tmp_path):
    app = make_app(operator_env(tmp_path))
    store = store_of(app)
    parked = park(store, uid=41)
    client = app.test_client()
    first = client.post(f"/api/parked/{parked.parked_id}/replay", headers=bearer())
    assert first.status_code == 202 and first.get_json() == {"count": 1, "parked_id": parked.parked_id}
    assert store.get_parked(parked.parked_id).replay_requested_at is not None
    again = client.post(f"/api/parked/{parked.parked_id}/replay", headers=bearer())
    assert again.status_code == 409 and again.get_json()["error"] == "replay_already_requested"
    unknown = client.post("/api/parked/default:7:999/replay", headers=bearer())
    assert unknown.status_code == 404


def test_replay_all_takes_the_dead_letters_of_one_target_since_a_time(make_app, tmp_path):
    app = make_app(operator_env(tmp_path))
    store = store_of(app)
    now = time.time()
    old = dead_item(store, "default", dead_at=now - 7200)
    recent = dead_item(store, "default", dead_at=now - 60)
    other = dead_item(store, "archive", dead_at=now - 60)
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 3600))
    client = app.test_client()
    response = client.post("/api/replay", json={"since": since, "target": "default"}, headers=bearer())
    assert response.status_code == 202 and response.get_json() == {"count": 1}
    assert [store.get_item(i.event_id).status for i in (old, recent, other)] == ["dead", "pending", "dead"]
    # Without arguments: every dead letter left
    everything = client.post("/api/replay", headers=bearer())
    assert everything.status_code == 202 and everything.get_json() == {"count": 2}


def test_replay_all_of_parked_emails_since_a_time(make_app, tmp_path):
    app = make_app(operator_env(tmp_path))
    store = store_of(app)
    now = time.time()
    park(store, uid=51, parked_at=now - 7200)
    recent = park(store, uid=52, parked_at=now - 60)
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 3600))
    response = app.test_client().post("/api/replay", json={"since": since, "parked": True}, headers=bearer())
    assert response.status_code == 202 and response.get_json() == {"count": 1}
    assert store.get_parked(recent.parked_id).replay_requested_at is not None


@pytest.mark.parametrize(("body", "status", "error"), [
    ({"target": "nope"}, 404, "unknown_target"),
    ({"since": "last tuesday"}, 400, "bad_since"),
    ({"parked": "yes"}, 400, "bad_parked"),
    ({"target": "default", "parked": True}, 400, "target_with_parked"),
    ({"everything": True}, 400, "bad_body"),
    (["since"], 400, "bad_body"),
])
def test_replay_all_refuses_what_it_cannot_do(make_app, tmp_path, body, status, error):
    app = make_app(operator_env(tmp_path))
    response = app.test_client().post("/api/replay", json=body, headers=bearer())
    assert response.status_code == status and response.get_json()["error"] == error
    assert store_of(app).actions(limit=1)[0]["result"] == error   # refused, and recorded so


# --- sample -------------------------------------------------------------------------------------------------------

def test_a_sample_is_one_signed_attempt_answered_with_the_receivers_status(make_app, make_webhook_receiver,
                                                                         tmp_path):
    receiver = make_webhook_receiver()
    receiver.respond_with(202, b"Queued")
    app = make_app(operator_env(tmp_path, receiver.url, secret=SECRET))
    response = app.test_client().post("/api/targets/default/sample", headers=bearer())
    body = response.get_json()
    assert response.status_code == 200 and body["status"] == 202 and body["outcome"] == "delivered"
    assert body["excerpt"] == "Queued" and body["event_id"].startswith("test_")
    # The receiver got exactly one valid, signed, marked test body (the receiver checks it against the schema)
    [event] = receiver.wait_for(1)
    assert event["json"]["test"] is True and event["headers"]["webhook-id"] == body["event_id"]
    Webhook(SECRET).verify(event["body"].decode(), {key: event["headers"][key] for key in
                                                    ("webhook-id", "webhook-timestamp", "webhook-signature")})
    # Not through the outbox
    assert store_of(app).get_item(body["event_id"]) is None
    assert store_of(app).outbox_stats(time.time())["pending"] == 0


def test_a_sample_reports_a_refusing_receiver_and_one_that_is_down(make_app, make_webhook_receiver, tmp_path):
    refusing = make_webhook_receiver()
    refusing.respond_with(410, b"Gone")
    down = make_webhook_receiver()
    down.go_down()
    app = make_app(operator_env(tmp_path, refusing.url, down.url))
    client = app.test_client()
    gone = client.post("/api/targets/default/sample", headers=bearer())
    assert gone.status_code == 200 and gone.get_json()["status"] == 410 and gone.get_json()["outcome"] == "permanent"
    unreachable = client.post("/api/targets/archive/sample", headers=bearer())
    assert unreachable.status_code == 502
    assert unreachable.get_json()["status"] is None and unreachable.get_json()["error"] == "connection_error"
    assert client.post("/api/targets/nope/sample", headers=bearer()).status_code == 404
    assert [entry["result"] for entry in store_of(app).actions(limit=3)] == [
        "unknown_target", "connection_error", "status 410"]


# --- pause and resume ---------------------------------------------------------------------------------------------

def test_pause_and_resume_answer_409_when_already_so_and_404_for_an_unknown_target(make_app, tmp_path):
    app = make_app(operator_env(tmp_path))
    client = app.test_client()
    paused = client.post("/api/targets/archive/pause", headers=bearer())
    assert paused.status_code == 200 and paused.get_json()["paused"] is True
    assert paused.get_json()["paused_at"].endswith("Z")
    assert client.post("/api/targets/archive/pause", headers=bearer()).status_code == 409
    assert client.post("/api/targets/nope/pause", headers=bearer()).status_code == 404
    resumed = client.post("/api/targets/archive/resume", headers=bearer())
    assert resumed.status_code == 200 and resumed.get_json() == {"target": "archive", "paused": False}
    again = client.post("/api/targets/archive/resume", headers=bearer())
    assert again.status_code == 409 and again.get_json()["error"] == "not_paused"
    assert client.post("/api/targets/nope/resume", headers=bearer()).status_code == 404


@pytest.mark.timeout(60)
def test_a_paused_target_keeps_its_items_pending_across_a_restart_until_resumed(
        make_app, make_webhook_receiver, pipeline_factory, tmp_path):
    receiver = make_webhook_receiver()
    env = operator_env(tmp_path, receiver.url)
    app = make_app(env)
    # Given the default target paused, then the service (re)started
    assert app.test_client().post("/api/targets/default/pause", headers=bearer()).status_code == 200
    pipeline = pipeline_factory(env)
    pipeline.wait_until_holding()
    item = queue_item(pipeline.store)
    pipeline.background.delivery_wakeup.set()
    time.sleep(1.5)
    # Then nothing is sent, the item stays pending, and every instance's status says paused
    assert receiver.events == [] and pipeline.store.get_item(item.event_id).status == "pending"
    assert list(store_of(make_app(env)).paused_targets()) == ["default"]
    status = make_app(env).test_client().get("/api/status", headers=bearer(STATUS)).get_json()
    default = next(entry for entry in status["targets"] if entry["id"] == "default")
    assert default["paused"] is True and default["paused_at"].endswith("Z")
    # When resumed (from another instance), it is delivered
    assert make_app(env).test_client().post("/api/targets/default/resume", headers=bearer()).status_code == 200
    pipeline.background.delivery_wakeup.set()
    receiver.wait_for(1, timeout=15)
    assert receiver.delivered_ids() == [item.event_id]


# --- try an email -------------------------------------------------------------------------------------------------

def test_trying_an_email_answers_its_dry_run_payload_and_sends_nothing(make_app, make_webhook_receiver, tmp_path):
    receiver = make_webhook_receiver()
    app = make_app(operator_env(tmp_path, receiver.url))
    raw = (CORPUS / "dropbox_scl_fi_notification.eml").read_bytes()
    response = app.test_client().post("/api/try-email?mailbox=default", data=raw, headers=bearer(),
                                      content_type="message/rfc822")
    body = response.get_json()
    assert response.status_code == 200 and body["mailbox"] == "default"
    assert body["payload"]["delivery_links"][0]["provider"] == "dropbox"
    assert body["decision"] in ("send", "skip")  # the mailbox's sender filter decides; the payload is there either way
    store = store_of(app)
    assert store.get_done(body["payload"]["microsoft_graph_email_id"]) is None
    assert store.outbox_stats(time.time())["pending"] == 0
    time.sleep(0.3)
    assert receiver.events == []


def test_trying_an_email_applies_the_mailboxs_sender_filter(make_app, tmp_path):
    app = make_app(operator_env(tmp_path))
    client = app.test_client()
    allowed = client.post("/api/try-email", data=make_email(sender="farm@example.com"), headers=bearer())
    assert allowed.get_json()["decision"] == "send"
    refused = client.post("/api/try-email", data=make_email(sender="x@elsewhere.test"), headers=bearer())
    assert refused.get_json()["decision"] == "skip" and refused.get_json()["reason"] == "sender_not_allowed"


def test_trying_an_email_refuses_an_unknown_mailbox_an_empty_body_and_one_over_25_mib(make_app, tmp_path):
    app = make_app(operator_env(tmp_path))
    client = app.test_client()
    assert client.post("/api/try-email?mailbox=nope", data=make_email(), headers=bearer()).status_code == 404
    assert client.post("/api/try-email", data=b"", headers=bearer()).status_code == 400
    huge = client.post("/api/try-email", data=b"x" * (25 * 1024 * 1024 + 1), headers=bearer())
    assert huge.status_code == 413 and huge.get_json()["error"] == "too_large"


def test_trying_an_email_takes_the_body_as_curl_sends_it_by_default(make_app, tmp_path):
    # curl --data-binary @mail.eml labels the body application/x-www-form-urlencoded
    app = make_app(operator_env(tmp_path))
    raw = make_email(sender="farm@example.com", subject="curl upload")
    response = app.test_client().post("/api/try-email", data=raw, headers=bearer(),
                                      content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200 and response.get_json()["payload"]["subject"] == "curl upload"


def test_a_browser_uploads_an_email_to_try_with_its_session_and_gets_the_payload(make_app, tmp_path):
    import io

    app = make_app(operator_env(tmp_path))
    client = app.test_client()
    login(client)
    raw = make_email(sender="farm@example.com", subject="from the console")
    response = client.post("/api/try-email?mailbox=default", content_type="multipart/form-data",
                           data={"csrf_token": csrf_of(client), "eml": (io.BytesIO(raw), "mail.eml")})
    assert response.status_code == 200 and response.get_json()["payload"]["subject"] == "from the console"
    assert store_of(app).actions(limit=1)[0]["token"] == "session"
    without = client.post("/api/try-email", content_type="multipart/form-data",
                          data={"eml": (io.BytesIO(raw), "mail.eml")})
    assert without.status_code == 403
    # (The form's bytes built here: the test client would spool a large form to a file it never closes.)
    boundary = "rs-boundary-7f3a"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"csrf_token\"\r\n\r\n{csrf_of(client)}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"eml\"; filename=\"big.eml\"\r\n"
            "Content-Type: message/rfc822\r\n\r\n").encode()
    form += b"x" * (26 * 1024 * 1024) + f"\r\n--{boundary}--\r\n".encode()
    huge = client.post("/api/try-email", data=form, content_type=f"multipart/form-data; boundary={boundary}")
    assert huge.status_code == 413


# --- one email ----------------------------------------------------------------------------------------------------

def test_one_email_is_readable_with_the_read_token_and_its_payload_only_with_the_admin_token(make_app, tmp_path):
    app = make_app(operator_env(tmp_path))
    store = store_of(app)
    item = dead_item(store)
    client = app.test_client()
    read = client.get(f"/api/emails/{item.email_id}", headers=bearer(STATUS))
    assert read.status_code == 200
    body = read.get_json()
    assert body["email_id"] == item.email_id and [entry["event_id"] for entry in body["items"]] == [item.event_id]
    assert body["items"][0]["status"] == "dead" and body["items"][0]["response_excerpt"] == "bad scenario"
    assert "payload" not in body["items"][0]
    admin = client.get(f"/api/emails/{item.email_id}", headers=bearer(ADMIN)).get_json()
    assert admin["items"][0]["payload"]["event_id"] == item.event_id
    assert client.get(f"/api/emails/{item.email_id}").status_code == 401
    assert client.get("/api/emails/" + "0" * 32, headers=bearer(STATUS)).status_code == 404


def test_an_emails_report_says_whether_its_done_flag_still_waits_for_the_server(make_app, tmp_path):
    # Given a queued email whose done flag the poller has not applied yet
    app = make_app(operator_env(tmp_path))
    store = store_of(app)
    item = queue_item(store)
    client = app.test_client()
    store.queue_flag(item.mailbox, item.uidvalidity, item.uid, item.message_id)
    # Then the report says pending, and applied once the poller cleared the request
    assert client.get(f"/api/emails/{item.email_id}", headers=bearer(STATUS)).get_json()["imap_flag"] == "pending"
    [request] = store.pending_flags(item.mailbox, 10)
    store.clear_flag(request)
    assert client.get(f"/api/emails/{item.email_id}", headers=bearer(STATUS)).get_json()["imap_flag"] == "applied"


# --- the browser: login, session, CSRF ----------------------------------------------------------------------------

def login(client, token: str = ADMIN, next_path: str = "/"):
    return client.post("/login", data={"token": token, "next": next_path})


def csrf_of(client) -> str:
    from routes import session_keys

    cookie = client.get_cookie(SESSION_COOKIE)
    with client.application.test_request_context():
        session = session_keys().read(cookie.value, time.time())
    assert session is not None
    return session.csrf


def test_logging_in_sets_a_strict_secure_http_only_session_cookie(make_app, tmp_path):
    app = make_app(operator_env(tmp_path))
    client = app.test_client()
    assert client.get("/login").status_code == 200
    response = login(client, next_path="/api/status")
    assert response.status_code == 303 and response.headers["Location"] == "/api/status"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and ADMIN not in cookie
    for attribute in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
        assert attribute in cookie


def test_a_session_form_post_with_its_csrf_token_acts_and_answers_303_to_a_local_next(make_app, tmp_path):
    app = make_app(operator_env(tmp_path))
    store = store_of(app)
    item = dead_item(store)
    client = app.test_client()
    login(client)
    response = client.post(f"/api/outbox/{item.event_id}/replay",
                           data={"csrf_token": csrf_of(client), "next": "/emails?page=2"})
    assert response.status_code == 303
    assert response.headers["Location"] == "/emails?page=2&notice=replay_dead_letter:replayed"
    assert store.get_item(item.event_id).status == "pending"
    assert store.actions(limit=1)[0]["token"] == "session"


@pytest.mark.parametrize("next_path", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "\\\\x",
                                       "/ok\r\nSet-Cookie: x=1", "javascript:alert(1)"])
def test_a_form_post_never_redirects_off_the_site(make_app, tmp_path, next_path):
    app = make_app(operator_env(tmp_path))
    client = app.test_client()
    login(client)
    response = client.post("/api/targets/archive/pause", data={"csrf_token": csrf_of(client), "next": next_path})
    assert response.status_code == 303 and response.headers["Location"] == "/?notice=pause:paused"


def test_a_session_post_without_its_csrf_token_is_refused(make_app, tmp_path):
    app = make_app(operator_env(tmp_path))
    client = app.test_client()
    login(client)
    for data in ({}, {"csrf_token": "forged"}):
        response = client.post("/api/targets/archive/pause", data=data)
        assert response.status_code == 403 and response.get_json() == {"error": "csrf_token_invalid"}
    assert store_of(app).paused_targets() == {}
    # A cross-site post is refused even with the token (the browser says where it comes from)
    response = client.post("/api/targets/archive/pause", data={"csrf_token": csrf_of(client)},
                           headers={"Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 403


def test_a_read_session_reads_but_cannot_act(make_app, tmp_path):
    app = make_app(operator_env(tmp_path))
    store = store_of(app)
    item = dead_item(store)
    client = app.test_client()
    assert login(client, STATUS).status_code == 303
    response = client.post(f"/api/outbox/{item.event_id}/replay", data={"csrf_token": csrf_of(client)})
    assert response.status_code == 401
    read = client.get(f"/api/emails/{item.email_id}")
    assert read.status_code == 200 and "payload" not in read.get_json()["items"][0]


def test_a_session_is_accepted_by_every_instance_and_ends_when_the_admin_token_is_rotated(make_app, tmp_path):
    env = operator_env(tmp_path)
    first, second = make_app(env), make_app(env)
    client = first.test_client()
    login(client)
    cookie, csrf = client.get_cookie(SESSION_COOKIE).value, csrf_of(client)
    other = second.test_client()
    other.set_cookie(SESSION_COOKIE, cookie)
    assert other.post("/api/targets/archive/pause", data={"csrf_token": csrf}).status_code == 303
    rotated = make_app({**env, "ADMIN_API_TOKEN": ADMIN + "-rotated"}).test_client()
    rotated.set_cookie(SESSION_COOKIE, cookie)
    assert rotated.post("/api/targets/archive/resume", data={"csrf_token": csrf}).status_code == 401
    # SESSION_SECRET keys the cookie, and a rotated token still ends the sessions it opened
    secret = "s3ss10n-secret-of-at-least-32-characters"
    keyed = make_app({**env, "SESSION_SECRET": secret}).test_client()
    login(keyed)
    keyed_cookie = keyed.get_cookie(SESSION_COOKIE).value
    assert keyed_cookie != cookie
    same = make_app({**env, "SESSION_SECRET": secret}).test_client()
    same.set_cookie(SESSION_COOKIE, keyed_cookie)
    assert same.get("/api/emails/" + "0" * 32).status_code == 404  # signed in: the email is simply unknown
    rotated = make_app({**env, "SESSION_SECRET": secret, "ADMIN_API_TOKEN": ADMIN + "-rotated"}).test_client()
    rotated.set_cookie(SESSION_COOKIE, keyed_cookie)
    assert rotated.get("/api/emails/" + "0" * 32).status_code == 401


def test_a_tampered_or_foreign_cookie_is_no_session(make_app, tmp_path):
    app = make_app(operator_env(tmp_path))
    client = app.test_client()
    login(client, STATUS)
    value = client.get_cookie(SESSION_COOKIE).value
    version, body, mac = value.split(".")
    import base64
    import json as json_module

    claims = json_module.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["r"] = "admin"
    forged_body = base64.urlsafe_b64encode(json_module.dumps(claims).encode()).decode().rstrip("=")
    for forged in (f"{version}.{forged_body}.{mac}", "v1.e30.AAAA", "garbage", value + "x"):
        client.set_cookie(SESSION_COOKIE, forged)
        assert client.get("/api/emails/" + "0" * 32).status_code == 401, forged


def test_logout_ends_the_session_in_this_browser(make_app, tmp_path):
    app = make_app(operator_env(tmp_path))
    client = app.test_client()
    login(client)
    assert client.post("/logout", data={}).status_code == 403  # a logout needs the CSRF token too
    response = client.post("/logout", data={"csrf_token": csrf_of(client)})
    assert response.status_code == 303 and response.headers["Location"] == "/login"
    assert client.get_cookie(SESSION_COOKIE) is None


@pytest.mark.redis
def test_failed_logins_are_limited_cluster_wide_even_for_the_right_token_then(make_app, tmp_path, redis_url):
    env = operator_env(tmp_path, REDIS_URL=redis_url)
    first, second = make_app(env).test_client(), make_app(env).test_client()
    for n in range(LOGIN_FAILURES_PER_CLIENT - 1):
        response = login(first if n % 2 else second, "wrong-token")
        assert response.status_code == 401 and "Wrong token" in response.get_data(as_text=True)
    # The limit's last failure (on either instance) blocks the client everywhere, the right token included
    assert login(first, "wrong-token").status_code == 429
    blocked = login(second, ADMIN)
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0
    assert blocked.headers.get("Set-Cookie") is None
    # Another client is not blocked
    other = make_app(env).test_client()
    response = other.post("/login", data={"token": ADMIN}, environ_base={"REMOTE_ADDR": "198.51.100.7"})
    assert response.status_code == 303
