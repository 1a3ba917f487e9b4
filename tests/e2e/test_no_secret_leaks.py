"""A full run with every secret set to a recognisable value: none reaches a log line or an HTTP answer.

Real stack: Dovecot (the IMAP password), a redis-server with ``--requirepass`` (the password inside REDIS_URL),
a loopback stand-in for the R2 Worker (R2_FETCH_TOKEN), the webhook receiver (WEBHOOK_URL path, WEBHOOK_SECRET,
one 503 first so the retry path logs too), STATUS_API_TOKEN (also sent wrong, to provoke SECURITY lines), and
LOG_LEVEL=debug so every level is scanned. Correspondents' addresses must appear masked only. The operator
surface of issue 20 too: ADMIN_API_TOKEN (every action route called with it, and wrong), SESSION_SECRET (a browser
login and a session's pages), and the alerts' OPS_WEBHOOK_URL path and OPS_WEBHOOK_SECRET.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time

import pytest
import requests

from harness.ports import wait_until
from harness.redis_server import RedisServer
from tests.e2e.test_operator_cluster import dropbox_email

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.imap]

REDIS_PASSWORD = "redis-pw-LEAKCANARY-5521"
R2_TOKEN = "r2-token-LEAKCANARY-7734"
STATUS_TOKEN = "status-token-LEAKCANARY-9902"
ADMIN_TOKEN = "admin-token-LEAKCANARY-6620"
SESSION_SECRET = "session-secret-LEAKCANARY-4417-0123456789abcdef"
OPS_SECRET_RAW = b"ops-secret-LEAKCANARY-2290"
OPS_SECRET = "whsec_" + base64.b64encode(OPS_SECRET_RAW).decode()
WEBHOOK_SECRET_RAW = b"webhook-secret-LEAKCANARY-3318"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(WEBHOOK_SECRET_RAW).decode()
CORRESPONDENT = "john.doe@client.example"
SUBJECT_ADDRESS = "mary.major@agency.example"


class PasswordRedis(RedisServer):
    """The fixture's server with ``--requirepass`` (RedisServer takes no extra arguments, so start is redone)."""

    def start(self) -> "PasswordRedis":
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--dir", self.dir, "--logfile", self.log_path, "--requirepass", REDIS_PASSWORD]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(self._pong, 10, "redis-server (requirepass)", self.proc, self.log_path)
        return self

    def _pong(self) -> bool:
        import socket

        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
            sock.sendall(f"AUTH {REDIS_PASSWORD}\r\nPING\r\n".encode())
            time.sleep(0.02)
            return b"+PONG" in sock.recv(64)

    @property
    def url(self) -> str:
        return f"redis://:{REDIS_PASSWORD}@127.0.0.1:{self.port}/0"


@pytest.fixture
def password_redis(redis_binary):
    server = PasswordRedis(redis_binary).start()
    try:
        yield server
    finally:
        server.stop()


def secrets_of(env: dict[str, str], receiver_url: str) -> dict[str, str]:
    path = re.sub(r"^https?://[^/]+", "", receiver_url)
    return {
        "EMAIL_PASSWORD": env["EMAIL_PASSWORD"],
        "redis password": REDIS_PASSWORD,
        "R2_FETCH_TOKEN": R2_TOKEN,
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "WEBHOOK_SECRET (base64 part)": WEBHOOK_SECRET[len("whsec_"):],
        "WEBHOOK_SECRET (raw)": WEBHOOK_SECRET_RAW.decode(),
        "WEBHOOK_URL path": path,
        "WEBHOOK_URL path token": path.rstrip("/").rsplit("/", 1)[-1],
        "STATUS_API_TOKEN": STATUS_TOKEN,
        "ADMIN_API_TOKEN": ADMIN_TOKEN,
        "SESSION_SECRET": SESSION_SECRET,
        "OPS_WEBHOOK_SECRET": OPS_SECRET,
        "OPS_WEBHOOK_SECRET (base64 part)": OPS_SECRET[len("whsec_"):],
        "OPS_WEBHOOK_SECRET (raw)": OPS_SECRET_RAW.decode(),
        **({"OPS_WEBHOOK_URL path": ops_path(env)} if env.get("OPS_WEBHOOK_URL") else {}),
        "correspondent address": CORRESPONDENT,
        "address in a subject": SUBJECT_ADDRESS,
    }


def ops_path(env: dict[str, str]) -> str:
    return re.sub(r"^https?://[^/]+", "", env["OPS_WEBHOOK_URL"])


def _answer(what: str, response) -> tuple[str, str]:
    head = "\n".join(f"{name}: {value}" for name, value in response.headers.items())
    return f"{what} {response.status_code}", head + "\n\n" + response.text


def operator_answers_of(service, email_id: str) -> list[tuple[str, str]]:
    """Every action route with the admin token (and wrong), and a browser session's login and pages."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    calls = [
        ("POST", "/api/targets/default/sample", admin, None), ("POST", "/api/targets/default/pause", admin, None),
        ("POST", "/api/targets/default/resume", admin, None), ("POST", "/api/replay", admin, b"{}"),
        ("POST", "/api/outbox/msg_unknown/replay", admin, None), ("POST", "/api/parked/a:1:2/replay", admin, None),
        ("POST", "/api/try-email", {**admin, "Content-Type": "message/rfc822"}, dropbox_email("x@y.example")),
        ("GET", f"/api/emails/{email_id}", admin, None),
        ("GET", f"/api/emails/{email_id}", {"X-API-Key": STATUS_TOKEN}, None),
        ("POST", "/api/targets/default/pause", {"Authorization": f"Bearer {ADMIN_TOKEN}-wrong"}, None),
        ("POST", "/api/replay", {"Authorization": f"Bearer {STATUS_TOKEN}"}, b"{}"),
    ]
    answers = []
    for method, path, headers, body in calls:
        what = f"{method} {path}"
        headers = {"Content-Type": "application/json", **headers} if body == b"{}" else headers
        answer = _answer(what, requests.request(method, service.url + path, headers=headers, data=body, timeout=20))
        answers.append((answer[0] + (" admin" if what.startswith("GET") and headers is admin else ""), answer[1]))
    browser = requests.Session()
    answers.append(_answer("POST /login (wrong)", browser.post(service.url + "/login", data={"token": "nope"},
                                                              allow_redirects=False, timeout=10)))
    answers.append(_answer("POST /login", browser.post(service.url + "/login", data={"token": ADMIN_TOKEN},
                                                       allow_redirects=False, timeout=10)))
    for cookie in browser.cookies:   # Secure: requests would keep it for https only (a browser on loopback sends it)
        cookie.secure = False
    for path in ("/", f"/api/emails/{email_id}"):
        answers.append(_answer(f"session GET {path}", browser.get(service.url + path, timeout=10)))
    return answers


def answers_of(service) -> list[tuple[str, str]]:
    """Every operator answer, authorised and not, as (what, headers + body)."""
    requests_to_make = [
        ("/health", {}), ("/api/status", {"Authorization": f"Bearer {STATUS_TOKEN}"}),
        ("/api/status", {"X-API-Key": STATUS_TOKEN}), ("/api/status", {}),
        ("/api/status", {"Authorization": f"Bearer {STATUS_TOKEN}-wrong"}),
        ("/metrics", {"Authorization": f"Bearer {STATUS_TOKEN}"}), ("/metrics", {"X-API-Key": "wrong"}),
        ("/metrics", {"Accept": "application/openmetrics-text;version=1.0.0", "X-API-Key": STATUS_TOKEN}),
        ("/", {"Authorization": "Basic " + base64.b64encode(f"ops:{STATUS_TOKEN}".encode()).decode()}),
        ("/", {}), ("/does-not-exist", {}),
    ]
    answers = []
    for path, headers in requests_to_make:
        # Not following redirects: "/" without credentials answers 303 to the login form, an answer of its own.
        response = service.get(path, headers=headers, allow_redirects=False)
        head = "\n".join(f"{name}: {value}" for name, value in response.headers.items())
        answers.append((f"{path} {response.status_code}", head + "\n\n" + response.text))
    return answers


@pytest.mark.timeout(180)
def test_no_secret_and_no_unmasked_correspondent_reaches_any_log_line_or_http_answer(
        service_factory, password_redis, imap_account, make_webhook_receiver):
    # Given a receiver that fails once first, an alert receiver, and a Worker stand-in that copies to "R2"
    receiver = make_webhook_receiver()
    ops_receiver = make_webhook_receiver(contract=False)
    receiver.fail_next(1, status=503)
    worker = make_webhook_receiver(contract=False)  # plays the R2 Worker: it receives copy requests
    worker.respond_with(200, json.dumps({"success": True, "r2_url": "https://r2.render-signal.test/renders.zip",
                                         "object_key": "dropbox/renders.zip", "original_filename": "renders.zip"}),
                        {"Content-Type": "application/json"})
    env = {**imap_account.settings_env(), "REDIS_URL": password_redis.url, "WEBHOOK_URL": receiver.url,
           "WEBHOOK_ALLOW_INSECURE": "true", "WEBHOOK_SECRET": WEBHOOK_SECRET, "WEBHOOK_RETRY_SCHEDULE": "0.5",
           "R2_FETCH_ENABLED": "true", "R2_FETCH_ENDPOINT": worker.url, "R2_FETCH_TOKEN": R2_TOKEN,
           "R2_ALLOW_INSECURE": "true",
           "R2_BUCKET_NAME": "renders", "STATUS_API_TOKEN": STATUS_TOKEN, "LOG_LEVEL": "debug",
           "REDIS_LOCK_TTL_SECONDS": "3", "EMAIL_POLLING_INTERVAL_SECONDS": "1", "IMAP_TIMEOUT_SECONDS": "2",
           "HEARTBEAT_INTERVAL_SECONDS": "1", "ADMIN_API_TOKEN": ADMIN_TOKEN, "SESSION_SECRET": SESSION_SECRET,
           "OPS_WEBHOOK_URL": ops_receiver.url, "OPS_WEBHOOK_SECRET": OPS_SECRET, "OPS_WEBHOOK_ALLOW_INSECURE": "true"}
    secrets = secrets_of(env, receiver.url)
    service = service_factory(env, workers=2)
    # When an email from a correspondent (with another address in its subject) goes through the whole pipeline
    imap_account.server.append(imap_account.user, dropbox_email(
        imap_account.user, sender=f"John Doe <{CORRESPONDENT}>", subject=f"Renders, cc {SUBJECT_ADDRESS}"))
    delivered = receiver.wait_for(1, timeout=60)
    # (the secrets were really in use: the Worker got the token, the receiver a signature and the R2 URL)
    assert any(event["headers"].get("x-r2-fetch-token") == R2_TOKEN for event in worker.events)
    assert delivered[0]["headers"].get("webhook-signature", "").startswith("v1,")
    assert "https://r2.render-signal.test/renders.zip" in delivered[0]["body"].decode()
    assert len(receiver.events) >= 2  # the 503, then the delivery
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        doc = service.get("/api/status", headers={"X-API-Key": STATUS_TOKEN}).json()
        if (doc.get("counters") or {}).get("webhooks_delivered") == 1 and doc["poller"]["last_success_at"]:
            break
        time.sleep(0.2)
    time.sleep(1.5)  # a heartbeat line with the changed counters
    answers = answers_of(service) + operator_answers_of(service, email_id(delivered))
    service.terminate(timeout=60)
    log = service.log_text()
    # Then no secret is in any log line or any answer, and the correspondents appear masked only
    # (the admin's payload views, try-email's dry run and an email's report, hold the webhook body as it is sent:
    # the sender's address is in it by design; no secret may be, and every other answer masks the addresses)
    admin_payloads = {"POST /api/try-email 200", f"GET /api/emails/{email_id(delivered)} 200 admin",
                      f"session GET /api/emails/{email_id(delivered)} 200"}   # the session is the admin's
    addresses = {"correspondent address", "address in a subject"}
    leaks = [(where, name) for where, text in [("log", log), *answers]
             for name, secret in secrets.items() if secret in text
             and not (where in admin_payloads and name in addresses)]
    assert leaks == [], leaks
    # (the scan covered the paths where secrets live: the R2 call, the failed and the good attempt, rejections)
    for expected in ("R2_TRANSFER: success", "WEBHOOK: retry", "WEBHOOK: delivered", "SECURITY: rejected"):
        assert expected in log, expected
    page = dict(answers)["/ 200"]
    assert "j***@client.example" in page and "m***@agency.example" in page
    # (the operator surface answered for real: the sample reached the receiver, the session signed in and read)
    assert any(event["json"].get("test") is True for event in receiver.events if event.get("json"))
    assert "POST /login 303" in dict(answers), [what for what, _ in answers][-6:]
    assert f"session GET /api/emails/{email_id(delivered)} 200" in dict(answers), [what for what, _ in answers][-6:]
    print(f"scanned {len(log.splitlines())} log lines and {len(answers)} answers for {len(secrets)} values")


def email_id(delivered: list[dict]) -> str:
    return delivered[0]["json"]["microsoft_graph_email_id"]


def test_the_leak_scan_finds_a_planted_secret():
    # The scan itself can fail: a value planted in a text is found.
    env = {"EMAIL_PASSWORD": "pw-planted"}
    secrets = secrets_of(env, "http://127.0.0.1:1/hook/planted-token")
    text = "2026-11-28T18:30:00.000Z ERROR [1] x: POST /hook/planted-token failed"
    found = [name for name, secret in secrets.items() if secret in text]
    assert found == ["WEBHOOK_URL path", "WEBHOOK_URL path token"]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # requests must talk to 127.0.0.1 directly even when the environment has a proxy configured.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
