"""A fake OAuth2 identity provider on 127.0.0.1 for the tests: it plays the Microsoft identity platform v2.0, a
generic RFC 6749 provider and Google's token endpoint, and answers Dovecot's RFC 7662 introspection.

One threaded HTTP server (werkzeug, a Flask app) on a free port, plain ``http`` or ``https`` with a throw-away CA
(``ca_file``: MSAL only accepts an https authority). No test using it talks to an outside host: every URL it hands
out (discovery document, service-account key file, device-flow verification page) points back at itself.

Endpoints (the shapes are the providers' documented ones):

- token, RFC 6749 section 3.2: ``POST /oauth2/token``, ``/token`` (Google's path) and Microsoft's
  ``/{tenant}/oauth2/v2.0/token``. Grants: ``refresh_token`` (rotated: every use issues a new refresh token and
  the old one answers ``400 invalid_grant`` with ``AADSTS700082``, as does a revoked one; or, with
  ``rotate_refresh_tokens=False``, kept as Google does), ``client_credentials``
  (``client_secret`` in the body or HTTP Basic, or a ``client_assertion`` JWT as MSAL builds for a certificate:
  any well-formed one is accepted and recorded in ``client_assertions``), the RFC 8628 device code grant, and the
  RFC 7523 ``jwt-bearer`` grant of a Google service account (RS256, verified against a key file the fake wrote).
  Access tokens are random opaque strings living ``lifetime`` seconds.
- Microsoft discovery, as MSAL does it: ``GET /{tenant}/v2.0/.well-known/openid-configuration`` and the
  instance discovery ``GET /common/discovery/instance`` (MSAL sends that one to login.microsoftonline.com unless
  the client passes ``instance_discovery=False``; it is served here for clients pointed at it explicitly).
- device authorization, RFC 8628 section 3.1: ``POST /oauth2/devicecode`` and ``/{tenant}/oauth2/v2.0/devicecode``;
  ``approve(user_code, user)`` lets the device code grant succeed (``authorization_pending`` before).
- introspection, RFC 7662: ``POST /introspect`` (``token=`` form field, Dovecot's ``introspection_mode = post``;
  ``GET ?token=`` and a Bearer header work too). Every call is logged in ``introspections`` with a fingerprint of
  the token, never the token.

Test controls: ``add_client``, ``issue_token``, ``issue_refresh_token``, ``latest_refresh_token``, ``revoke``,
``set_lifetime``, ``fail_next`` (5xx or OAuth errors, delays, dropped connections), ``approve``/``deny``,
``write_service_account_file``, the logs ``requests``, ``introspections``, ``client_assertions`` and
``wait_for_requests``.

Clients (checked with msal 1.39 and google-auth 2.63 outside the project's venv): MSAL takes
``authority=provider.authority()`` with ``instance_discovery=False`` (else it asks login.microsoftonline.com),
and its CA through ``http_client=`` a ``requests.Session`` whose ``verify`` is ``ca_file`` and whose
``trust_env`` is off: with ``REQUESTS_CA_BUNDLE`` set in the environment, requests prefers it to a session's
``verify`` (MSAL's own ``verify=`` loses the same way). google-auth needs the same session in its
``Request(session)``. MSAL treats a token with less than 5 minutes left as expired, so with lifetimes of seconds
every call reaches the token endpoint; it replays a 5xx without ``Retry-After`` for 5 s and a 400 for 60 s from its
own HTTP cache (``fail_next(..., retry_after=0)`` avoids the first).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import unquote_plus

from flask import Flask, Response, g, request
from werkzeug.serving import ThreadedWSGIServer

from harness.connections import ConnectionThreads
from harness.dovecot import DovecotOAuth2
from harness.flask_server import QuietHandler as _QuietHandler  # no access log: a request line may hold a token
from harness.identity_jwt import JwtError, ServiceAccountKey, check_times, parse_jwt

HOST = "127.0.0.1"
JOIN_TIMEOUT_SECONDS = 5.0

DEFAULT_TENANT = "render-signal-test-tenant"
DEFAULT_CLIENT_ID = "render-signal-test-client"
DEFAULT_CLIENT_SECRET = "render-signal-test-secret"
MICROSOFT_APP_SCOPE = "https://outlook.office365.com/.default"
MICROSOFT_DELEGATED_SCOPE = "https://outlook.office.com/IMAP.AccessAsUser.All offline_access"
GOOGLE_MAIL_SCOPE = "https://mail.google.com/"
# google-auth puts Google's token endpoint in a service account's ``aud`` whatever the key file's ``token_uri``
# (google/oauth2/service_account.py): a string compared here, never a URL anything connects to.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"

GRANT_REFRESH = "refresh_token"
GRANT_CLIENT_CREDENTIALS = "client_credentials"
GRANT_DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"
GRANT_JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GRANT_AUTHORIZATION_CODE = "authorization_code"
CLIENT_ASSERTION_TYPE_JWT = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

ENDPOINTS = ("token", "devicecode", "introspect", "discovery")
_USER_CODE_LETTERS = "BCDFGHJKLMNPQRSTVWXZ"  # RFC 8628 section 6.1: no vowels, no look-alikes


def fingerprint(token: str) -> str:
    """What the logs show instead of a token: the first 12 hex digits of its SHA-256."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class IssuedToken:
    """An access token the fake issued: ``user`` is the mailbox it introspects as; an app token also lists its
    client's ``mailboxes``."""

    access_token: str = field(repr=False)
    user: str | None
    client_id: str | None
    scope: str
    grant: str
    issued_at: float
    expires_at: float
    mailboxes: tuple[str, ...] = ()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.access_token)

    @property
    def lifetime(self) -> int:
        return int(round(self.expires_at - self.issued_at))


@dataclass(frozen=True)
class Introspection:
    """One RFC 7662 call: when, for which token (fingerprint), what the fake answered."""

    at: float
    fingerprint: str
    active: bool
    user: str | None
    expires_at: float | None
    reason: str  # "active", "unknown", "expired", "revoked", "no-mailbox"


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request to the fake (never a token or secret in it)."""

    at: float
    method: str
    path: str
    endpoint: str
    status: int
    grant_type: str | None
    client_id: str | None
    error: str | None
    injected: bool  # answered by ``fail_next``


@dataclass(frozen=True)
class DeviceFlow:
    device_code: str = field(repr=False)
    user_code: str
    client_id: str
    scope: str
    expires_at: float
    status: str = "pending"  # "pending", "approved", "denied", "used"
    user: str | None = None


@dataclass(frozen=True)
class _AuthorizationCode:
    client_id: str
    redirect_uri: str
    code_challenge: str
    scope: str
    user: str


@dataclass
class _Client:
    client_id: str
    secret: str | None
    mailboxes: tuple[str, ...]


@dataclass
class _RefreshGrant:
    user: str
    client_id: str
    scope: str
    family: int
    state: str = "active"  # "active", "used" (rotated), "revoked"


@dataclass(frozen=True)
class _Failure:
    endpoint: str
    status: int
    error: str | None
    description: str | None
    delay: float
    drop: bool
    retry_after: int | None


class OAuthError(Exception):
    """Raised inside a handler: answered as an RFC 6749 section 5.2 error body."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


def _error_body(error: str, description: str) -> dict[str, Any]:
    """Microsoft's error shape (a superset of RFC 6749's): the AADSTS number also goes into ``error_codes``."""
    body: dict[str, Any] = {"error": error, "error_description": description}
    match = re.match(r"AADSTS(\d+)", description)
    if match:
        body.update(error_codes=[int(match.group(1))], timestamp=time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
                    trace_id=str(uuid.uuid4()), correlation_id=str(uuid.uuid4()))
    return body


def _json(body: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    # RFC 6749 section 5.1: token answers must not be cached.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


class _Server(ThreadedWSGIServer):
    """One tracked thread per connection, TLS handshake inside it, so ``stop`` can close and join them all."""

    def __init__(self, owner: "IdentityProvider", app: Flask) -> None:
        self.owner = owner
        super().__init__(HOST, 0, app, handler=_QuietHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.owner.connections.serve(self, request, client_address)


class IdentityProvider:
    """The fake provider. ``start()`` listens, ``stop()`` closes every connection and joins every thread."""

    def __init__(self, *, tls: bool = False, lifetime: int = 3600, tenant: str = DEFAULT_TENANT,
                 device_interval: int = 1, device_expires_in: int = 900, rotate_refresh_tokens: bool = True) -> None:
        """``rotate_refresh_tokens=False`` answers a refresh like Google: no new refresh token, the old one stays."""
        self.tenant = tenant
        self.lifetime = int(lifetime)
        self.device_interval = device_interval
        self.device_expires_in = device_expires_in
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.dir = tempfile.mkdtemp(prefix="idp-")
        os.chmod(self.dir, 0o755)  # Dovecot's auth process reads ca_file from here
        self.ca_file: str | None = None
        self._tls: ssl.SSLContext | None = self._make_tls() if tls else None
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._clients: dict[str, _Client] = {}
        self._access: dict[str, IssuedToken] = {}
        self._revoked_access: set[str] = set()
        self._refresh: dict[str, _RefreshGrant] = {}
        self._families = itertools.count(1)
        self._devices: dict[str, DeviceFlow] = {}
        self._codes: dict[str, _AuthorizationCode] = {}
        self.browser_user: str | None = None  # who signs in at /oauth2/authorize (None: the sign-in is refused)
        self._service_accounts: dict[str, ServiceAccountKey] = {}
        self._failures: list[_Failure] = []
        self._requests: list[RecordedRequest] = []
        self._introspections: list[Introspection] = []
        self._assertions: list[dict[str, Any]] = []
        self._server: _Server | None = None
        self._serve_thread: threading.Thread | None = None
        self.connections = ConnectionThreads("identity-provider-conn", self._tls, _QuietHandler.timeout)
        self.port = 0
        self.add_client(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)
        self.app = self._make_app()

    # --- life cycle -------------------------------------------------------------------------------------------

    def _make_tls(self) -> ssl.SSLContext:
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = os.path.join(self.dir, "ca.pem")
        ca.cert_pem.write_to_path(self.ca_file)
        os.chmod(self.ca_file, 0o644)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        return context

    def start(self) -> "IdentityProvider":
        server = _Server(self, self.app)
        self.port = server.server_address[1]
        self._server = server
        self._serve_thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                              name="identity-provider", daemon=True)
        self._serve_thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and every open connection, join the threads; raise if one does not end."""
        self._stopping.set()
        server, self._server = self._server, None
        try:
            if server is not None:
                server.shutdown()
                server.server_close()
                if self._serve_thread is not None:
                    self._serve_thread.join(JOIN_TIMEOUT_SECONDS)
            self.connections.close_all()
            alive = self.connections.join(JOIN_TIMEOUT_SECONDS)
            if alive or (self._serve_thread is not None and self._serve_thread.is_alive()):
                raise RuntimeError(f"identity provider: {len(alive)} connection thread(s) still running after stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "IdentityProvider":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def threads(self) -> list[threading.Thread]:
        """The server's threads still alive (the accept loop and one per open connection)."""
        threads = self.connections.threads
        if self._serve_thread is not None:
            threads.append(self._serve_thread)
        return [thread for thread in threads if thread.is_alive()]

    # --- URLs -------------------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"{'https' if self._tls else 'http'}://{HOST}:{self.port}"

    @property
    def token_url(self) -> str:
        """The generic RFC 6749 token endpoint (``OAUTH_TOKEN_URL``)."""
        return f"{self.base_url}/oauth2/token"

    @property
    def google_token_uri(self) -> str:
        return f"{self.base_url}/token"

    @property
    def device_authorization_url(self) -> str:
        """The generic RFC 8628 endpoint (``OAUTH_DEVICE_AUTHORIZATION_URL``)."""
        return f"{self.base_url}/oauth2/devicecode"

    @property
    def introspection_url(self) -> str:
        return f"{self.base_url}/introspect"

    @property
    def authority_host(self) -> str:
        """``OAUTH_AUTHORITY_HOST``: MSAL's authority is ``{authority_host}/{tenant}``."""
        return self.base_url

    def authority(self, tenant: str | None = None) -> str:
        return f"{self.base_url}/{tenant or self.tenant}"

    def microsoft_token_url(self, tenant: str | None = None) -> str:
        return f"{self.authority(tenant)}/oauth2/v2.0/token"

    def microsoft_device_authorization_url(self, tenant: str | None = None) -> str:
        return f"{self.authority(tenant)}/oauth2/v2.0/devicecode"

    def dovecot_oauth2(self) -> DovecotOAuth2:
        """The settings for ``DovecotServer(oauth2=...)``: Dovecot checks every login against this fake."""
        return DovecotOAuth2(introspection_url=self.introspection_url, ca_file=self.ca_file)

    def ssl_context(self) -> ssl.SSLContext:
        """A verifying client context trusting the fake's CA (the system store when it serves plain http)."""
        return ssl.create_default_context(cafile=self.ca_file)

    # --- test controls ----------------------------------------------------------------------------------------

    def add_client(self, client_id: str, secret: str | None = None, *, mailboxes: tuple[str, ...] | list[str] = ()
                   ) -> None:
        """Register an app. ``secret=None``: a public client (device flow, refresh) or a certificate client (it
        must send a client assertion for ``client_credentials``). ``mailboxes``: who its app-only tokens open."""
        with self._lock:
            self._clients[client_id] = _Client(client_id, secret, tuple(mailboxes))

    def set_lifetime(self, seconds: int) -> None:
        """Lifetime (``expires_in``) of access tokens issued from now on."""
        self.lifetime = int(seconds)

    def issue_token(self, user: str, lifetime: int | None = None, *, scope: str = MICROSOFT_DELEGATED_SCOPE,
                    client_id: str | None = DEFAULT_CLIENT_ID) -> IssuedToken:
        """An access token bound to mailbox ``user``, as if a grant had just run."""
        return self._issue_access(user, client_id, scope, "test", lifetime)

    def issue_refresh_token(self, user: str, *, client_id: str = DEFAULT_CLIENT_ID,
                            scope: str = MICROSOFT_DELEGATED_SCOPE) -> str:
        """A new refresh token for ``user`` (a new family: revoking another family leaves it valid)."""
        with self._lock:
            return self._new_refresh(user, client_id, scope, next(self._families))

    def latest_refresh_token(self, refresh_token: str) -> str | None:
        """The newest active refresh token of ``refresh_token``'s rotation chain (None once revoked)."""
        with self._lock:
            grant = self._refresh.get(refresh_token)
            if grant is None:
                return None
            for token, other in reversed(list(self._refresh.items())):
                if other.family == grant.family and other.state == "active":
                    return token
        return None

    def revoke(self, token: str | None = None) -> int:
        """Revoke one refresh token's whole rotation chain, or one access token, or (``None``) every refresh
        token. Access tokens already issued stay valid until they expire, as at Microsoft. Returns how many."""
        with self._lock:
            if token is None:
                grants = [grant for grant in self._refresh.values() if grant.state == "active"]
            elif token in self._access:
                self._revoked_access.add(token)
                return 1
            elif token in self._refresh:
                family = self._refresh[token].family
                grants = [grant for grant in self._refresh.values() if grant.family == family]
            else:
                raise KeyError("the fake never issued this token")
            for grant in grants:
                grant.state = "revoked"
            return len(grants)

    def revoke_access_tokens(self, user: str | None = None) -> int:
        """Make every access token (of ``user``) inactive at once; returns how many."""
        with self._lock:
            tokens = [t for t, issued in self._access.items() if user is None or issued.user == user]
            self._revoked_access.update(tokens)
            return len(tokens)

    def fail_next(self, n: int = 1, status: int = 503, *, endpoint: str = "token", error: str | None = None,
                  description: str | None = None, delay: float = 0.0, drop: bool = False,
                  retry_after: int | None = None) -> None:
        """Answer the next ``n`` requests to ``endpoint`` (one of ``ENDPOINTS``) with ``status`` and an OAuth
        error body (``error``/``description``, e.g. ``"invalid_grant"``, ``"AADSTS65001: ..."`` for a consent
        error), after ``delay`` seconds (a timeout for a client with a shorter one), or ``drop`` the connection
        without an answer. ``retry_after`` adds that header (MSAL throttles a 5xx without it for 5 s)."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint is one of {ENDPOINTS}, not {endpoint!r}")
        failure = _Failure(endpoint, status, error, description, delay, drop, retry_after)
        with self._lock:
            self._failures.extend([failure] * n)

    def refresh_token_user(self, refresh_token: str) -> str | None:
        """Whom an active refresh token this provider issued signs in (None: unknown or no longer active)."""
        with self._lock:
            grant = self._refresh.get(refresh_token)
            return grant.user if grant is not None and grant.state == "active" else None

    def sign_in_browser_as(self, user: str | None) -> None:
        """Who the browser is signed in as at the authorization endpoint; None makes it answer access_denied."""
        self.browser_user = user

    def approve(self, user_code: str, user: str) -> None:
        """The user signed in on the verification page and entered ``user_code``: the device grant succeeds."""
        self._set_device_status(user_code, "approved", user)

    def deny(self, user_code: str) -> None:
        self._set_device_status(user_code, "denied", None)

    def _set_device_status(self, user_code: str, status: str, user: str | None) -> None:
        with self._lock:
            for code, flow in self._devices.items():
                if flow.user_code == user_code.upper():
                    if flow.status != "pending":
                        raise ValueError(f"device flow {user_code} is {flow.status}, not pending")
                    self._devices[code] = DeviceFlow(code, flow.user_code, flow.client_id, flow.scope,
                                                     flow.expires_at, status, user)
                    return
        raise KeyError(f"no device flow with user code {user_code!r}")

    @property
    def device_flows(self) -> list[DeviceFlow]:
        with self._lock:
            return list(self._devices.values())

    def service_account(self, client_email: str | None = None) -> ServiceAccountKey:
        """A new Google service account whose JWT grants the fake verifies with the account's public key."""
        email = client_email or f"render-signal-{secrets.token_hex(3)}@render-signal-test.iam.gserviceaccount.com"
        key = ServiceAccountKey(email)
        with self._lock:
            self._service_accounts[key.private_key_id] = key
        return key

    def write_service_account_file(self, path: str | None = None, *, client_email: str | None = None) -> str:
        """Write a Google-format service-account key file (``token_uri`` = this fake); returns its path."""
        key = self.service_account(client_email)
        path = path or os.path.join(self.dir, f"service-account-{key.private_key_id[:8]}.json")
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(key.file_content(self.google_token_uri, self.base_url), handle, indent=2)
        os.chmod(path, 0o600)
        return path

    # --- what was received ------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def introspections(self) -> list[Introspection]:
        with self._lock:
            return list(self._introspections)

    @property
    def client_assertions(self) -> list[dict[str, Any]]:
        """Every client assertion received: ``client_id``, ``header``, ``claims``, ``at`` (no signature)."""
        with self._lock:
            return list(self._assertions)

    @property
    def issued_tokens(self) -> list[IssuedToken]:
        with self._lock:
            return list(self._access.values())

    def token_info(self, access_token: str) -> IssuedToken | None:
        with self._lock:
            return self._access.get(access_token)

    def wait_for_requests(self, predicate: Callable[[RecordedRequest], bool], count: int = 1,
                          timeout: float = 10.0) -> list[RecordedRequest]:
        """Block until ``count`` recorded requests match ``predicate``; return the matching ones."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                matching = [item for item in self._requests if predicate(item)]
                if len(matching) >= count:
                    return matching
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"identity provider: {len(matching)} of {count} matching request(s) "
                                         f"after {timeout}s; last: {self._requests[-5:]}")
                self._cond.wait(remaining)

    def reset_logs(self) -> None:
        with self._lock:
            self._requests.clear()
            self._introspections.clear()
            self._assertions.clear()

    # --- state ------------------------------------------------------------------------------------------------

    def _issue_access(self, user: str | None, client_id: str | None, scope: str, grant: str,
                      lifetime: int | None = None, mailboxes: tuple[str, ...] = ()) -> IssuedToken:
        now = time.time()
        token = IssuedToken(access_token=secrets.token_urlsafe(32), user=user, client_id=client_id, scope=scope,
                            grant=grant, issued_at=now, expires_at=now + (self.lifetime if lifetime is None
                                                                          else int(lifetime)),
                            mailboxes=mailboxes)
        with self._lock:
            self._access[token.access_token] = token
        return token

    def _new_refresh(self, user: str, client_id: str, scope: str, family: int) -> str:
        token = "rt-" + secrets.token_urlsafe(32)
        self._refresh[token] = _RefreshGrant(user, client_id, scope, family)
        return token

    # --- HTTP -------------------------------------------------------------------------------------------------

    def _make_app(self) -> Flask:
        app = Flask("harness.identity")
        token = self._with_failures("token", self._token)
        for rule in ("/oauth2/token", "/token", "/<tenant>/oauth2/v2.0/token"):
            app.add_url_rule(rule, f"token {rule}", token, methods=["POST"])
        device = self._with_failures("devicecode", self._device_authorization)
        for rule in ("/oauth2/devicecode", "/<tenant>/oauth2/v2.0/devicecode"):
            app.add_url_rule(rule, f"devicecode {rule}", device, methods=["POST"])
        app.add_url_rule("/introspect", "introspect", self._with_failures("introspect", self._introspect),
                         methods=["GET", "POST"])
        app.add_url_rule("/<tenant>/v2.0/.well-known/openid-configuration", "openid-configuration",
                         self._with_failures("discovery", self._openid_configuration))
        app.add_url_rule("/.well-known/openid-configuration", "generic-openid-configuration",
                         self._with_failures("discovery", self._openid_configuration))
        app.add_url_rule("/common/discovery/instance", "instance-discovery",
                         self._with_failures("discovery", self._instance_discovery))
        app.add_url_rule("/devicelogin", "devicelogin", self._device_login_page)
        for rule in ("/oauth2/authorize", "/<tenant>/oauth2/v2.0/authorize"):
            app.add_url_rule(rule, f"authorize {rule}", self._authorize)
        app.after_request(self._record_request)
        return app

    def _with_failures(self, endpoint: str, handler: Callable[..., Response]) -> Callable[..., Response]:
        def view(**kwargs: str) -> Response:
            g.endpoint, g.injected, g.error = endpoint, False, None
            failure = self._take_failure(endpoint)
            if failure is not None:
                g.injected = True
                return self._fail(failure)
            try:
                return handler(**kwargs)
            except OAuthError as exc:
                g.error = exc.error
                return _json(_error_body(exc.error, exc.description), exc.status)

        return view

    def _take_failure(self, endpoint: str) -> _Failure | None:
        with self._lock:
            for index, failure in enumerate(self._failures):
                if failure.endpoint == endpoint:
                    return self._failures.pop(index)
        return None

    def _fail(self, failure: _Failure) -> Response:
        if failure.delay > 0:
            self._stopping.wait(failure.delay)
        if failure.drop:
            _ = request.form  # read the body first: the request is still recorded once its socket is shut
            conn = request.environ.get("werkzeug.socket")
            if conn is not None:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        error = failure.error or ("temporarily_unavailable" if failure.status >= 500 else "invalid_request")
        description = failure.description or f"AADSTS90033: injected failure (status {failure.status})."
        g.error = error
        headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else None
        return _json(_error_body(error, description), failure.status, headers)

    def _record_request(self, response: Response) -> Response:
        form = request.form if request.method == "POST" else request.args
        client_id = form.get("client_id") or _basic_auth(request.headers.get("Authorization"))[0]
        record = RecordedRequest(at=time.time(), method=request.method, path=request.path,
                                 endpoint=g.get("endpoint", "other"), status=response.status_code,
                                 grant_type=form.get("grant_type"), client_id=client_id, error=g.get("error"),
                                 injected=bool(g.get("injected")))
        with self._cond:
            self._requests.append(record)
            self._cond.notify_all()
        return response

    # --- discovery --------------------------------------------------------------------------------------------

    def _openid_configuration(self, tenant: str | None = None) -> Response:
        """Microsoft's per-tenant document (what MSAL reads: ``authorization_endpoint``, ``token_endpoint``,
        ``device_authorization_endpoint``); without a tenant, the generic endpoints (RFC 8414 fields)."""
        if tenant is None:
            return _json({"issuer": self.base_url, "token_endpoint": self.token_url,
                          "authorization_endpoint": f"{self.base_url}/oauth2/authorize",
                          "device_authorization_endpoint": self.device_authorization_url,
                          "introspection_endpoint": self.introspection_url,
                          "grant_types_supported": [GRANT_REFRESH, GRANT_CLIENT_CREDENTIALS, GRANT_DEVICE_CODE,
                                                    GRANT_JWT_BEARER]})
        authority = self.authority(tenant)
        return _json({
            "issuer": f"{authority}/v2.0",
            "token_endpoint": self.microsoft_token_url(tenant),
            "authorization_endpoint": f"{authority}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": self.microsoft_device_authorization_url(tenant),
            "jwks_uri": f"{authority}/discovery/v2.0/keys",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
        })

    def _instance_discovery(self) -> Response:
        """``/common/discovery/instance?authorization_endpoint=<authority>/oauth2/v2.0/authorize``."""
        endpoint = request.args.get("authorization_endpoint", "")
        match = re.match(rf"{re.escape(self.base_url)}/([^/]+)/", endpoint)
        if not match:
            raise OAuthError(400, "invalid_instance", "AADSTS50049: Unknown or invalid instance.")
        netloc = f"{HOST}:{self.port}"
        return _json({"tenant_discovery_endpoint": f"{self.authority(match.group(1))}/v2.0/.well-known/"
                                                   "openid-configuration",
                      "api-version": "1.1",
                      "metadata": [{"preferred_network": netloc, "preferred_cache": netloc, "aliases": [netloc]}]})

    def _device_login_page(self) -> Response:
        return Response("Enter the code shown by the device (test identity provider: tests call approve()).\n",
                        mimetype="text/plain")

    # --- token endpoint ---------------------------------------------------------------------------------------

    def _token(self, tenant: str | None = None) -> Response:
        grant_type = request.form.get("grant_type", "")
        grants: dict[str, Callable[[], Response]] = {
            GRANT_REFRESH: self._grant_refresh, GRANT_CLIENT_CREDENTIALS: self._grant_client_credentials,
            GRANT_DEVICE_CODE: self._grant_device_code, GRANT_JWT_BEARER: self._grant_jwt_bearer,
            GRANT_AUTHORIZATION_CODE: self._grant_authorization_code}
        grant = grants.get(grant_type)
        if grant is None:
            raise OAuthError(400, "unsupported_grant_type",
                             f"AADSTS70003: The app requested an unsupported grant type '{grant_type}'.")
        return grant()

    def _authenticate_client(self, *, credential_required: bool) -> _Client:
        """RFC 6749 section 2.3: a secret (body or HTTP Basic) or an RFC 7523 client assertion."""
        form = request.form
        basic_id, basic_secret = _basic_auth(request.headers.get("Authorization"))
        client_id = form.get("client_id") or basic_id
        with self._lock:
            client = self._clients.get(client_id or "")
        if client is None:
            raise OAuthError(400, "unauthorized_client", f"AADSTS700016: Application with identifier "
                                                         f"'{client_id}' was not found in the directory.")
        if form.get("client_assertion"):
            self._accept_assertion(client)
            return client
        secret = form.get("client_secret") or basic_secret
        if secret is not None:
            if client.secret is None or not hmac.compare_digest(secret, client.secret):
                raise OAuthError(401, "invalid_client", "AADSTS7000215: Invalid client secret provided.")
            return client
        if credential_required or client.secret is not None:
            raise OAuthError(401, "invalid_client", "AADSTS7000218: The request body must contain the following "
                                                    "parameter: 'client_assertion' or 'client_secret'.")
        return client

    def _accept_assertion(self, client: _Client) -> None:
        """Certificate credentials: any well-formed JWT issued by the client is accepted, and recorded."""
        if request.form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE_JWT:
            raise OAuthError(400, "invalid_request", "AADSTS50027: client_assertion_type must be "
                                                     f"{CLIENT_ASSERTION_TYPE_JWT}.")
        try:
            jwt = parse_jwt(request.form["client_assertion"])
        except JwtError as exc:
            raise OAuthError(401, "invalid_client", f"AADSTS50027: JWT token is invalid or malformed. {exc}") from None
        claims = jwt.claims
        if claims.get("iss") != client.client_id or claims.get("sub") != client.client_id or "aud" not in claims:
            raise OAuthError(401, "invalid_client", "AADSTS700023: Client assertion iss and sub must be the "
                                                    "client id, and it must have an aud.")
        with self._lock:
            self._assertions.append({"client_id": client.client_id, "header": jwt.header, "claims": claims,
                                     "at": time.time()})

    def _token_answer(self, issued: IssuedToken, refresh_token: str | None = None,
                      extra: Mapping[str, Any] | None = None) -> Response:
        body: dict[str, Any] = {"token_type": "Bearer", "scope": issued.scope, "expires_in": issued.lifetime,
                                "ext_expires_in": issued.lifetime, "access_token": issued.access_token}
        if refresh_token is not None:
            body["refresh_token"] = refresh_token
        if request.form.get("client_info") == "1" and issued.user:
            # MSAL asks for client_info and builds its account id from it (uid.utid).
            info = {"uid": hashlib.sha256(issued.user.encode()).hexdigest()[:32], "utid": self.tenant}
            body["client_info"] = base64.urlsafe_b64encode(json.dumps(info).encode()).rstrip(b"=").decode()
        body.update(extra or {})
        return _json(body)

    def _grant_client_credentials(self) -> Response:
        client = self._authenticate_client(credential_required=True)
        scope = request.form.get("scope", "")
        if not scope:
            raise OAuthError(400, "invalid_scope", "AADSTS1002012: The provided value for scope is not valid. "
                                                   "Client credential flows must have a scope value with /.default.")
        user = client.mailboxes[0] if client.mailboxes else None
        issued = self._issue_access(user, client.client_id, scope, GRANT_CLIENT_CREDENTIALS,
                                    mailboxes=client.mailboxes)
        return self._token_answer(issued)

    def _grant_refresh(self) -> Response:
        client = self._authenticate_client(credential_required=False)
        presented = request.form.get("refresh_token", "")
        with self._lock:
            grant = self._refresh.get(presented)
            if grant is None or grant.client_id != client.client_id:
                raise OAuthError(400, "invalid_grant", "AADSTS9002313: Invalid request. Request is malformed or "
                                                       "invalid (unknown refresh token).")
            if grant.state != "active":
                raise OAuthError(400, "invalid_grant", "AADSTS700082: The refresh token has expired or was "
                                                       f"{'revoked' if grant.state == 'revoked' else 'already used'}"
                                                       ". Sign in again.")
            scope = request.form.get("scope") or grant.scope
            rotated = None
            if self.rotate_refresh_tokens:
                grant.state = "used"
                rotated = self._new_refresh(grant.user, grant.client_id, grant.scope, grant.family)
        return self._token_answer(self._issue_access(grant.user, client.client_id, scope, GRANT_REFRESH), rotated)

    def _grant_device_code(self) -> Response:
        client = self._authenticate_client(credential_required=False)
        code = request.form.get("device_code", "")
        with self._lock:
            flow = self._devices.get(code)
            if flow is None or flow.client_id != client.client_id:
                raise OAuthError(400, "invalid_grant", "AADSTS70000: The provided device code is not valid.")
            if flow.status == "pending" and time.time() >= flow.expires_at:
                raise OAuthError(400, "expired_token", "AADSTS70019: Verification code expired.")
            if flow.status == "pending":
                raise OAuthError(400, "authorization_pending", "AADSTS70016: OAuth 2.0 device flow error. "
                                                               "Authorization is pending. Continue polling.")
            if flow.status == "denied":
                raise OAuthError(400, "access_denied", "AADSTS70000: The user declined the sign-in.")
            if flow.status == "used" or flow.user is None:
                raise OAuthError(400, "invalid_grant", "AADSTS70000: The device code was already redeemed.")
            self._devices[code] = DeviceFlow(code, flow.user_code, flow.client_id, flow.scope, flow.expires_at,
                                             "used", flow.user)
            refresh = self._new_refresh(flow.user, flow.client_id, flow.scope, next(self._families))
        return self._token_answer(self._issue_access(flow.user, client.client_id, flow.scope, GRANT_DEVICE_CODE),
                                  refresh)

    def _grant_jwt_bearer(self) -> Response:
        """Google's service-account grant: an RS256 JWT from a key file this fake wrote."""
        try:
            jwt = parse_jwt(request.form.get("assertion", ""))
            with self._lock:
                key = self._service_accounts.get(str(jwt.header.get("kid")))
            if key is None or jwt.claims.get("iss") != key.client_email:
                raise JwtError("Invalid JWT Signature.")  # Google's answer to a key it does not know
            key.verify(jwt)
            check_times(jwt.claims, time.time())
            if jwt.claims.get("aud") not in (GOOGLE_TOKEN_AUDIENCE, self.google_token_uri, self.token_url):
                raise JwtError(f"Invalid JWT: aud must be {GOOGLE_TOKEN_AUDIENCE} or {self.google_token_uri}")
        except JwtError as exc:
            raise OAuthError(400, "invalid_grant", str(exc)) from None
        scope = str(jwt.claims.get("scope") or "")
        if not scope:
            raise OAuthError(400, "invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        user = str(jwt.claims.get("sub") or key.client_email)
        issued = self._issue_access(user, key.client_id, scope, GRANT_JWT_BEARER)
        return _json({"access_token": issued.access_token, "expires_in": issued.lifetime, "token_type": "Bearer",
                      "scope": scope})

    def _grant_authorization_code(self) -> Response:
        """RFC 6749 section 4.1.3 with PKCE (RFC 7636): the code once, for its client and redirect URI."""
        client = self._authenticate_client(credential_required=False)
        with self._lock:
            issued = self._codes.pop(request.form.get("code", ""), None)
        if issued is None or issued.client_id != client.client_id:
            raise OAuthError(400, "invalid_grant", "AADSTS70000: The provided authorization code is not valid.")
        if request.form.get("redirect_uri") != issued.redirect_uri:
            raise OAuthError(400, "invalid_grant", "AADSTS50011: The redirect URI does not match the one the code "
                                                   "was issued for.")
        verifier = request.form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if not hmac.compare_digest(challenge, issued.code_challenge):
            raise OAuthError(400, "invalid_grant", "AADSTS501481: The Code_Verifier does not match the "
                                                   "code_challenge supplied in the authorization request.")
        with self._lock:
            refresh = self._new_refresh(issued.user, issued.client_id, issued.scope, next(self._families))
        return self._token_answer(self._issue_access(issued.user, client.client_id, issued.scope,
                                                     GRANT_AUTHORIZATION_CODE), refresh)

    def _authorize(self, tenant: str | None = None) -> Response:
        """The browser's visit (RFC 6749 section 4.1.1): redirected back at once, signed in as ``browser_user``.
        Only loopback redirect URIs and S256 challenges are accepted."""
        args = request.args
        redirect_uri, state = args.get("redirect_uri", ""), args.get("state", "")
        with self._lock:
            known = args.get("client_id", "") in self._clients
        if not known or not redirect_uri.startswith(("http://127.0.0.1:", "http://localhost:")):
            return _json(_error_body("invalid_request", "AADSTS50011: unknown client or redirect URI"), 400)
        if args.get("response_type") != "code" or args.get("code_challenge_method") != "S256":
            return _json(_error_body("invalid_request", "AADSTS9002325: PKCE with S256 is required"), 400)
        if self.browser_user is None:
            location = f"{redirect_uri}?error=access_denied&error_description=declined&state={state}"
        else:
            code = secrets.token_urlsafe(24)
            with self._lock:
                self._codes[code] = _AuthorizationCode(args["client_id"], redirect_uri, args.get("code_challenge", ""),
                                                       args.get("scope", ""), self.browser_user)
            location = f"{redirect_uri}?code={code}&state={state}"
        return Response(status=302, headers={"Location": location})

    # --- device authorization ---------------------------------------------------------------------------------

    def _device_authorization(self, tenant: str | None = None) -> Response:
        client_id = request.form.get("client_id", "")
        with self._lock:
            known = client_id in self._clients
        if not known:
            raise OAuthError(400, "unauthorized_client", f"AADSTS700016: Application with identifier "
                                                         f"'{client_id}' was not found in the directory.")
        device_code = secrets.token_urlsafe(32)
        user_code = "-".join("".join(secrets.choice(_USER_CODE_LETTERS) for _ in range(4)) for _ in range(2))
        flow = DeviceFlow(device_code, user_code, client_id, request.form.get("scope", ""),
                          time.time() + self.device_expires_in)
        with self._lock:
            self._devices[device_code] = flow
        verification_uri = f"{self.base_url}/devicelogin"
        return _json({"device_code": device_code, "user_code": user_code, "verification_uri": verification_uri,
                      "expires_in": self.device_expires_in, "interval": self.device_interval,
                      "message": f"To sign in, use a web browser to open the page {verification_uri} and enter the "
                                 f"code {user_code} to authenticate."})

    # --- introspection ----------------------------------------------------------------------------------------

    def _introspect(self) -> Response:
        """RFC 7662: ``active`` plus, for an active token, ``username``/``email``/``sub`` and ``exp``. Dovecot
        sends the token alone (it expands no variable in ``introspection_url``), so an app token introspects as
        one mailbox: the first of its client's ``mailboxes``."""
        token = request.form.get("token") or request.args.get("token") or _bearer(request.headers.get("Authorization"))
        now = time.time()
        with self._lock:
            issued = self._access.get(token or "")
            revoked = token in self._revoked_access
        reason = self._judge(issued, revoked, now)
        user = issued.user if issued else None
        active = reason == "active"
        entry = Introspection(at=now, fingerprint=fingerprint(token) if token else "-", active=active, user=user,
                              expires_at=issued.expires_at if issued else None, reason=reason)
        with self._cond:
            self._introspections.append(entry)
            self._cond.notify_all()
        if not active or issued is None:
            return _json({"active": False})
        return _json({"active": True, "username": user, "email": user, "sub": user, "client_id": issued.client_id,
                      "scope": issued.scope, "token_type": "Bearer", "exp": int(issued.expires_at),
                      "iat": int(issued.issued_at)})

    @staticmethod
    def _judge(issued: IssuedToken | None, revoked: bool, now: float) -> str:
        if issued is None:
            return "unknown"
        if revoked:
            return "revoked"
        if now >= issued.expires_at:
            return "expired"
        if issued.user is None:
            return "no-mailbox"  # an app token of a client with no mailboxes: Dovecot needs a username
        return "active"


def _basic_auth(header: str | None) -> tuple[str | None, str | None]:
    """``Authorization: Basic`` as RFC 6749 section 2.3.1 has it: both parts form-urlencoded before base64."""
    if not header or not header.lower().startswith("basic "):
        return None, None
    try:
        decoded = base64.b64decode(header[6:].strip()).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None, None
    client_id, _, secret = decoded.partition(":")
    return unquote_plus(client_id), unquote_plus(secret)


def _bearer(header: str | None) -> str | None:
    if header and header.lower().startswith("bearer "):
        return header[7:].strip()
    return None
