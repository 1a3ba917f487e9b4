"""The browser/API device-code sign-in (issue 20) on the real stack: two Gunicorn masters (two containers, three
workers) on one Redis, a Dovecot whose OAuth2 logins are checked at the fake identity provider (https), a webhook
receiver. A sign-in started at one container is continued by whichever worker answers; of many asking at once only
one asks the provider; the waiting mailbox signs in with the stored token and delivers; no device code or token
reaches any answer or any log line (at LOG_LEVEL=debug).
"""

from __future__ import annotations

import threading
import time

import pytest
import requests

from harness.identity import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, GRANT_DEVICE_CODE
from harness.mail import make_email
from harness.waiting import wait_for
from services.oauth.stored_tokens import StoredRefreshTokens, TokenCipher
from services.state_store import open_state_store
from settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.imap]

ADMIN = "cluster-admin-token-Dc20-Qx7"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
PATH = "/api/mailboxes/default/sign-in"


def stored_refresh_token(env: dict[str, str]) -> str | None:
    settings = Settings.from_env(env)
    store = open_state_store(settings)
    try:
        return StoredRefreshTokens(store, "default", TokenCipher(settings.state_encryption_key)).load()
    finally:
        store.close()


@pytest.mark.timeout(150)
def test_a_sign_in_started_at_one_container_is_finished_by_any_worker_and_the_mailbox_delivers(
        service_factory, redis_url, make_oauth2_dovecot, webhook_receiver):
    # Given two masters on one Redis whose delegated mailbox waits for a sign-in (no refresh token yet)
    pair = make_oauth2_dovecot(lifetime=60)
    identity = pair.identity
    account = pair.new_account()
    env = {**account.settings_env(), "REDIS_URL": redis_url, "WEBHOOK_URL": webhook_receiver.url,
           "WEBHOOK_ALLOW_INSECURE": "true", "ADMIN_API_TOKEN": ADMIN, "LOG_LEVEL": "debug",
           "REDIS_LOCK_TTL_SECONDS": "3", "EMAIL_POLLING_INTERVAL_SECONDS": "1", "IMAP_TIMEOUT_SECONDS": "2",
           "REDIS_TIMEOUT_SECONDS": "1", "IMAP_RECONNECT_MAX_SECONDS": "1", "OAUTH_REAUTH_RETRY_SECONDS": "600",
           "IMAP_AUTH_METHOD": "oauth2", "OAUTH_PROVIDER": "refresh_token", "OAUTH_TOKEN_URL": identity.token_url,
           "OAUTH_DEVICE_AUTHORIZATION_URL": identity.device_authorization_url,
           "OAUTH_CLIENT_ID": DEFAULT_CLIENT_ID, "OAUTH_CLIENT_SECRET": DEFAULT_CLIENT_SECRET,
           "OAUTH_CA_FILE": identity.ca_file}
    env.pop("EMAIL_PASSWORD", None)
    masters = [service_factory(env, workers=2), service_factory(env, workers=1)]
    wait_for(lambda: any("OAUTH: reauth required" in master.log_text() for master in masters), 30,
             "the lease holder's mailbox waiting for a sign-in", interval=0.2)
    pair.server.append(account.user, make_email(subject="waits for the browser sign-in"))
    # When the operator starts the sign-in at the first container
    started = requests.post(masters[0].url + PATH, headers=AUTH, timeout=15)
    assert started.status_code == 202, started.text
    answer = started.json()
    (flow,) = identity.device_flows
    # and, once the interval has passed, twelve requests hit both containers' workers at the same moment
    time.sleep(float(answer["interval"]) + 0.2)
    barrier = threading.Barrier(12)
    bodies: list[str] = [started.text]
    states: list[str] = []

    def read(index: int) -> None:
        barrier.wait()
        response = requests.get(masters[index % 2].url + PATH, headers=AUTH, timeout=15)
        bodies.append(response.text)
        states.append(response.json()["state"])

    threads = [threading.Thread(target=read, args=(index,)) for index in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # Then the provider was asked once between them all
    assert states == ["pending"] * 12
    assert len([r for r in identity.requests if r.grant_type == GRANT_DEVICE_CODE]) == 1
    # When the user approves and the second container is asked next
    identity.approve(answer["user_code"], account.user)
    deadline = time.monotonic() + 20
    state = "pending"
    while state == "pending":
        assert time.monotonic() < deadline, "the sign-in never ended"
        time.sleep(0.3)
        response = requests.get(masters[1].url + PATH, headers=AUTH, timeout=15)
        bodies.append(response.text)
        state = response.json()["state"]
    # Then it is done, seen so by the first container too, and the waiting email is delivered
    assert state == "done"
    assert requests.get(masters[0].url + PATH, headers=AUTH, timeout=15).json()["state"] == "done"
    webhook_receiver.wait_for(1, timeout=30)
    # and no device code or token is in any answer or any log line of either container
    logs = [master.log_text() for master in masters]
    refresh_token = stored_refresh_token(env)
    assert identity.refresh_token_user(refresh_token or "") == account.user
    secrets = [flow.device_code, refresh_token or "", *(token.access_token for token in identity.issued_tokens)]
    assert all(secret not in text for secret in secrets for text in bodies + logs)
    assert any("OPERATOR: sign_in default done" in text for text in logs)

