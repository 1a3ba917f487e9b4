"""Self-tests of the fake identity provider (harness/identity.py) and of Dovecot signing in with its tokens
(``DovecotServer(oauth2=...)``, harness/identity_dovecot.py): the rig of issue 18 must be right before the
service's OAuth2 sign-in is proven with it."""

from __future__ import annotations

import base64
import imaplib
import json
import socket
import ssl
import threading
import time

import psutil
import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from harness.identity import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    GOOGLE_MAIL_SCOPE,
    GOOGLE_TOKEN_AUDIENCE,
    GRANT_CLIENT_CREDENTIALS,
    GRANT_DEVICE_CODE,
    GRANT_JWT_BEARER,
    MICROSOFT_APP_SCOPE,
    IdentityProvider,
    fingerprint,
)
from harness.identity_dovecot import OAuth2Dovecot
from harness.identity_jwt import b64encode

CLIENT = {"client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET}


# --- SASL clients written out here, as RFC 7628 and Google's XOAUTH2 have them ------------------------------------

def _initial_response(mechanism: str, user: str, token: str) -> bytes:
    if mechanism == "XOAUTH2":
        return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()
    return f"n,a={user},\x01auth=Bearer {token}\x01\x01".encode()  # OAUTHBEARER, RFC 7628 section 3.1


def _sasl_login(oauth2: OAuth2Dovecot, mechanism: str, user: str, token: str) -> tuple[bool, list[dict]]:
    """AUTHENTICATE over IMAPS; on an error challenge answer as RFC 7628 section 3.2.3 asks (an empty response for
    XOAUTH2, %x01 for OAUTHBEARER) and return the challenges' JSON beside the outcome."""
    server = oauth2.server
    challenges: list[dict] = []
    sent = []

    def respond(challenge: bytes) -> bytes:
        if not sent:
            sent.append(True)
            return _initial_response(mechanism, user, token)
        challenges.append(json.loads(challenge))
        return b"" if mechanism == "XOAUTH2" else b"\x01"

    client = imaplib.IMAP4_SSL(server.host, server.ssl_port, ssl_context=server.ssl_context(), timeout=10)
    try:
        client.authenticate(mechanism, respond)
    except imaplib.IMAP4.error:
        client.shutdown()
        return False, challenges
    try:
        status, _ = client.select("INBOX", readonly=True)
        assert status == "OK"
        client.logout()
    except BaseException:
        client.shutdown()
        raise
    return True, challenges


def _post(url: str, provider: IdentityProvider, data: dict, **kwargs) -> requests.Response:
    return requests.post(url, data=data, verify=provider.ca_file or True, timeout=10, **kwargs)


# --- Dovecot with bearer tokens ----------------------------------------------------------------------------------

@pytest.mark.imap
@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_a_token_from_the_provider_signs_in_over_imap(oauth2_dovecot, mechanism):
    account = oauth2_dovecot.new_account()
    token = oauth2_dovecot.identity.issue_token(account.user, lifetime=30)

    ok, challenges = _sasl_login(oauth2_dovecot, mechanism, account.user, token.access_token)

    assert ok and challenges == []
    [check] = oauth2_dovecot.identity.introspections
    assert check.active and check.user == account.user and check.fingerprint == token.fingerprint
    log = oauth2_dovecot.server.log_text()
    assert f"method={mechanism}" in log and token.access_token not in log


@pytest.mark.imap
def test_password_logins_keep_working_beside_the_token_mechanisms(oauth2_dovecot):
    account = oauth2_dovecot.new_account()
    oauth2_dovecot.server.append(account.user, b"Subject: hi\r\n\r\nbody\r\n")
    assert len(oauth2_dovecot.server.mailbox_uids(account.user)) == 1
    assert oauth2_dovecot.identity.introspections == []  # a password login never asks the provider


@pytest.mark.imap
@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_an_expired_token_is_refused_with_an_error_challenge(oauth2_dovecot, mechanism):
    account = oauth2_dovecot.new_account()
    token = oauth2_dovecot.identity.issue_token(account.user, lifetime=1)
    time.sleep(1.1)

    ok, challenges = _sasl_login(oauth2_dovecot, mechanism, account.user, token.access_token)

    assert not ok
    # the error challenge's JSON (RFC 7628 section 3.2.2; Dovecot 2.3 answers XOAUTH2 like Gmail)
    assert challenges == [{"status": "401", "schemes": "bearer", "scope": "mail"} if mechanism == "XOAUTH2"
                          else {"status": "invalid_token"}]
    [check] = oauth2_dovecot.identity.introspections
    assert not check.active and check.reason == "expired"


@pytest.mark.imap
def test_a_revoked_access_token_and_another_users_token_are_refused(oauth2_dovecot):
    identity = oauth2_dovecot.identity
    account, other = oauth2_dovecot.new_account(), oauth2_dovecot.new_account()
    revoked = identity.issue_token(account.user, lifetime=30)
    identity.revoke(revoked.access_token)
    others = identity.issue_token(other.user, lifetime=30)

    assert not _sasl_login(oauth2_dovecot, "XOAUTH2", account.user, revoked.access_token)[0]
    assert not _sasl_login(oauth2_dovecot, "XOAUTH2", account.user, others.access_token)[0]
    assert not _sasl_login(oauth2_dovecot, "XOAUTH2", account.user, "never-issued")[0]
    assert [item.reason for item in identity.introspections] == ["revoked", "active", "unknown"]
    # The token of the other user was active, but for another mailbox: Dovecot compared the username itself.
    assert _sasl_login(oauth2_dovecot, "XOAUTH2", other.user, others.access_token)[0]


@pytest.mark.imap
def test_the_session_log_shows_which_sessions_outlived_their_token(oauth2_dovecot):
    # Given one session that logs out at once and one that stays open past its token's expiry
    account = oauth2_dovecot.new_account()
    identity, server = oauth2_dovecot.identity, oauth2_dovecot.server
    assert _sasl_login(oauth2_dovecot, "XOAUTH2", account.user, identity.issue_token(account.user, 30).access_token)[0]
    lingering = identity.issue_token(account.user, lifetime=2)
    client = imaplib.IMAP4_SSL(server.host, server.ssl_port, ssl_context=server.ssl_context(), timeout=10)
    client.authenticate("OAUTHBEARER", lambda _: _initial_response("OAUTHBEARER", account.user,
                                                                    lingering.access_token))
    try:
        client.select("INBOX")
        time.sleep(2.2)
        assert client.noop()[0] == "OK"  # Dovecot itself never ends a session whose token expired
    finally:
        client.logout()

    # Then the pairing finds both sessions, and only the lingering one outlived its token
    deadline = time.monotonic() + 5
    while any(item.session.ended_at is None for item in oauth2_dovecot.token_sessions()):
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.05)
    sessions = oauth2_dovecot.token_sessions()
    assert [item.session.method for item in sessions] == ["XOAUTH2", "OAUTHBEARER"]
    assert all(item.introspection is not None for item in sessions)
    outlived = oauth2_dovecot.sessions_outliving_tokens()
    assert [item.session.session for item in outlived] == [sessions[1].session.session]
    assert outlived[0].introspection.fingerprint == lingering.fingerprint


@pytest.mark.imap
def test_introspection_over_https_trusts_only_the_configured_ca(make_oauth2_dovecot):
    # Dovecot reached the https provider through tls_ca_cert_file in the tests above; here the client side.
    oauth2 = make_oauth2_dovecot(tls=True)
    identity = oauth2.identity
    assert identity.introspection_url.startswith("https://127.0.0.1:")
    token = identity.issue_token("someone", lifetime=30)
    answer = requests.post(identity.introspection_url, data={"token": token.access_token}, verify=identity.ca_file,
                           timeout=10)
    assert answer.json()["active"] is True and answer.json()["username"] == "someone"
    with pytest.raises(requests.exceptions.SSLError):
        requests.post(identity.introspection_url, data={"token": token.access_token}, timeout=10)
    with socket.create_connection(("127.0.0.1", identity.port), timeout=5) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")
    for name in ("127.0.0.1", "localhost"):
        with socket.create_connection(("127.0.0.1", identity.port), timeout=5) as raw:
            with identity.ssl_context().wrap_socket(raw, server_hostname=name) as sock:
                assert sock.version() in ("TLSv1.2", "TLSv1.3")


@pytest.mark.imap
def test_stopping_leaves_no_process_thread_or_listener(make_oauth2_dovecot):
    oauth2 = make_oauth2_dovecot()
    account = oauth2.new_account()
    assert _sasl_login(oauth2, "XOAUTH2", account.user, oauth2.identity.issue_token(account.user, 30).access_token)[0]
    assert oauth2.server.proc is not None
    master = psutil.Process(oauth2.server.proc.pid)
    processes = [master, *master.children(recursive=True)]
    assert len(processes) > 1
    ports = (oauth2.identity.port, oauth2.server.port, oauth2.server.ssl_port)
    idle = socket.create_connection(("127.0.0.1", oauth2.identity.port), timeout=5)  # an idle keep-alive client

    oauth2.stop()

    idle.close()
    gone, alive = psutil.wait_procs(processes, timeout=5)
    assert alive == []
    assert oauth2.identity.threads == []
    assert not [t for t in threading.enumerate() if t.name.startswith("identity-provider")]
    for port in ports:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)


# --- token endpoint ----------------------------------------------------------------------------------------------

def test_refresh_tokens_rotate_and_a_used_one_is_refused(identity_provider):
    # Given the initial refresh token of a user
    initial = identity_provider.issue_refresh_token("alice")

    # When it is used once
    first = _post(identity_provider.microsoft_token_url(), identity_provider,
                  {**CLIENT, "grant_type": "refresh_token", "refresh_token": initial})

    # Then the answer holds a new refresh token and a short-lived access token for alice
    body = first.json()
    assert first.status_code == 200 and first.headers["Cache-Control"] == "no-store"
    assert body["token_type"] == "Bearer" and body["expires_in"] == identity_provider.lifetime
    assert body["refresh_token"] != initial and body["scope"]
    assert identity_provider.token_info(body["access_token"]).user == "alice"
    assert identity_provider.latest_refresh_token(initial) == body["refresh_token"]
    # and the old one is now refused like Microsoft refuses an expired one
    again = _post(identity_provider.token_url, identity_provider,
                  {**CLIENT, "grant_type": "refresh_token", "refresh_token": initial})
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"
    assert again.json()["error_description"].startswith("AADSTS700082:")
    assert again.json()["error_codes"] == [700082]
    # while the rotated one works (and rotates in turn)
    second = _post(identity_provider.token_url, identity_provider,
                   {**CLIENT, "grant_type": "refresh_token", "refresh_token": body["refresh_token"]})
    assert second.status_code == 200 and second.json()["refresh_token"] != body["refresh_token"]


def test_two_refreshes_racing_with_one_refresh_token_get_one_success_and_one_invalid_grant(identity_provider):
    # What two service processes refreshing at the same moment without a lock would meet
    initial = identity_provider.issue_refresh_token("alice")
    barrier = threading.Barrier(8)
    statuses: list[int] = []

    def refresh() -> None:
        barrier.wait(5)
        statuses.append(_post(identity_provider.token_url, identity_provider,
                              {**CLIENT, "grant_type": "refresh_token", "refresh_token": initial}).status_code)

    threads = [threading.Thread(target=refresh) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert sorted(statuses) == [200] + [400] * 7
    refused = [item for item in identity_provider.requests if item.error == "invalid_grant"]
    assert len(refused) == 7


def test_without_rotation_a_refresh_answers_no_new_refresh_token_and_the_old_one_stays(make_identity_provider):
    provider = make_identity_provider(rotate_refresh_tokens=False)
    kept = provider.issue_refresh_token("alice")
    answers = [_post(provider.token_url, provider, {**CLIENT, "grant_type": "refresh_token", "refresh_token": kept})
               for _ in range(2)]
    assert [answer.status_code for answer in answers] == [200, 200]
    assert all("refresh_token" not in answer.json() for answer in answers)
    assert provider.latest_refresh_token(kept) == kept
    provider.revoke(kept)
    revoked = _post(provider.token_url, provider, {**CLIENT, "grant_type": "refresh_token", "refresh_token": kept})
    assert revoked.status_code == 400 and revoked.json()["error"] == "invalid_grant"


def test_revoking_a_refresh_token_revokes_its_whole_rotation_chain_but_not_other_grants(identity_provider):
    initial = identity_provider.issue_refresh_token("alice")
    unrelated = identity_provider.issue_refresh_token("alice")
    rotated = _post(identity_provider.token_url, identity_provider,
                    {**CLIENT, "grant_type": "refresh_token", "refresh_token": initial}).json()

    assert identity_provider.revoke(initial) == 2

    refused = _post(identity_provider.token_url, identity_provider,
                    {**CLIENT, "grant_type": "refresh_token", "refresh_token": rotated["refresh_token"]})
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    assert identity_provider.latest_refresh_token(initial) is None
    # access tokens already issued live on until they expire, as at Microsoft
    assert identity_provider.token_info(rotated["access_token"]) is not None
    answer = _post(identity_provider.introspection_url, identity_provider, {"token": rotated["access_token"]})
    assert answer.json()["active"] is True
    ok = _post(identity_provider.token_url, identity_provider,
               {**CLIENT, "grant_type": "refresh_token", "refresh_token": unrelated})
    assert ok.status_code == 200
    assert identity_provider.revoke() == 1  # everything left: the rotated successor of ``unrelated``


def test_client_credentials_accept_a_secret_in_the_body_or_basic_auth_and_refuse_a_wrong_one(identity_provider):
    identity_provider.add_client("app", "app-secret", mailboxes=["service@example.com"])
    form = {"grant_type": GRANT_CLIENT_CREDENTIALS, "scope": MICROSOFT_APP_SCOPE}

    in_body = _post(identity_provider.microsoft_token_url(), identity_provider,
                    {**form, "client_id": "app", "client_secret": "app-secret"})
    basic = _post(identity_provider.microsoft_token_url(), identity_provider, form,
                  headers={"Authorization": "Basic " + base64.b64encode(b"app:app-secret").decode()})
    wrong = _post(identity_provider.microsoft_token_url(), identity_provider,
                  {**form, "client_id": "app", "client_secret": "nope"})
    missing = _post(identity_provider.microsoft_token_url(), identity_provider, {**form, "client_id": "app"})
    unknown = _post(identity_provider.microsoft_token_url(), identity_provider,
                    {**form, "client_id": "who", "client_secret": "x"})

    assert in_body.status_code == basic.status_code == 200
    assert "refresh_token" not in in_body.json() and in_body.json()["scope"] == MICROSOFT_APP_SCOPE
    assert identity_provider.token_info(in_body.json()["access_token"]).user == "service@example.com"
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    assert wrong.json()["error_description"].startswith("AADSTS7000215:")
    assert missing.status_code == 401 and missing.json()["error_description"].startswith("AADSTS7000218:")
    assert unknown.status_code == 400 and unknown.json()["error"] == "unauthorized_client"
    assert all("app-secret" not in repr(item) for item in identity_provider.requests)


def _client_assertion(client_id: str, audience: str) -> str:
    """What MSAL sends for a certificate credential: an RS256 JWT with the certificate's thumbprint."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    header = {"alg": "RS256", "typ": "JWT", "x5t": b64encode(b"0" * 20)}
    now = int(time.time())
    claims = {"aud": audience, "iss": client_id, "sub": client_id, "jti": "id-1", "nbf": now, "exp": now + 600}
    signing_input = f"{b64encode(json.dumps(header).encode())}.{b64encode(json.dumps(claims).encode())}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64encode(signature)}"


def test_client_credentials_with_a_certificate_assertion_are_accepted_and_recorded(identity_provider_tls):
    provider = identity_provider_tls
    provider.add_client("cert-app", mailboxes=["service@example.com"])
    url = provider.microsoft_token_url()
    form = {"grant_type": GRANT_CLIENT_CREDENTIALS, "scope": MICROSOFT_APP_SCOPE, "client_id": "cert-app",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}

    accepted = _post(url, provider, {**form, "client_assertion": _client_assertion("cert-app", url)})
    malformed = _post(url, provider, {**form, "client_assertion": "not.a-jwt"})
    foreign = _post(url, provider, {**form, "client_assertion": _client_assertion("other-app", url)})

    assert accepted.status_code == 200 and accepted.json()["access_token"]
    assert malformed.status_code == foreign.status_code == 401
    [recorded] = provider.client_assertions
    assert recorded["client_id"] == "cert-app" and recorded["claims"]["aud"] == url
    assert recorded["header"]["alg"] == "RS256" and "x5t" in recorded["header"]


@pytest.mark.imap
def test_an_app_token_signs_in_to_its_clients_mailbox(oauth2_dovecot):
    identity = oauth2_dovecot.identity
    account = oauth2_dovecot.new_account()
    identity.add_client("app", "app-secret", mailboxes=[account.user])
    answer = _post(identity.microsoft_token_url(), identity, {"grant_type": GRANT_CLIENT_CREDENTIALS,
                                                               "client_id": "app", "client_secret": "app-secret",
                                                               "scope": MICROSOFT_APP_SCOPE})
    assert _sasl_login(oauth2_dovecot, "XOAUTH2", account.user, answer.json()["access_token"])[0]


def test_set_lifetime_and_issue_token_control_expires_in_and_introspection(identity_provider):
    identity_provider.set_lifetime(2)
    body = _post(identity_provider.token_url, identity_provider,
                 {**CLIENT, "grant_type": "refresh_token",
                  "refresh_token": identity_provider.issue_refresh_token("alice")}).json()
    assert body["expires_in"] == 2
    short = identity_provider.issue_token("bob", lifetime=1)
    check = _post(identity_provider.introspection_url, identity_provider, {"token": short.access_token}).json()
    assert check["active"] is True and check["username"] == check["email"] == "bob"
    assert int(short.expires_at) == check["exp"]
    time.sleep(1.05)
    assert _post(identity_provider.introspection_url, identity_provider,
                 {"token": short.access_token}).json() == {"active": False}
    # a Bearer header and a query parameter work too (introspection_mode auth / get)
    live = identity_provider.issue_token("bob", lifetime=30)
    header = requests.get(identity_provider.introspection_url, timeout=10,
                          headers={"Authorization": f"Bearer {live.access_token}"}).json()
    query = requests.get(identity_provider.introspection_url, params={"token": live.access_token}, timeout=10).json()
    assert header["active"] and query["active"]


def test_the_introspection_log_holds_fingerprints_never_tokens(identity_provider):
    token = identity_provider.issue_token("alice")
    _post(identity_provider.introspection_url, identity_provider, {"token": token.access_token})
    _post(identity_provider.introspection_url, identity_provider, {"token": "forged"})
    first, second = identity_provider.introspections
    assert (first.fingerprint, first.active, first.user) == (fingerprint(token.access_token), True, "alice")
    assert first.expires_at == token.expires_at and first.at <= time.time()
    assert (second.active, second.reason, second.user) == (False, "unknown", None)
    logged = repr(identity_provider.introspections) + repr(identity_provider.requests) + repr(token)
    assert token.access_token not in logged and "forged" not in logged


# --- device flow -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tenant_urls", [False, True])
def test_the_device_flow_is_pending_until_approved_then_redeemed_once(identity_provider, tenant_urls):
    provider = identity_provider
    provider.add_client("public-app")  # a public client: no secret
    device_url = provider.microsoft_device_authorization_url() if tenant_urls else provider.device_authorization_url
    token_url = provider.microsoft_token_url() if tenant_urls else provider.token_url
    flow = _post(device_url, provider, {"client_id": "public-app", "scope": "IMAP.AccessAsUser.All offline_access"})
    started = flow.json()
    assert flow.status_code == 200
    assert set(started) >= {"device_code", "user_code", "verification_uri", "expires_in", "interval", "message"}
    assert started["verification_uri"].startswith(provider.base_url) and started["user_code"] in started["message"]
    poll = {"grant_type": GRANT_DEVICE_CODE, "client_id": "public-app", "device_code": started["device_code"]}

    pending = _post(token_url, provider, poll)
    provider.approve(started["user_code"], "alice")
    approved = _post(token_url, provider, poll)
    redeemed_again = _post(token_url, provider, poll)

    assert pending.status_code == 400 and pending.json()["error"] == "authorization_pending"
    assert approved.status_code == 200 and approved.json()["refresh_token"]
    assert provider.token_info(approved.json()["access_token"]).user == "alice"
    assert redeemed_again.status_code == 400 and redeemed_again.json()["error"] == "invalid_grant"
    refreshed = _post(token_url, provider, {"grant_type": "refresh_token", "client_id": "public-app",
                                            "refresh_token": approved.json()["refresh_token"]})
    assert refreshed.status_code == 200


def test_a_denied_or_expired_device_flow_ends_with_its_rfc_8628_error(make_identity_provider):
    provider = make_identity_provider(device_expires_in=1)
    codes = [_post(provider.device_authorization_url, provider, {"client_id": DEFAULT_CLIENT_ID}).json()
             for _ in range(2)]
    provider.deny(codes[0]["user_code"])
    time.sleep(1.05)
    answers = [_post(provider.token_url, provider, {**CLIENT, "grant_type": GRANT_DEVICE_CODE,
                                                    "device_code": code["device_code"]}).json()["error"]
               for code in codes]
    assert answers == ["access_denied", "expired_token"]
    with pytest.raises(ValueError):
        provider.approve(codes[0]["user_code"], "alice")


# --- Google service account ---------------------------------------------------------------------------------------

def _google_assertion(key_file: dict, subject: str, scope: str = GOOGLE_MAIL_SCOPE, lifetime: int = 3600,
                      sign_with=None, audience: str = GOOGLE_TOKEN_AUDIENCE) -> str:
    """The grant google-auth makes from a key file: an RS256 JWT, ``kid`` = the key id, ``aud`` = Google's token
    endpoint (google-auth sends that whatever the file's ``token_uri``; the fake also takes its own URL)."""
    key = sign_with or serialization.load_pem_private_key(key_file["private_key"].encode(), password=None)
    now = int(time.time())
    header = {"alg": "RS256", "typ": "JWT", "kid": key_file["private_key_id"]}
    claims = {"iss": key_file["client_email"], "scope": scope, "aud": audience, "iat": now,
              "exp": now + lifetime, "sub": subject}
    signing_input = f"{b64encode(json.dumps(header).encode())}.{b64encode(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64encode(key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()))}"


@pytest.mark.imap
def test_a_service_account_file_gets_a_token_for_its_subject_by_jwt_bearer(oauth2_dovecot, tmp_path):
    identity = oauth2_dovecot.identity
    account = oauth2_dovecot.new_account()
    path = identity.write_service_account_file(str(tmp_path / "sa.json"))
    with open(path) as handle:
        key_file = json.load(handle)
    assert key_file["type"] == "service_account" and key_file["token_uri"] == identity.google_token_uri
    outside = [value for name, value in key_file.items() if name.endswith(("_uri", "_url")) and
               not value.startswith(identity.base_url)]
    assert outside == []  # nothing in the file points at Google

    answer = _post(key_file["token_uri"], identity, {"grant_type": GRANT_JWT_BEARER,
                                                     "assertion": _google_assertion(key_file, account.user)})

    body = answer.json()
    assert answer.status_code == 200 and body["token_type"] == "Bearer" and body["expires_in"] > 0
    assert "refresh_token" not in body
    assert _sasl_login(oauth2_dovecot, "XOAUTH2", account.user, body["access_token"])[0]


def test_a_jwt_bearer_grant_signed_by_another_key_or_too_long_is_refused(identity_provider, tmp_path):
    with open(identity_provider.write_service_account_file(str(tmp_path / "sa.json"))) as handle:
        key_file = json.load(handle)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = {"forged": _google_assertion(key_file, "alice", sign_with=stranger),
             "too long": _google_assertion(key_file, "alice", lifetime=7200),
             "no scope": _google_assertion(key_file, "alice", scope=""),
             "other audience": _google_assertion(key_file, "alice", audience="https://example.com/token"),
             "own token_uri": _google_assertion(key_file, "alice", audience=key_file["token_uri"])}
    answers = {name: _post(identity_provider.google_token_uri, identity_provider,
                           {"grant_type": GRANT_JWT_BEARER, "assertion": assertion}).json()
               for name, assertion in cases.items()}
    assert answers["forged"] == {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
    assert answers["too long"]["error"] == "invalid_grant" and "short-lived" in answers["too long"]["error_description"]
    assert answers["no scope"]["error"] == "invalid_scope"
    assert answers["other audience"]["error"] == "invalid_grant"
    assert answers["own token_uri"]["access_token"]


# --- Microsoft discovery -------------------------------------------------------------------------------------------

def test_microsoft_discovery_documents_point_back_at_the_fake(identity_provider_tls):
    provider = identity_provider_tls
    # What MSAL fetches for the authority {authority_host}/{tenant} once instance discovery is off
    config = requests.get(f"{provider.authority()}/v2.0/.well-known/openid-configuration", verify=provider.ca_file,
                          timeout=10).json()
    assert config["token_endpoint"] == provider.microsoft_token_url()
    assert config["device_authorization_endpoint"] == provider.microsoft_device_authorization_url()
    assert config["authorization_endpoint"] == f"{provider.authority()}/oauth2/v2.0/authorize"
    assert config["issuer"] == f"{provider.authority()}/v2.0"
    # MSAL takes the tenant from the token endpoint's first path segment
    assert config["token_endpoint"].split("/")[3] == provider.tenant
    # The instance discovery answer, for a client pointed at it
    instance = requests.get(f"{provider.base_url}/common/discovery/instance", verify=provider.ca_file, timeout=10,
                            params={"api-version": "1.1",
                                    "authorization_endpoint": f"{provider.authority()}/oauth2/v2.0/authorize"})
    assert instance.json()["tenant_discovery_endpoint"] == (f"{provider.authority()}/v2.0/.well-known/"
                                                            "openid-configuration")
    generic = requests.get(f"{provider.base_url}/.well-known/openid-configuration", verify=provider.ca_file,
                           timeout=10).json()
    assert generic["token_endpoint"] == provider.token_url
    assert generic["introspection_endpoint"] == provider.introspection_url


# --- transient failures ----------------------------------------------------------------------------------------

def test_fail_next_injects_server_errors_timeouts_drops_and_oauth_errors_then_recovers(identity_provider):
    provider = identity_provider
    provider.fail_next(1, 503, retry_after=0)
    provider.fail_next(1, 500, delay=1.0)
    provider.fail_next(1, drop=True)
    provider.fail_next(1, 400, error="invalid_grant", description="AADSTS65001: The user or administrator has not "
                                                                  "consented to use the application.")
    form = {**CLIENT, "grant_type": GRANT_CLIENT_CREDENTIALS, "scope": MICROSOFT_APP_SCOPE}

    unavailable = _post(provider.token_url, provider, form)
    with requests.Session() as session:
        with pytest.raises(requests.exceptions.Timeout):
            session.post(provider.token_url, data=form, timeout=0.3)
        with pytest.raises(requests.exceptions.ConnectionError):
            session.post(provider.token_url, data=form, timeout=5)
    consent = _post(provider.token_url, provider, form)
    recovered = _post(provider.token_url, provider, form)

    assert unavailable.status_code == 503 and unavailable.headers["Retry-After"] == "0"
    assert unavailable.json()["error"] == "temporarily_unavailable"
    assert consent.status_code == 400 and consent.json()["error_codes"] == [65001]
    assert recovered.status_code == 200
    # recorded when answered: the delayed one comes last, after the client gave up on it
    token_requests = provider.wait_for_requests(lambda item: item.endpoint == "token", count=5)
    assert sorted(item.status for item in token_requests if item.injected) == [400, 500, 503, 503]
    assert [item.status for item in token_requests if not item.injected] == [200]
    # failures aimed at one endpoint leave the others alone
    provider.fail_next(1, 503, endpoint="introspect")
    assert _post(provider.token_url, provider, form).status_code == 200
    assert _post(provider.introspection_url, provider, {"token": "x"}).status_code == 503
    with pytest.raises(ValueError):
        provider.fail_next(1, endpoint="nowhere")
