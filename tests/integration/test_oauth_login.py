"""``flask --app app oauth-login`` in a real process (issue 18): the device flow (RFC 8628) against the fake identity
provider, storing the refresh token in the state store, where the running service picks it up at once; the
``--loopback`` authorization-code sign-in with PKCE, a real browser request standing in for the operator; and the
errors an operator can make.

The service and the command share the state store: a SQLite file on a disk declared persistent, or a real Redis.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from cryptography.fernet import Fernet

from harness.identity import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from harness.mail import make_email
from harness.pipeline import service_env
from services.oauth.device_flow import SLOW_DOWN_STEP_SECONDS, DeviceFlowConfig, start_device_flow, wait_for_grant
from services.oauth.errors import OAuthError
from services.oauth.stored_tokens import StoredRefreshTokens, TokenCipher
from services.oauth.token_endpoint import OAuthClient
from services.state_store import open_state_store
from settings import Settings

pytestmark = [pytest.mark.imap, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
USER_CODE = re.compile(r"enter the code (\S+) ")
LINK = re.compile(r"^(https?://\S+/authorize\?\S+)$", re.MULTILINE)


def oauth_env(account, receiver, identity, **overrides) -> dict[str, str]:
    """The environment form of a delegated mailbox: no password, a refresh-token provider at the fake."""
    env = service_env(account, receiver, STATE_DIR_PERSISTENT="true", OAUTH_REAUTH_RETRY_SECONDS="600",
                      IMAP_AUTH_METHOD="oauth2", OAUTH_PROVIDER="refresh_token", OAUTH_TOKEN_URL=identity.token_url,
                      OAUTH_DEVICE_AUTHORIZATION_URL=identity.device_authorization_url,
                      OAUTH_CLIENT_ID=DEFAULT_CLIENT_ID, OAUTH_CLIENT_SECRET=DEFAULT_CLIENT_SECRET,
                      OAUTH_CA_FILE=identity.ca_file, **overrides)
    env.pop("EMAIL_PASSWORD", None)
    env.setdefault("WEBHOOK_URL", "http://127.0.0.1:9/unused")
    return env


def start_login(env: dict[str, str], *args: str) -> subprocess.Popen:
    child_env = {key: value for key, value in os.environ.items() if not key.startswith(("OAUTH_", "IMAP_", "EMAIL"))}
    child_env.update(env, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "flask", "--app", "app", "oauth-login", *args], cwd=ROOT,
                            env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_until(process: subprocess.Popen, pattern: re.Pattern[str], timeout: float = 20.0) -> re.Match[str]:
    """Read the command's output line by line until ``pattern`` matches (the watchdog kills it otherwise)."""
    assert process.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen += line
        match = pattern.search(seen)
        if match:
            return match
    process.kill()
    _, err = process.communicate()
    raise AssertionError(f"no {pattern.pattern!r} in the output: {seen!r} {err}")


def finish(process: subprocess.Popen, timeout: float = 30.0) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return process.returncode, out, err


def stored_refresh_token(env: dict[str, str], mailbox_id: str = "default") -> str | None:
    settings = Settings.from_env(env)
    store = open_state_store(settings)
    try:
        return StoredRefreshTokens(store, mailbox_id, TokenCipher(settings.state_encryption_key)).load()
    finally:
        store.close()


@pytest.fixture
def identity(identity_provider_tls):
    """The fake identity provider over https (a test CA): the command refuses plain http, as in production."""
    return identity_provider_tls


def test_device_login_stores_a_refresh_token_and_the_waiting_service_signs_in_with_it_at_once(
        make_oauth2_dovecot, webhook_receiver, pipeline_factory, state_backend):
    # Given a running service whose delegated mailbox has no refresh token yet (reauth_required)
    pair = make_oauth2_dovecot(lifetime=30)
    account = pair.new_account()
    env = oauth_env(account, webhook_receiver, pair.identity, **{k.upper(): v for k, v in state_backend.items()})
    pipeline = pipeline_factory(env)
    pipeline.wait_until(lambda: pipeline.runtime.poller_status.snapshot()["imap"] == "reauth_required",
                        timeout=20, what="reauth_required")
    pair.server.append(account.user, make_email(subject="waits for the sign-in"))
    # When the operator runs oauth-login and signs in on another device with the code it printed
    process = start_login(env)
    user_code = read_until(process, USER_CODE).group(1)
    pair.identity.approve(user_code, account.user)
    status, out, err = finish(process)
    # Then the command says the token is stored, the store has it, and the service signs in within seconds
    assert status == 0, err
    assert "is stored in the state store" in out and "NOT encrypted" in out
    approved_at = time.monotonic()
    webhook_receiver.wait_for(1, timeout=15)
    assert time.monotonic() - approved_at < 10
    assert stored_refresh_token(env) is not None
    # and no token reached the command's output
    issued = pair.identity.issued_tokens
    assert all(token.access_token not in out + err for token in issued)


def test_device_login_encrypts_the_stored_refresh_token_with_the_state_encryption_key(identity, tmp_path):
    key = Fernet.generate_key().decode()
    env = oauth_env(None, None, identity, STATE_DIR=str(tmp_path), STATE_ENCRYPTION_KEY=key,
                    IMAP_SERVER="127.0.0.1", EMAIL_ADDRESS="ops@example.test")
    process = start_login(env)
    identity.approve(read_until(process, USER_CODE).group(1), "ops@example.test")
    status, out, err = finish(process)
    assert status == 0, err
    assert "encrypted)" in out and "NOT encrypted" not in out
    raw = open_state_store(Settings.from_env(env)).read_refresh_token("default")
    assert raw is not None and raw.startswith("fernet:")
    assert identity.refresh_token_user(stored_refresh_token(env) or "") == "ops@example.test"


def test_a_denied_device_login_exits_1_and_stores_nothing(identity, tmp_path):
    env = oauth_env(None, None, identity, STATE_DIR=str(tmp_path), IMAP_SERVER="127.0.0.1",
                    EMAIL_ADDRESS="ops@example.test")
    process = start_login(env)
    identity.deny(read_until(process, USER_CODE).group(1))
    status, out, err = finish(process)
    assert status == 1 and "sign-in failed: access_denied" in err
    assert stored_refresh_token(env) is None


def test_loopback_login_prints_a_refresh_token_after_the_browser_comes_back(identity, tmp_path):
    identity.sign_in_browser_as("ops@example.test")
    env = oauth_env(None, None, identity, STATE_DIR=str(tmp_path), IMAP_SERVER="127.0.0.1",
                    EMAIL_ADDRESS="ops@example.test")
    process = start_login(env, "--loopback", "--authorization-url",
                          f"{identity.base_url}/oauth2/authorize")
    link = read_until(process, LINK).group(1)
    assert "code_challenge_method=S256" in link and "redirect_uri=http%3A%2F%2F127.0.0.1%3A" in link
    # the operator's browser: the provider redirects it back to the command's loopback port
    page = requests.get(link, verify=identity.ca_file, timeout=10)
    assert page.status_code == 200 and "Signed in" in page.text
    status, out, err = finish(process)
    assert status == 0, err
    refresh_token = out.strip().splitlines()[-1]
    assert identity.refresh_token_user(refresh_token) == "ops@example.test"
    assert stored_refresh_token(env) is None  # printed for the operator's secret store, not stored here


@pytest.mark.parametrize("provider_env, message", [
    ({"OAUTH_PROVIDER": "command", "OAUTH_TOKEN_COMMAND": "true"}, "oauth-login is for provider refresh_token"),
    ({"OAUTH_DEVICE_AUTHORIZATION_URL": ""}, "no device authorization endpoint"),
])
def test_oauth_login_refuses_a_mailbox_it_cannot_sign_in_with_exit_2(identity, tmp_path, provider_env,
                                                                      message):
    env = oauth_env(None, None, identity, STATE_DIR=str(tmp_path), IMAP_SERVER="127.0.0.1",
                    EMAIL_ADDRESS="ops@example.test")
    env.update(provider_env)
    env = {key: value for key, value in env.items() if value != ""}
    if env.get("OAUTH_PROVIDER") == "command":
        for key in ("OAUTH_TOKEN_URL", "OAUTH_DEVICE_AUTHORIZATION_URL", "OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET"):
            env.pop(key)
    status, out, err = finish(start_login(env))
    assert status == 2 and message in err, (out, err)


def test_the_device_flow_slows_down_when_asked_and_rides_out_a_token_endpoint_outage(identity):
    config = DeviceFlowConfig(identity.device_authorization_url, identity.token_url,
                              OAuthClient(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, ca_file=identity.ca_file))
    code = start_device_flow(config)
    # the provider asks to slow down once, then is down twice, then the user approves
    identity.fail_next(1, 400, error="slow_down", description="slow down")
    identity.fail_next(2, 503)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 4:
            identity.approve(code.user_code, "ops@example.test")

    answer = wait_for_grant(config, code, sleep=sleep)
    assert identity.refresh_token_user(answer["refresh_token"]) == "ops@example.test"
    assert waits[0] == code.interval and waits[1:] == [code.interval + SLOW_DOWN_STEP_SECONDS] * (len(waits) - 1)


def test_a_device_code_that_expires_before_approval_is_a_clear_failure(make_identity_provider):
    identity = make_identity_provider(tls=True, device_expires_in=6)
    config = DeviceFlowConfig(identity.device_authorization_url, identity.token_url,
                              OAuthClient(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, ca_file=identity.ca_file))
    code = start_device_flow(config)
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(OAuthError) as raised:
        wait_for_grant(config, code, sleep=sleep, clock=lambda: now[0])
    assert raised.value.code == "expired_token" and raised.value.terminal
    assert now[0] <= code.expires_in
