"""The OAuth2 token providers of services/oauth against the fake identity provider (harness/identity.py) over real
HTTP(S) on loopback, and the SASL XOAUTH2/OAUTHBEARER exchange against a real Dovecot that introspects every token
at that provider (issue 18)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import requests
import trustme
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from harness.identity import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    GOOGLE_MAIL_SCOPE,
    GRANT_CLIENT_CREDENTIALS,
    GRANT_JWT_BEARER,
    GRANT_REFRESH,
    MICROSOFT_APP_SCOPE,
    IdentityProvider,
)
from harness.identity_dovecot import OAuth2Dovecot
from harness.ports import free_port
from services.oauth import OAuth2SaslAuthenticator, OAuthError, TokenCache
from services.oauth.command import CommandConfig, CommandTokenProvider
from services.oauth.google import GoogleServiceAccountConfig, GoogleServiceAccountProvider
from services.oauth.microsoft import MicrosoftClientCredentialsConfig, MicrosoftClientCredentialsProvider
from services.oauth.refresh_token import InMemoryRefreshTokenStore, RefreshTokenConfig, RefreshTokenProvider

REPO = Path(__file__).resolve().parents[2]
MAILBOX = "service@example.com"


# --- Microsoft client credentials (MSAL) -------------------------------------------------------------------------

def _microsoft(identity: IdentityProvider, **kwargs) -> MicrosoftClientCredentialsProvider:
    values = {"tenant_id": identity.tenant, "client_id": "app", "authority_host": identity.authority_host,
              "ca_file": identity.ca_file, **kwargs}
    return MicrosoftClientCredentialsProvider(MicrosoftClientCredentialsConfig(**values))


def test_client_credentials_with_a_secret_get_an_app_token_from_the_https_authority(identity_provider_tls):
    identity = identity_provider_tls
    identity.add_client("app", "app-secret", mailboxes=[MAILBOX])
    before = time.time()

    token = _microsoft(identity, client_secret="app-secret").fetch_token()

    issued = identity.token_info(token.value)
    assert issued is not None and issued.grant == GRANT_CLIENT_CREDENTIALS and issued.client_id == "app"
    assert issued.scope == MICROSOFT_APP_SCOPE and issued.user == MAILBOX
    assert before <= token.obtained_at <= token.expires_at - 3500
    assert abs(token.expires_at - issued.expires_at) < 2
    # MSAL found the token endpoint through the fake's own discovery document, never an outside host
    assert any(item.endpoint == "discovery" for item in identity.requests)


def test_client_credentials_with_a_certificate_send_a_signed_client_assertion(identity_provider_tls, tmp_path):
    identity = identity_provider_tls
    identity.add_client("cert-app", mailboxes=[MAILBOX])  # no secret: it must prove itself with its certificate
    cert = trustme.CA(key_type=trustme.KeyType.RSA).issue_cert("render-signal-app", key_type=trustme.KeyType.RSA)
    cert_file, key_file = tmp_path / "app.pem", tmp_path / "app.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))

    token = _microsoft(identity, client_id="cert-app", client_cert_file=str(cert_file),
                       client_key_file=str(key_file)).fetch_token()

    assert identity.token_info(token.value).client_id == "cert-app"
    [assertion] = identity.client_assertions
    assert assertion["client_id"] == "cert-app" and assertion["header"]["alg"] in ("RS256", "PS256")
    assert assertion["claims"]["aud"] == identity.microsoft_token_url()


def test_a_certificate_whose_key_is_not_rsa_is_terminal(identity_provider_tls, tmp_path):
    cert = trustme.CA().issue_cert("render-signal-app", key_type=trustme.KeyType.ECDSA)
    cert_file, key_file = tmp_path / "app.pem", tmp_path / "app.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    with pytest.raises(OAuthError) as caught:
        _microsoft(identity_provider_tls, client_id="cert-app", client_cert_file=str(cert_file),
                   client_key_file=str(key_file)).fetch_token()
    assert caught.value.terminal and caught.value.code == "client_credential_invalid"


def test_a_wrong_client_secret_is_terminal_and_not_in_the_error(identity_provider_tls):
    identity_provider_tls.add_client("app", "app-secret", mailboxes=[MAILBOX])
    with pytest.raises(OAuthError) as caught:
        _microsoft(identity_provider_tls, client_secret="wrong-secret-value").fetch_token()
    assert caught.value.terminal and caught.value.code == "invalid_client" and caught.value.aadsts == 7000215
    assert "wrong-secret-value" not in str(caught.value)


def test_a_tenant_that_does_not_exist_is_terminal(identity_provider_tls):
    identity_provider_tls.add_client("app", "app-secret")
    identity_provider_tls.fail_next(1, 400, endpoint="discovery", error="invalid_tenant",
                                    description="AADSTS90002: Tenant not found.")
    with pytest.raises(OAuthError) as caught:
        _microsoft(identity_provider_tls, client_secret="app-secret").fetch_token()
    assert caught.value.terminal and caught.value.code == "invalid_authority"


def test_a_microsoft_5xx_is_transient_and_the_next_call_succeeds(identity_provider_tls):
    identity = identity_provider_tls
    identity.add_client("app", "app-secret", mailboxes=[MAILBOX])
    provider = _microsoft(identity, client_secret="app-secret")
    identity.fail_next(1, 503, retry_after=0)  # retry_after=0: MSAL would replay a bare 5xx for 5 s

    with pytest.raises(OAuthError) as caught:
        provider.fetch_token()

    assert not caught.value.terminal and caught.value.status == 503
    assert identity.token_info(provider.fetch_token().value) is not None


def test_a_microsoft_token_endpoint_that_does_not_answer_in_time_is_transient(identity_provider_tls):
    identity = identity_provider_tls
    identity.add_client("app", "app-secret", mailboxes=[MAILBOX])
    provider = _microsoft(identity, client_secret="app-secret", timeout_seconds=0.5)
    provider_fetch_started = time.monotonic()
    identity.fail_next(1, 503, delay=3)

    with pytest.raises(OAuthError) as caught:
        provider.fetch_token()

    assert not caught.value.terminal and caught.value.code == "timeout"
    assert time.monotonic() - provider_fetch_started < 2.5


def test_mailboxes_of_one_app_share_its_token_through_the_cache(identity_provider_tls):
    identity = identity_provider_tls
    identity.add_client("app", "app-secret", mailboxes=[MAILBOX, "other@example.com"])
    cache = TokenCache()
    first = cache.get(_microsoft(identity, client_secret="app-secret"))
    second = cache.get(_microsoft(identity, client_secret="app-secret"))  # another mailbox's provider, same app
    assert first is second
    assert len([item for item in identity.requests if item.grant_type == GRANT_CLIENT_CREDENTIALS]) == 1


# --- refresh tokens (Authlib) -----------------------------------------------------------------------------------

def _refresh_provider(identity: IdentityProvider, store, refresh_token: str | None = None,
                      **kwargs) -> RefreshTokenProvider:
    values = {"token_url": identity.token_url, "client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET,
              "subject": MAILBOX, "refresh_token": refresh_token, "ca_file": identity.ca_file,
              "allow_insecure": identity.ca_file is None, **kwargs}
    return RefreshTokenProvider(RefreshTokenConfig(**values), store)


def _refresh_with(identity: IdentityProvider, refresh_token: str) -> requests.Response:
    return requests.post(identity.token_url, data={"grant_type": GRANT_REFRESH, "refresh_token": refresh_token,
                                                   "client_id": DEFAULT_CLIENT_ID,
                                                   "client_secret": DEFAULT_CLIENT_SECRET},
                         verify=identity.ca_file or True, timeout=10)


def test_a_refresh_stores_the_rotated_refresh_token_and_the_old_one_is_refused(identity_provider_tls):
    identity = identity_provider_tls
    initial = identity.issue_refresh_token(MAILBOX)
    store = InMemoryRefreshTokenStore()

    token = _refresh_provider(identity, store, initial).fetch_token()

    assert identity.token_info(token.value).user == MAILBOX
    stored = store.load()
    assert stored is not None and stored != initial and stored == identity.latest_refresh_token(initial)
    refused = _refresh_with(identity, initial)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"


def test_the_stored_refresh_token_wins_over_the_configured_initial_one(identity_provider):
    identity = identity_provider
    configured = identity.issue_refresh_token(MAILBOX)
    newer = identity.issue_refresh_token(MAILBOX)  # e.g. stored by oauth-login after the configuration was written
    store = InMemoryRefreshTokenStore(newer)
    provider = _refresh_provider(identity, store, configured)

    provider.fetch_token()
    provider.fetch_token()  # the second refresh spends the token the first one stored

    assert identity.latest_refresh_token(configured) == configured  # never spent
    assert store.load() == identity.latest_refresh_token(newer) != newer
    assert store.saves == 2


def test_the_rotated_refresh_token_is_saved_before_the_access_token_is_handed_out(identity_provider):
    class FailingStore(InMemoryRefreshTokenStore):
        def save(self, new_refresh_token: str) -> None:
            raise RuntimeError("state store down")

    identity = identity_provider
    initial = identity.issue_refresh_token(MAILBOX)
    with pytest.raises(RuntimeError):
        _refresh_provider(identity, FailingStore(), initial).fetch_token()


def test_without_rotation_the_refresh_token_is_kept_and_nothing_is_saved(make_identity_provider):
    identity = make_identity_provider(rotate_refresh_tokens=False)
    initial = identity.issue_refresh_token(MAILBOX, scope=GOOGLE_MAIL_SCOPE)
    store = InMemoryRefreshTokenStore()
    provider = _refresh_provider(identity, store, initial, scope=GOOGLE_MAIL_SCOPE)
    provider.fetch_token()
    provider.fetch_token()
    assert store.saves == 0 and store.load() is None


def test_a_refused_stored_refresh_token_gives_way_to_a_new_configured_one_once(make_identity_provider):
    identity = make_identity_provider()
    stale = identity.issue_refresh_token(MAILBOX)
    identity.revoke(stale)
    configured = identity.issue_refresh_token(MAILBOX)
    # Given a stored refresh token that was revoked and a new one set in the configuration (a new secret)
    store = InMemoryRefreshTokenStore(stale)
    provider = _refresh_provider(identity, store, configured)
    # Then the configured one signs in, and the token it rotated to is stored
    assert provider.fetch_token().value
    assert store.load() == identity.latest_refresh_token(configured) != stale
    # When both are refused, the stored one's error is what is raised, and the configured one is not tried again
    identity.revoke(configured)
    store.save(stale)
    with pytest.raises(OAuthError) as raised:
        provider.fetch_token()
    assert raised.value.code == "invalid_grant"
    before = len(identity.requests)
    with pytest.raises(OAuthError):
        provider.fetch_token()
    assert len(identity.requests) == before + 1


class SlowReadStore(InMemoryRefreshTokenStore):
    """Widens the window between reading the refresh token and spending it, as a second process would."""

    def __init__(self, refresh_token: str, *, locking: bool = True) -> None:
        super().__init__(refresh_token)
        self.locking = locking

    def load(self) -> str | None:
        value = super().load()
        time.sleep(0.3)
        return value

    def lock(self):
        if self.locking:
            return super().lock()
        import contextlib

        return contextlib.nullcontext()


def _race(identity: IdentityProvider, store) -> list[object]:
    """Two providers (as two processes would have) refreshing from one store at the same moment."""
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def refresh() -> None:
        provider = _refresh_provider(identity, store)
        barrier.wait()
        try:
            outcomes.append(provider.fetch_token())
        except OAuthError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=refresh) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return outcomes


def test_two_refreshing_at_the_same_moment_take_turns_and_never_spend_a_stale_refresh_token(identity_provider):
    identity = identity_provider
    initial = identity.issue_refresh_token(MAILBOX)
    store = SlowReadStore(initial)

    outcomes = _race(identity, store)

    assert len(outcomes) == 2 and not any(isinstance(item, OAuthError) for item in outcomes)
    refreshes = [item for item in identity.requests if item.grant_type == GRANT_REFRESH]
    assert [item.status for item in refreshes] == [200, 200]
    assert store.load() == identity.latest_refresh_token(initial) and store.saves == 2


def test_without_the_lock_the_same_race_spends_a_stale_refresh_token(identity_provider):
    # The control of the test above: its race is real, only the store's lock keeps it harmless.
    identity = identity_provider
    store = SlowReadStore(identity.issue_refresh_token(MAILBOX), locking=False)

    outcomes = _race(identity, store)

    errors = [item for item in outcomes if isinstance(item, OAuthError)]
    assert len(errors) == 1 and errors[0].code == "invalid_grant" and errors[0].terminal


def test_a_revoked_refresh_token_is_a_terminal_invalid_grant_without_the_token_in_it(identity_provider_tls):
    identity = identity_provider_tls
    initial = identity.issue_refresh_token(MAILBOX)
    identity.revoke(initial)

    with pytest.raises(OAuthError) as caught:
        _refresh_provider(identity, InMemoryRefreshTokenStore(), initial).fetch_token()

    error = caught.value
    assert error.terminal and error.code == "invalid_grant" and error.aadsts == 700082 and error.status == 400
    assert initial not in str(error) and DEFAULT_CLIENT_SECRET not in str(error)


def test_no_refresh_token_at_all_is_terminal(identity_provider):
    with pytest.raises(OAuthError) as caught:
        _refresh_provider(identity_provider, InMemoryRefreshTokenStore()).fetch_token()
    assert caught.value.terminal and caught.value.code == "no_refresh_token"


@pytest.mark.parametrize("status", [500, 503, 429])
def test_a_5xx_or_429_from_the_token_endpoint_is_transient_and_keeps_the_refresh_token(identity_provider, status):
    identity = identity_provider
    initial = identity.issue_refresh_token(MAILBOX)
    store = InMemoryRefreshTokenStore(initial)
    provider = _refresh_provider(identity, store)
    identity.fail_next(1, status)

    with pytest.raises(OAuthError) as caught:
        provider.fetch_token()

    assert not caught.value.terminal and caught.value.status == status
    assert store.load() == initial
    assert identity.token_info(provider.fetch_token().value) is not None  # the same refresh token still works


def test_a_token_endpoint_that_does_not_answer_in_time_is_transient(identity_provider):
    identity = identity_provider
    provider = _refresh_provider(identity, InMemoryRefreshTokenStore(identity.issue_refresh_token(MAILBOX)),
                                 timeout_seconds=0.5)
    identity.fail_next(1, 503, delay=3)
    started = time.monotonic()
    with pytest.raises(OAuthError) as caught:
        provider.fetch_token()
    assert not caught.value.terminal and caught.value.code == "timeout"
    assert time.monotonic() - started < 2.5


def test_a_dropped_connection_or_no_listener_is_transient(identity_provider):
    identity = identity_provider
    provider = _refresh_provider(identity, InMemoryRefreshTokenStore(identity.issue_refresh_token(MAILBOX)))
    identity.fail_next(1, 503, drop=True)
    with pytest.raises(OAuthError) as dropped:
        provider.fetch_token()
    nobody = _refresh_provider(identity, InMemoryRefreshTokenStore("rt-x"),
                               token_url=f"http://127.0.0.1:{free_port()}/oauth2/token")
    with pytest.raises(OAuthError) as refused:
        nobody.fetch_token()
    assert not dropped.value.terminal and not refused.value.terminal
    assert refused.value.code == "connection_error"


def test_an_https_token_endpoint_with_an_untrusted_certificate_is_refused(identity_provider_tls):
    identity = identity_provider_tls
    provider = _refresh_provider(identity, InMemoryRefreshTokenStore(identity.issue_refresh_token(MAILBOX)),
                                 ca_file=None)
    with pytest.raises(OAuthError) as caught:
        provider.fetch_token()
    assert caught.value.code == "connection_error"
    assert not [item for item in identity.requests if item.endpoint == "token"]


# --- Google service account (google-auth) -------------------------------------------------------------------------

def _google(identity: IdentityProvider, path: str, **kwargs) -> GoogleServiceAccountProvider:
    return GoogleServiceAccountProvider(GoogleServiceAccountConfig(
        service_account_file=path, subject=MAILBOX, ca_file=identity.ca_file, **kwargs))


def test_a_service_account_gets_a_token_for_the_mailbox_user_by_jwt_bearer(identity_provider_tls, tmp_path):
    identity = identity_provider_tls
    path = identity.write_service_account_file(str(tmp_path / "sa.json"))

    token = _google(identity, path).fetch_token()

    issued = identity.token_info(token.value)
    assert issued.grant == GRANT_JWT_BEARER and issued.user == MAILBOX and issued.scope == GOOGLE_MAIL_SCOPE
    assert abs(token.expires_at - issued.expires_at) < 2
    [request] = [item for item in identity.requests if item.grant_type == GRANT_JWT_BEARER]
    assert request.path == "/token"  # the key file's token_uri


def test_a_service_account_key_the_provider_does_not_know_is_terminal(identity_provider_tls, tmp_path):
    identity = identity_provider_tls
    path = Path(identity.write_service_account_file(str(tmp_path / "sa.json")))
    key = json.loads(path.read_text())
    key["private_key_id"] = "0" * 40  # a key deleted in the console
    path.write_text(json.dumps(key))
    with pytest.raises(OAuthError) as caught:
        _google(identity, str(path)).fetch_token()
    assert caught.value.terminal and caught.value.code == "invalid_grant"


def test_a_google_5xx_is_transient(identity_provider_tls, tmp_path):
    identity = identity_provider_tls
    path = identity.write_service_account_file(str(tmp_path / "sa.json"))
    identity.fail_next(3, 503)  # google-auth tries three times
    with pytest.raises(OAuthError) as caught:
        _google(identity, path).fetch_token()
    assert not caught.value.terminal


def test_a_plain_http_token_uri_in_the_key_file_is_refused_unless_allowed(identity_provider, tmp_path):
    identity = identity_provider
    path = identity.write_service_account_file(str(tmp_path / "sa.json"))
    with pytest.raises(OAuthError) as caught:
        _google(identity, path).fetch_token()
    assert caught.value.terminal and caught.value.code == "insecure_endpoint"
    assert not identity.requests
    assert identity.token_info(_google(identity, path, allow_insecure=True).fetch_token().value) is not None


def test_a_missing_service_account_file_is_terminal(tmp_path):
    provider = GoogleServiceAccountProvider(GoogleServiceAccountConfig(str(tmp_path / "none.json"), MAILBOX))
    with pytest.raises(OAuthError) as caught:
        provider.fetch_token()
    assert caught.value.terminal and caught.value.code == "service_account_file_unreadable"


# --- command -----------------------------------------------------------------------------------------------------

TOKEN_SCRIPT = textwrap.dedent("""\
    import json, os, sys, time
    mode = sys.argv[1]
    sys.stderr.write("vault secret: hunter2-stderr\\n")
    if mode == "bare":
        print(sys.argv[2])
    elif mode == "json":
        print(json.dumps({"access_token": sys.argv[2], "expires_in": 120, "subject": os.environ.get("OAUTH_SUBJECT")}))
    elif mode == "error":
        print(json.dumps({"error": "invalid_grant", "error_description": "AADSTS50173: revoked"}))
    elif mode == "refuse":
        sys.exit(77)
    elif mode == "fail":
        sys.exit(3)
    elif mode == "slow":
        time.sleep(30)
    elif mode == "garbage":
        print("this is not a token")
""")


@pytest.fixture
def token_command(tmp_path):
    script = tmp_path / "print_token.py"
    script.write_text(TOKEN_SCRIPT)

    def make(*args: str, timeout: float = 10.0) -> CommandTokenProvider:
        command = " ".join([sys.executable, str(script), *args])
        return CommandTokenProvider(CommandConfig(command, subject=MAILBOX, timeout_seconds=timeout))

    return make


def test_a_command_printing_a_bare_token_gives_it_with_the_default_lifetime(token_command):
    token = token_command("bare", "opaque-token.value").fetch_token()
    assert token.value == "opaque-token.value" and token.lifetime == 300


def test_a_command_printing_json_gives_its_token_and_lifetime(token_command, identity_provider):
    issued = identity_provider.issue_token(MAILBOX, lifetime=120)
    token = token_command("json", issued.access_token).fetch_token()
    assert token.value == issued.access_token and token.lifetime == 120


@pytest.mark.parametrize("mode, code, terminal", [
    ("error", "invalid_grant", True), ("refuse", "command_refused", True), ("fail", "command_failed", False),
    ("garbage", "command_bad_output", True),
])
def test_a_failing_command_is_judged_by_the_taxonomy_and_its_stderr_is_never_logged(token_command, caplog, mode,
                                                                                     code, terminal):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(OAuthError) as caught:
        token_command(mode).fetch_token()
    assert caught.value.code == code and caught.value.terminal is terminal
    assert "hunter2" not in caplog.text and "hunter2" not in str(caught.value)


def test_a_command_that_runs_too_long_is_killed_and_transient(token_command):
    started = time.monotonic()
    with pytest.raises(OAuthError) as caught:
        token_command("slow", timeout=0.5).fetch_token()
    assert caught.value.code == "command_timeout" and not caught.value.terminal
    assert time.monotonic() - started < 5


def test_a_command_that_does_not_exist_is_terminal(tmp_path):
    provider = CommandTokenProvider(CommandConfig(str(tmp_path / "no-such-command") + " --print"))
    with pytest.raises(OAuthError) as caught:
        provider.fetch_token()
    assert caught.value.terminal and caught.value.code == "command_not_found"


def test_a_command_runs_without_a_shell(token_command, tmp_path):
    marker = tmp_path / "marker"
    token = token_command("bare", "t0k3n", ";", "touch", str(marker)).fetch_token()
    assert token.value == "t0k3n" and not marker.exists()


# --- imports ------------------------------------------------------------------------------------------------------

def test_importing_the_package_and_its_providers_loads_no_client_library():
    code = ("import sys\n"
            "import services.oauth, services.oauth.microsoft, services.oauth.google, services.oauth.refresh_token\n"
            "import services.oauth.command, services.oauth.cache, services.oauth.sasl\n"
            "loaded = [m for m in sys.modules if m.split('.')[0] in ('msal', 'google', 'authlib', 'jwt')]\n"
            "assert not loaded, loaded\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr


# --- SASL against Dovecot -----------------------------------------------------------------------------------------

def _imap(oauth2: OAuth2Dovecot) -> IMAPClient:
    server = oauth2.server
    return IMAPClient(server.host, port=server.ssl_port, ssl=True, ssl_context=server.ssl_context(), timeout=10)


@pytest.mark.imap
@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_a_refreshed_token_signs_in_to_dovecot(oauth2_dovecot, mechanism):
    identity = oauth2_dovecot.identity
    account = oauth2_dovecot.new_account()
    store = InMemoryRefreshTokenStore(identity.issue_refresh_token(account.user))
    token = TokenCache().get(_refresh_provider(identity, store, subject=account.user))
    auth = OAuth2SaslAuthenticator(mechanism, account.user, token.value)

    client = _imap(oauth2_dovecot)
    try:
        client.sasl_login(mechanism, auth)
        assert client.select_folder("INBOX", readonly=True)[b"EXISTS"] == 0
    finally:
        client.logout()

    assert auth.error_challenge is None
    [session] = oauth2_dovecot.token_sessions()
    assert session.session.method == mechanism and session.introspection.fingerprint == \
        identity.introspections[-1].fingerprint
    assert token.value not in oauth2_dovecot.server.log_text()


@pytest.mark.imap
def test_an_app_token_from_msal_signs_in_to_its_mailbox(oauth2_dovecot):
    identity = oauth2_dovecot.identity
    account = oauth2_dovecot.new_account()
    identity.add_client("app", "app-secret", mailboxes=[account.user])
    token = _microsoft(identity, client_secret="app-secret").fetch_token()

    client = _imap(oauth2_dovecot)
    try:
        client.sasl_login("XOAUTH2", OAuth2SaslAuthenticator("XOAUTH2", account.user, token.value))
    finally:
        client.logout()


@pytest.mark.imap
@pytest.mark.parametrize("mechanism, challenge", [
    ("XOAUTH2", {"status": "401", "schemes": "bearer", "scope": "mail"}),
    ("OAUTHBEARER", {"status": "invalid_token"}),
])
def test_an_expired_token_gets_the_error_challenge_kept_and_a_clean_refusal(oauth2_dovecot, mechanism, challenge):
    identity = oauth2_dovecot.identity
    account = oauth2_dovecot.new_account()
    expired = identity.issue_token(account.user, lifetime=1)
    time.sleep(1.1)
    auth = OAuth2SaslAuthenticator(mechanism, account.user, expired.access_token)

    client = _imap(oauth2_dovecot)
    try:
        with pytest.raises(LoginError) as refused:
            client.sasl_login(mechanism, auth)
        # a clean refusal: the same connection, still unauthenticated, signs in with a good token
        fresh = identity.issue_token(account.user, lifetime=60)
        client.sasl_login(mechanism, OAuth2SaslAuthenticator(mechanism, account.user, fresh.access_token))
        assert client.select_folder("INBOX", readonly=True)[b"EXISTS"] == 0
    finally:
        client.logout()

    assert auth.error_challenge == challenge
    assert "AUTHENTICATIONFAILED" in str(refused.value) or "failed" in str(refused.value).lower()
    assert [item.reason for item in identity.introspections] == ["expired", "active"]
    assert expired.access_token not in str(refused.value)


def test_after_a_consent_error_the_next_call_asks_again_instead_of_msals_replay(identity_provider_tls):
    identity = identity_provider_tls
    identity.add_client("app", "app-secret", mailboxes=[MAILBOX])
    provider = _microsoft(identity, client_secret="app-secret")
    identity.fail_next(1, 400, error="invalid_grant",
                       description="AADSTS65001: The user or administrator has not consented to use the application.")
    with pytest.raises(OAuthError) as caught:
        provider.fetch_token()
    assert caught.value.terminal and caught.value.aadsts == 65001

    # the admin consents; the next retry gets a token at once (MSAL alone would replay the 400 for 60 s)
    assert identity.token_info(provider.fetch_token().value) is not None
