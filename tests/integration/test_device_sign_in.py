"""The device-code sign-in of a ``refresh_token`` mailbox from the browser and the operator API (issue 20):
``POST``/``GET /api/mailboxes/<id>/sign-in`` and the page ``/console/mailboxes/<id>/sign-in``, in-process (Flask
test client) over the real state store (a SQLite file, and a real redis-server where the rule is cluster-wide),
against the fake identity provider over real https. Start, pending, slow_down, granted (the token stored, and the
waiting mailbox signs in with it at a real Dovecot), denied, expired, two app instances continuing one sign-in
(one token request per interval between them), and no device code or token in any answer, page or log.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from background.sign_in import PUBLIC_NAMESPACE, SECRET_NAMESPACE
from harness.identity import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, GRANT_DEVICE_CODE
from harness.mail import make_email
from harness.pipeline import service_env
from routes.access import SESSION_COOKIE
from services.oauth.device_flow import SLOW_DOWN_STEP_SECONDS
from services.oauth.stored_tokens import StoredRefreshTokens, TokenCipher

pytestmark = pytest.mark.timeout(60)

ADMIN = "admin-token-Dc20-do-not-print"
STATUS = "status-token-Dc20-do-not-print"
USER = "ops@example.test"
PATH = "/api/mailboxes/default/sign-in"
PAGE = "/console/mailboxes/default/sign-in"


def sign_in_env(identity, tmp_path: Path, **extra: Any) -> dict[str, str]:
    """One delegated mailbox (``default``, the environment form) nobody can reach, signing in at ``identity``."""
    env = {"STATE_DIR": str(tmp_path / "state"), "ADMIN_API_TOKEN": ADMIN, "STATUS_API_TOKEN": STATUS,
           "STATE_DIR_PERSISTENT": "true", "IMAP_SERVER": "127.0.0.1", "EMAIL_ADDRESS": USER,
           "IMAP_AUTH_METHOD": "oauth2", "OAUTH_PROVIDER": "refresh_token", "OAUTH_TOKEN_URL": identity.token_url,
           "OAUTH_DEVICE_AUTHORIZATION_URL": identity.device_authorization_url, "OAUTH_CLIENT_ID": DEFAULT_CLIENT_ID,
           "OAUTH_CLIENT_SECRET": DEFAULT_CLIENT_SECRET, "OAUTH_CA_FILE": identity.ca_file,
           "WEBHOOK_URL": "http://127.0.0.1:9/unused", "WEBHOOK_ALLOW_INSECURE": "true"}
    env.update({key: str(value) for key, value in extra.items()})
    return {key: value for key, value in env.items() if value != "None"}


def password_env(identity, tmp_path: Path) -> dict[str, str]:
    """The same mailbox signing in with a password (no OAUTH_* at all)."""
    env = sign_in_env(identity, tmp_path, IMAP_AUTH_METHOD="password", EMAIL_PASSWORD="pw-Kx9")
    return {key: value for key, value in env.items() if not key.startswith("OAUTH_")}


def bearer(token: str = ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def store_of(app):
    return app.extensions["render_signal"].store


def device_polls(identity) -> list:
    return [entry for entry in identity.requests if entry.grant_type == GRANT_DEVICE_CODE]


def the_device_code(identity) -> str:
    (flow,) = identity.device_flows
    return flow.device_code


def stored_token(app, mailbox_id: str = "default") -> str | None:
    key = app.extensions["render_signal"].settings.state_encryption_key
    return StoredRefreshTokens(store_of(app), mailbox_id, TokenCipher(key)).load()


def start(client) -> dict:
    response = client.post(PATH, headers=bearer())
    assert response.status_code == 202, response.get_data(as_text=True)
    return response.get_json()


def wait_for_next_poll(answer: dict) -> None:
    time.sleep(float(answer["interval"]) + 0.15)


def poll_until(client, state: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = client.get(PATH, headers=bearer()).get_json()
        if answer["state"] == state:
            return answer
        time.sleep(0.2)
    raise AssertionError(f"the sign-in never became {state}: {answer}")


@pytest.fixture
def identity(identity_provider_tls):
    return identity_provider_tls


# --- starting -----------------------------------------------------------------------------------------------------

def test_starting_a_sign_in_answers_the_code_and_link_and_keeps_the_device_code_in_the_store_only(
        make_app, tmp_path, identity):
    app = make_app(sign_in_env(identity, tmp_path))
    response = app.test_client().post(PATH, headers=bearer())
    assert response.status_code == 202
    answer = response.get_json()
    (flow,) = identity.device_flows
    assert answer["state"] == "pending" and answer["user_code"] == flow.user_code
    assert answer["verification_uri"] == f"{identity.base_url}/devicelogin"
    assert answer["interval"] == identity.device_interval and answer["expires_at"].endswith("Z")
    assert flow.device_code not in response.get_data(as_text=True)
    # the device code is in its own record (and nowhere in the public one), the start is in the history
    store = store_of(app)
    public, secret = store.get_record(PUBLIC_NAMESPACE, "default"), store.get_record(SECRET_NAMESPACE, "default")
    assert flow.device_code not in repr(public)
    assert secret is not None and secret["device_code"] == f"plain:{flow.device_code}"
    (entry,) = store.actions()
    assert (entry["action"], entry["subject"], entry["result"], entry["token"]) == (
        "sign_in", "default", "started", "admin_token")


def test_the_device_code_is_sealed_in_the_store_with_the_state_encryption_key(make_app, tmp_path, identity):
    from cryptography.fernet import Fernet

    app = make_app(sign_in_env(identity, tmp_path, STATE_ENCRYPTION_KEY=Fernet.generate_key().decode()))
    start(app.test_client())
    secret = store_of(app).get_record(SECRET_NAMESPACE, "default")
    assert secret["device_code"].startswith("fernet:") and the_device_code(identity) not in repr(secret)


def test_a_provider_that_refuses_to_start_answers_502_with_its_error(make_app, tmp_path, identity):
    app = make_app(sign_in_env(identity, tmp_path, OAUTH_CLIENT_ID="unknown-app"))
    response = app.test_client().post(PATH, headers=bearer())
    assert response.status_code == 502 and response.get_json()["error"] == "provider_unauthorized_client"
    assert store_of(app).get_record(PUBLIC_NAMESPACE, "default") is None


# --- who may, and which mailbox -----------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["POST", "GET"])
def test_the_sign_in_routes_are_404_without_an_admin_token(make_app, tmp_path, identity, method):
    app = make_app(sign_in_env(identity, tmp_path, ADMIN_API_TOKEN=None))
    response = app.test_client().open(PATH, method=method, headers=bearer(STATUS))
    assert response.status_code == 404
    assert app.test_client().get(PAGE).status_code == 404


@pytest.mark.parametrize("method", ["POST", "GET"])
@pytest.mark.parametrize("headers", [{}, bearer(STATUS), bearer(ADMIN + "x")], ids=["none", "status", "wrong"])
def test_the_sign_in_routes_answer_401_without_the_admin_token(make_app, tmp_path, identity, method, headers):
    app = make_app(sign_in_env(identity, tmp_path))
    response = app.test_client().open(PATH, method=method, headers=headers)
    assert response.status_code == 401 and response.get_json() == {"error": "unauthorized"}
    assert identity.device_flows == []


def test_an_unknown_mailbox_is_404_and_a_password_mailbox_409(make_app, tmp_path, identity):
    app = make_app(sign_in_env(identity, tmp_path))
    client = app.test_client()
    assert client.post("/api/mailboxes/nope/sign-in", headers=bearer()).status_code == 404
    assert client.get("/api/mailboxes/nope/sign-in", headers=bearer()).status_code == 404
    password_app = make_app(password_env(identity, tmp_path))
    response = password_app.test_client().post(PATH, headers=bearer())
    assert response.status_code == 409 and response.get_json()["error"] == "not_refresh_token"
    assert identity.device_flows == []


def test_reading_a_sign_in_nobody_started_is_404(make_app, tmp_path, identity):
    app = make_app(sign_in_env(identity, tmp_path))
    response = app.test_client().get(PATH, headers=bearer())
    assert response.status_code == 404 and response.get_json()["error"] == "no_sign_in"


# --- continuing ---------------------------------------------------------------------------------------------------

def test_a_pending_sign_in_asks_the_provider_once_per_interval_and_never_sleeps(make_app, tmp_path, identity):
    app = make_app(sign_in_env(identity, tmp_path))
    client = app.test_client()
    answer = start(client)
    # Before the interval has passed: no token request at all
    assert client.get(PATH, headers=bearer()).get_json()["state"] == "pending"
    assert device_polls(identity) == []
    wait_for_next_poll(answer)
    began = time.monotonic()
    assert client.get(PATH, headers=bearer()).get_json()["state"] == "pending"
    assert client.get(PATH, headers=bearer()).get_json()["state"] == "pending"
    assert time.monotonic() - began < answer["interval"]  # answered at once, no waiting in a request
    (poll,) = device_polls(identity)
    assert poll.error == "authorization_pending"


def test_slow_down_makes_the_interval_five_seconds_longer_for_every_worker(make_app, tmp_path, identity):
    app = make_app(sign_in_env(identity, tmp_path))
    client = app.test_client()
    answer = start(client)
    identity.fail_next(1, 400, error="slow_down", description="slow down")
    wait_for_next_poll(answer)
    slower = client.get(PATH, headers=bearer()).get_json()
    assert slower["state"] == "pending" and slower["interval"] == answer["interval"] + SLOW_DOWN_STEP_SECONDS
    wait_for_next_poll(answer)  # the old interval has passed again, the new one has not
    assert client.get(PATH, headers=bearer()).get_json()["state"] == "pending"
    assert len(device_polls(identity)) == 1


def test_an_approved_sign_in_stores_the_refresh_token_and_records_it(make_app, tmp_path, identity):
    app = make_app(sign_in_env(identity, tmp_path))
    client = app.test_client()
    answer = start(client)
    identity.approve(answer["user_code"], USER)
    wait_for_next_poll(answer)
    response = client.get(PATH, headers=bearer())
    done = response.get_json()
    assert done["state"] == "done" and done["finished_at"] is not None
    token = stored_token(app)
    assert token is not None and identity.refresh_token_user(token) == USER
    assert token not in response.get_data(as_text=True)
    assert [entry["result"] for entry in store_of(app).actions()] == ["done", "started"]
    # the device code is let go of, and reading the outcome again asks nothing more
    assert "device_code" not in (store_of(app).get_record(SECRET_NAMESPACE, "default") or {})
    time.sleep(float(answer["interval"]))
    assert client.get(PATH, headers=bearer()).get_json()["state"] == "done"
    assert len(device_polls(identity)) == 1


def test_a_denied_sign_in_stores_nothing(make_app, tmp_path, identity):
    app = make_app(sign_in_env(identity, tmp_path))
    client = app.test_client()
    answer = start(client)
    identity.deny(answer["user_code"])
    wait_for_next_poll(answer)
    denied = client.get(PATH, headers=bearer()).get_json()
    assert (denied["state"], denied["error"]) == ("denied", "access_denied")
    assert stored_token(app) is None
    assert store_of(app).actions()[0]["result"] == "denied"


def test_a_code_that_expires_before_approval_ends_expired_without_asking(make_app, tmp_path, make_identity_provider):
    identity = make_identity_provider(tls=True, device_expires_in=2, device_interval=1)
    app = make_app(sign_in_env(identity, tmp_path))
    client = app.test_client()
    start(client)
    time.sleep(2.2)
    expired = client.get(PATH, headers=bearer()).get_json()
    assert expired["state"] == "expired" and stored_token(app) is None
    assert store_of(app).get_record(SECRET_NAMESPACE, "default") is None  # gone with the code's TTL
    assert device_polls(identity) == []


def test_the_provider_answering_expired_token_ends_the_sign_in_expired(make_app, tmp_path, identity):
    app = make_app(sign_in_env(identity, tmp_path))
    client = app.test_client()
    answer = start(client)
    identity.fail_next(1, 400, error="expired_token", description="AADSTS70019: Verification code expired.")
    wait_for_next_poll(answer)
    assert client.get(PATH, headers=bearer()).get_json()["state"] == "expired"


def test_a_token_endpoint_outage_keeps_the_sign_in_pending(make_app, tmp_path, identity):
    app = make_app(sign_in_env(identity, tmp_path))
    client = app.test_client()
    answer = start(client)
    identity.fail_next(1, 503)
    wait_for_next_poll(answer)
    assert client.get(PATH, headers=bearer()).get_json()["state"] == "pending"
    identity.approve(answer["user_code"], USER)
    wait_for_next_poll(answer)
    assert client.get(PATH, headers=bearer()).get_json()["state"] == "done"


def test_a_new_sign_in_replaces_the_one_under_way(make_app, tmp_path, identity):
    app = make_app(sign_in_env(identity, tmp_path))
    client = app.test_client()
    first, second = start(client), start(client)
    assert first["user_code"] != second["user_code"]
    assert client.get(PATH, headers=bearer()).get_json()["user_code"] == second["user_code"]
    identity.approve(second["user_code"], USER)
    wait_for_next_poll(second)
    assert client.get(PATH, headers=bearer()).get_json()["state"] == "done"


# --- any worker, any container ------------------------------------------------------------------------------------

def test_two_app_instances_continue_the_same_sign_in_and_ask_once_per_interval_between_them(
        make_app, tmp_path, identity, state_backend):
    # Given two instances (two containers) on one state store; the sign-in started on the first
    extra = {key.upper(): value for key, value in state_backend.items()}
    first = make_app(sign_in_env(identity, tmp_path, **extra))
    second = make_app(sign_in_env(identity, tmp_path, **extra))
    answer = start(first.test_client())
    wait_for_next_poll(answer)
    # When both are asked at the same moment, eight times each
    barrier = threading.Barrier(16)
    states: list[str] = []

    def read(app) -> None:
        client = app.test_client()
        barrier.wait()
        states.append(client.get(PATH, headers=bearer()).get_json()["state"])

    threads = [threading.Thread(target=read, args=(app,)) for app in (first, second) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    # Then the provider was asked exactly once, and every answer says pending
    assert states == ["pending"] * 16
    assert len(device_polls(identity)) == 1
    # and the second instance finishes what the first one started; the first sees it done
    identity.approve(answer["user_code"], USER)
    wait_for_next_poll(answer)
    assert second.test_client().get(PATH, headers=bearer()).get_json()["state"] == "done"
    assert first.test_client().get(PATH, headers=bearer()).get_json()["state"] == "done"
    assert identity.refresh_token_user(stored_token(first) or "") == USER


# --- the page -----------------------------------------------------------------------------------------------------

def login(client, token: str = ADMIN) -> None:
    response = client.post("/login", data={"token": token, "next": PAGE})
    assert response.status_code == 303 and response.headers["Location"] == PAGE


def csrf_field(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def test_the_page_shows_the_code_and_link_refreshes_itself_while_pending_and_says_when_done(
        make_app, tmp_path, identity):
    app = make_app(sign_in_env(identity, tmp_path))
    client = app.test_client()
    # Without a session: to the login form, and back here after it
    response = client.get(PAGE)
    assert response.status_code == 303 and response.headers["Location"].startswith("/login?next=")
    login(client)
    empty = client.get(PAGE)
    assert empty.status_code == 200 and 'id="start-sign-in"' in empty.get_data(as_text=True)
    assert 'http-equiv="refresh"' not in empty.get_data(as_text=True)
    # When the operator presses the button (a form post to the API path with the session's CSRF token)
    posted = client.post(PATH, data={"csrf_token": csrf_field(empty.get_data(as_text=True)), "next": PAGE})
    assert posted.status_code == 303 and posted.headers["Location"].startswith(PAGE + "?notice=sign_in")
    # Then the page shows the code and the link, and reloads itself (no script: the CSP allows none)
    pending = client.get(PAGE)
    text = pending.get_data(as_text=True)
    (flow,) = identity.device_flows
    assert f'id="user-code" class="code">{flow.user_code}<' in text
    assert f'href="{identity.base_url}/devicelogin"' in text
    assert re.search(r'<meta http-equiv="refresh" content="\d+">', text)
    policy = pending.headers["Content-Security-Policy"]
    assert "script-src" not in policy and "default-src 'none'" in policy and "form-action 'self'" in policy
    assert "<script" not in text and flow.device_code not in text
    # and once the operator approved, the page says so and stops reloading
    identity.approve(flow.user_code, USER)
    time.sleep(identity.device_interval + 0.15)
    done = client.get(PAGE).get_data(as_text=True)
    assert 'id="sign-in-state">signed in<' in done and 'http-equiv="refresh"' not in done
    assert stored_token(app) is not None
    assert store_of(app).actions()[0]["token"] == "session"


def test_a_form_post_without_the_csrf_token_starts_nothing(make_app, tmp_path, identity):
    app = make_app(sign_in_env(identity, tmp_path))
    client = app.test_client()
    login(client)
    for data in ({}, {"csrf_token": "forged"}):
        response = client.post(PATH, data={**data, "next": PAGE})
        assert response.status_code == 403 and response.get_json() == {"error": "csrf_token_invalid"}
    assert identity.device_flows == []


def test_a_read_only_session_sees_no_sign_in(make_app, tmp_path, identity):
    app = make_app(sign_in_env(identity, tmp_path))
    client = app.test_client()
    client.post("/login", data={"token": STATUS, "next": PAGE})
    assert client.get_cookie(SESSION_COOKIE) is not None
    page = client.get(PAGE)
    assert page.status_code == 403 and "start-sign-in" not in page.get_data(as_text=True)
    assert client.get(PATH).status_code == 403


def test_the_page_of_a_password_mailbox_says_it_cannot_sign_in_there(make_app, tmp_path, identity):
    app = make_app(password_env(identity, tmp_path))
    client = app.test_client()
    login(client)
    page = client.get(PAGE)
    assert page.status_code == 409 and "refresh_token" in page.get_data(as_text=True)
    assert "start-sign-in" not in page.get_data(as_text=True)


# --- secrets ------------------------------------------------------------------------------------------------------

def test_no_device_code_or_token_is_in_any_answer_page_or_log(make_app, tmp_path, identity, caplog):
    caplog.set_level(logging.DEBUG)
    app = make_app(sign_in_env(identity, tmp_path))
    client = app.test_client()
    bodies = []
    answer = client.post(PATH, headers=bearer())
    bodies.append(answer.get_data(as_text=True))
    code = answer.get_json()
    login(client)
    for step in range(2):  # pending, then approved
        if step == 1:
            identity.approve(code["user_code"], USER)
        wait_for_next_poll(code)
        bodies.append(client.get(PATH, headers=bearer()).get_data(as_text=True))
        bodies.append(client.get(PAGE).get_data(as_text=True))
    assert '"state":"done"' in bodies[-2].replace(" ", "")
    secrets = [the_device_code(identity), stored_token(app) or "missing"]
    secrets += [token.access_token for token in identity.issued_tokens]
    everything = "\n".join(bodies) + caplog.text + repr(store_of(app).actions())
    assert all(secret not in everything for secret in secrets)


# --- the mailbox signs in with it ---------------------------------------------------------------------------------

@pytest.mark.imap
@pytest.mark.timeout(90)
def test_the_waiting_mailbox_signs_in_at_dovecot_with_the_token_a_browser_sign_in_stored(
        make_oauth2_dovecot, webhook_receiver, make_app, tmp_path):
    # Given a running service whose delegated mailbox has no refresh token yet (reauth_required)
    pair = make_oauth2_dovecot(lifetime=30)
    account = pair.new_account()
    env = service_env(account, webhook_receiver, state_dir=str(tmp_path / "state"), STATE_DIR_PERSISTENT="true",
                      OAUTH_REAUTH_RETRY_SECONDS="600", IMAP_AUTH_METHOD="oauth2", OAUTH_PROVIDER="refresh_token",
                      OAUTH_TOKEN_URL=pair.identity.token_url,
                      OAUTH_DEVICE_AUTHORIZATION_URL=pair.identity.device_authorization_url,
                      OAUTH_CLIENT_ID=DEFAULT_CLIENT_ID, OAUTH_CLIENT_SECRET=DEFAULT_CLIENT_SECRET,
                      OAUTH_CA_FILE=pair.identity.ca_file, ADMIN_API_TOKEN=ADMIN)
    env.pop("EMAIL_PASSWORD", None)
    app = make_app(env)
    runtime = app.extensions["render_signal"]
    runtime.start_background()
    deadline = time.monotonic() + 20
    while runtime.poller_status.snapshot()["imap"] != "reauth_required":
        assert time.monotonic() < deadline, runtime.poller_status.snapshot()
        time.sleep(0.1)
    pair.server.append(account.user, make_email(subject="waits for the browser sign-in"))
    # When the operator signs in from the browser and approves at the provider
    client = app.test_client()
    answer = start(client)
    pair.identity.approve(answer["user_code"], account.user)
    assert poll_until(client, "done")["state"] == "done"
    approved_at = time.monotonic()
    # Then the mailbox signs in at Dovecot with it within seconds and the waiting email is delivered
    webhook_receiver.wait_for(1, timeout=15)
    assert time.monotonic() - approved_at < 10
    assert runtime.poller_status.snapshot()["imap"] != "reauth_required"


def test_a_provider_error_that_quotes_the_device_code_is_shown_without_it(make_app, tmp_path, identity, caplog):
    caplog.set_level(logging.DEBUG)
    app = make_app(sign_in_env(identity, tmp_path))
    client = app.test_client()
    answer = start(client)
    device_code = the_device_code(identity)
    identity.fail_next(1, 400, error="invalid_grant", description=f"AADSTS70000: device code {device_code} is bad")
    wait_for_next_poll(answer)
    response = client.get(PATH, headers=bearer())
    failed = response.get_json()
    assert (failed["state"], failed["error"]) == ("error", "invalid_grant")
    assert "[redacted]" in failed["detail"] and device_code not in response.get_data(as_text=True)
    login(client)
    page = client.get(PAGE).get_data(as_text=True)
    assert 'id="sign-in-error">invalid_grant<' in page and device_code not in page
    assert device_code not in caplog.text and device_code not in repr(store_of(app).actions())
