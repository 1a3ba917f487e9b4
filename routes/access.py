"""Who may read and who may act on the operator surface: tokens, browser sessions, CSRF and the login rate limit.

Two tokens: ``STATUS_API_TOKEN`` reads (``/api/status``, ``/metrics``, ``GET /api/emails/<id>``) and
``ADMIN_API_TOKEN`` acts (the routes of ``routes/actions.py``) and reads too. Both come as ``Authorization: Bearer``
(or ``X-API-Key``) and are compared in constant time on bytes. A browser signs in once with either token on the
login form (``GET``/``POST /login``) and then carries a session cookie (``HttpOnly; Secure; SameSite=Strict``)
signed with HMAC-SHA256 under a key derived by HKDF from ``SESSION_SECRET``, or from the two tokens when it is unset,
so every worker of every container accepts it and rotating a token ends the sessions it opened. Each session has
its own CSRF token, required on every state-changing request made with the cookie (``csrf_token`` form field or
``X-CSRF-Token`` header); a bearer token needs none (nothing ambient). Failed logins are counted in the shared
state store (``hit``), per client address and for the whole cluster; past the limit the login form answers 429
until the window ends. Nothing secret is ever logged, rendered or answered.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal, Protocol
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import Blueprint, Response, jsonify, render_template, request
from markupsafe import Markup
from werkzeug.exceptions import HTTPException

from routes import operator_source, session_keys
from services.state_store import StateStoreError

logger = logging.getLogger(__name__)

REALM = "render-signal"
COMMON_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

# The kinds of credential an action is recorded with (``record_action``'s ``token``), and the read-only ones.
ADMIN_TOKEN = "admin_token"
STATUS_TOKEN = "status_token"
SESSION = "session"

SESSION_COOKIE = "rs_session"
SESSION_MAX_AGE_SECONDS = 8 * 3600
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
HKDF_SALT = b"render-signal/session/v1"
HKDF_INFO = b"session-cookie-hmac-sha256"
COOKIE_VERSION = "v1"

# Failed logins: per client address, and for the whole cluster (a client rotating addresses still hits that one).
LOGIN_WINDOW_SECONDS = 15 * 60
LOGIN_FAILURES_PER_CLIENT = 10
LOGIN_FAILURES_PER_CLUSTER = 100

Role = Literal["admin", "read"]


# --- tokens -----------------------------------------------------------------------------------------------------------

def header_bytes(value: str) -> bytes:
    """The bytes a client sent in a header (WSGI hands header values over as latin-1 decoded text)."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def same_secret(presented: bytes, expected: str) -> bool:
    return hmac.compare_digest(presented, expected.encode("utf-8"))


def presented_token() -> bytes | None:
    """The token of ``Authorization: Bearer <token>``, else of ``X-API-Key``; None when neither is there."""
    authorization = request.headers.get("Authorization", "")
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return header_bytes(value.strip())
    api_key = request.headers.get("X-API-Key", "").strip()
    return header_bytes(api_key) if api_key else None


def api_credentials_ok(expected: str) -> bool:
    """``Authorization: Bearer <token>`` or ``X-API-Key: <token>`` is ``expected``."""
    authorization = request.headers.get("Authorization", "")
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        if same_secret(header_bytes(value.strip()), expected):
            return True
    api_key = request.headers.get("X-API-Key", "")
    return bool(api_key) and same_secret(header_bytes(api_key.strip()), expected)


def basic_credentials_ok(expected: str) -> bool:
    """HTTP Basic with any user name and the token as password."""
    authorization = request.headers.get("Authorization", "")
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "basic" or not value:
        return False
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (ValueError, TypeError):
        return False
    _, colon, password = decoded.partition(b":")
    return bool(colon) and same_secret(password, expected)


def token_kind(presented: bytes | None, *, admin_token: str | None, status_token: str | None) -> str | None:
    """``admin_token``, ``status_token`` or None: which configured token ``presented`` is (both compared, always)."""
    if presented is None:
        return None
    is_admin = bool(admin_token) and same_secret(presented, admin_token or "")
    is_status = bool(status_token) and same_secret(presented, status_token or "")
    if is_admin:
        return ADMIN_TOKEN
    return STATUS_TOKEN if is_status else None


def guarded(log_prefix: str) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
    """A view whose unexpected errors answer JSON 500 without internals (the traceback goes to the scrubbed log,
    ``<log_prefix>: <path> failed``); an HTTP error Werkzeug raises (a 413 for a form too large) answers JSON too."""

    def decorate(view: Callable[..., Response]) -> Callable[..., Response]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Response:
            try:
                return view(*args, **kwargs)
            except HTTPException as exc:
                return json_error(exc.code or 500, (exc.name or "error").lower().replace(" ", "_"))
            except Exception:
                logger.error("%s: %s failed", log_prefix, request.path, exc_info=True)
                return json_error(500, "internal_error")

        return wrapper

    return decorate


def json_error(status: int, error: str, headers: dict[str, str] | None = None, **extra: object) -> Response:
    response = jsonify({"error": error, **extra})
    response.status_code = status
    response.headers.update(COMMON_HEADERS)
    response.headers.update(headers or {})
    return response


def unauthorized_api(what: str = "status token") -> Response:
    logger.info("SECURITY: rejected %s without a valid %s", request.path, what)
    return json_error(401, "unauthorized", {"WWW-Authenticate": f'Bearer realm="{REALM}"'})


def client_address() -> str:
    """The client as this service can tell it: the hop the last proxy added to ``X-Forwarded-For`` (Render's edge
    appends the address it saw), else the socket's peer. Used for the history and the login limit, never to grant
    anything."""
    forwarded = request.headers.get("X-Forwarded-For", "")
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    address = hops[-1] if hops else (request.remote_addr or "unknown")
    return address[:64]


# --- sessions ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Session:
    """A signed-in browser: its role (what the token it signed in with may do), its CSRF token and its lifetime."""

    role: Role
    csrf: str = ""
    issued_at: float = 0.0
    expires_at: float = 0.0


class SessionKeys:
    """Signs and checks session cookies. The key: HKDF-SHA256 over ``SESSION_SECRET``, else over both tokens; a
    cookie also names (by a keyed fingerprint) the token its session signed in with, so rotating that token ends it
    even when ``SESSION_SECRET`` stays."""

    def __init__(self, *, admin_token: str | None, status_token: str | None, session_secret: str | None) -> None:
        self._tokens: dict[Role, str | None] = {"admin": admin_token, "read": status_token}
        if session_secret:
            material = b"secret\0" + session_secret.encode("utf-8")
        elif admin_token or status_token:
            material = (b"tokens\0" + (admin_token or "").encode("utf-8") + b"\0"
                        + (status_token or "").encode("utf-8"))
        else:
            material = b""
        self._key = HKDF(algorithm=hashes.SHA256(), length=32, salt=HKDF_SALT,
                         info=HKDF_INFO).derive(material) if material else None

    def __repr__(self) -> str:  # never the key or the tokens
        return "SessionKeys(...)"

    @property
    def usable(self) -> bool:
        return self._key is not None

    def _mac(self, data: bytes) -> bytes:
        assert self._key is not None
        return hmac.new(self._key, data, hashlib.sha256).digest()

    def _fingerprint(self, role: Role) -> str:
        token = self._tokens.get(role)
        return _b64(self._mac(b"token\0" + role.encode() + b"\0" + (token or "").encode("utf-8"))[:12])

    def role_for(self, presented: bytes) -> Role | None:
        """The role a token presented on the login form signs in as (None: not a configured token)."""
        kind = token_kind(presented, admin_token=self._tokens["admin"], status_token=self._tokens["read"])
        return {ADMIN_TOKEN: "admin", STATUS_TOKEN: "read"}.get(kind or "")  # type: ignore[return-value]

    def issue(self, role: Role, now: float) -> tuple[str, Session]:
        """A new session of ``role`` and its cookie value."""
        session = Session(role=role, csrf=secrets.token_urlsafe(32), issued_at=now,
                          expires_at=now + SESSION_MAX_AGE_SECONDS)
        body = json.dumps({"r": role, "c": session.csrf, "i": int(now), "e": int(session.expires_at),
                           "t": self._fingerprint(role)}, separators=(",", ":"), sort_keys=True)
        signed = f"{COOKIE_VERSION}.{_b64(body.encode())}"
        return f"{signed}.{_b64(self._mac(signed.encode()))}", session

    def read(self, cookie: str | None, now: float) -> Session | None:
        """The session of a cookie value, or None when it is absent, forged, expired or its token was rotated."""
        if not cookie or self._key is None or len(cookie) > 1024:
            return None
        version, _, rest = cookie.partition(".")
        body_part, _, mac_part = rest.partition(".")
        if version != COOKIE_VERSION or not body_part or not mac_part:
            return None
        try:
            mac = _unb64(mac_part)
            if not hmac.compare_digest(mac, self._mac(f"{version}.{body_part}".encode())):
                return None
            body = json.loads(_unb64(body_part))
        except (ValueError, binascii.Error):
            return None
        if not isinstance(body, dict) or body.get("r") not in ("admin", "read"):
            return None
        role: Role = body["r"]
        if not self._tokens.get(role) or not hmac.compare_digest(str(body.get("t", "")), self._fingerprint(role)):
            return None
        expires_at = float(body.get("e", 0))
        if now >= expires_at:
            return None
        return Session(role=role, csrf=str(body.get("c", "")), issued_at=float(body.get("i", 0)),
                       expires_at=expires_at)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def set_session_cookie(response: Response, value: str) -> None:
    response.set_cookie(SESSION_COOKIE, value, max_age=SESSION_MAX_AGE_SECONDS, path="/", secure=True,
                        httponly=True, samesite="Strict")


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")


def current_session(keys: SessionKeys, now: float | None = None) -> Session | None:
    return keys.read(request.cookies.get(SESSION_COOKIE), time.time() if now is None else now)


def csrf_ok(session: Session) -> bool:
    """The request carries the session's CSRF token (form field or header), and is not a cross-site one."""
    if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        return False
    presented = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    return bool(session.csrf) and hmac.compare_digest(presented.encode("utf-8"), session.csrf.encode("utf-8"))


def see_other(path: str) -> Response:
    """303 to a local path (``safe_next`` already applied): a form post's answer."""
    response = Response(status=303, headers={"Location": path})
    response.headers.update(COMMON_HEADERS)
    return response


def safe_next(value: str | None, default: str = "/") -> str:
    """A local path to send a browser to after a form post: ``/…`` only, never ``//host``, a scheme, a backslash or
    a control character (an open redirect otherwise)."""
    if not value or not value.startswith("/") or value.startswith("//") or len(value) > 2000:
        return default
    if any(ch == "\\" or ord(ch) < 0x20 or ord(ch) == 0x7f for ch in value):
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return default
    return value


# --- the failed-login limit ---------------------------------------------------------------------------------------

BLOCK_NAMESPACE = "login_block"


class LoginCounter(Protocol):
    """What the limit uses of the state store (``services.state_store.StateStore`` has it)."""

    def hit(self, key: str, window_seconds: float, now: float) -> int: ...
    def get_record(self, namespace: str, key: str) -> dict | None: ...
    def put_record(self, namespace: str, key: str, record: dict, ttl_seconds: float) -> None: ...


def login_blocked(store: LoginCounter, client: str) -> bool:
    """True while this client, or the whole cluster, has used up its failed logins of the current window."""
    return (store.get_record(BLOCK_NAMESPACE, f"client:{client}") is not None
            or store.get_record(BLOCK_NAMESPACE, "cluster") is not None)


def count_failed_login(store: LoginCounter, client: str, now: float) -> bool:
    """Count one failed login (cluster-wide, in the store); True when it used up a limit (further logins are
    refused, right or wrong, until the window ends)."""
    blocked = False
    for key, limit in ((f"client:{client}", LOGIN_FAILURES_PER_CLIENT), ("cluster", LOGIN_FAILURES_PER_CLUSTER)):
        if store.hit(f"login_failed:{key}", LOGIN_WINDOW_SECONDS, now) >= limit:
            store.put_record(BLOCK_NAMESPACE, key, {"since": now}, LOGIN_WINDOW_SECONDS)
            blocked = True
    return blocked


# --- the login form ---------------------------------------------------------------------------------------------------

bp = Blueprint("access", __name__, template_folder="templates")


def html_response(body: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """An operator page: no caching, the Content-Security-Policy of ``routes.operator.page_style`` (no script, the
    one stylesheet by hash, forms posting to this origin only)."""
    from routes.operator import page_style

    response = Response(body, status=status, content_type="text/html; charset=utf-8")
    response.headers.update(COMMON_HEADERS)
    response.headers["Content-Security-Policy"] = page_style().content_security_policy
    response.headers.update(headers or {})
    return response


def html_page(template: str, status: int = 200, headers: dict[str, str] | None = None, **context: object) -> Response:
    """``template`` rendered with the one stylesheet (unescaped: our constant, allowed by its hash) as a page."""
    from routes.operator import page_style

    return html_response(render_template(template, style=Markup(page_style().css), **context), status, headers)


def _login_available() -> bool:
    source = operator_source()
    return bool(source.admin_api_token or source.status_api_token)


@bp.get("/login")
def login_form() -> Response:
    if not _login_available():
        return json_error(404, "not_found")
    return html_page("login.html", next=safe_next(request.args.get("next")), message=None)


@bp.post("/login")
def login() -> Response:
    if not _login_available():
        return json_error(404, "not_found")
    next_path = safe_next(request.form.get("next"))
    if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        logger.info("SECURITY: refused a cross-site login post")
        return html_page("login.html", 403, next=next_path, message="Refused: the form was posted from elsewhere.")
    client = client_address()
    now = time.time()
    try:
        store = operator_source().open_store()
        if login_blocked(store, client):
            return _too_many(next_path)
        role = session_keys().role_for(request.form.get("token", "").encode("utf-8"))
        if role is None:
            logger.info("SECURITY: failed login from %s", client)
            if count_failed_login(store, client, now):
                return _too_many(next_path)
            return html_page("login.html", 401, next=next_path, message="Wrong token.")
    except StateStoreError:
        logger.error("SECURITY: login refused: the state store is unavailable", exc_info=True)
        return html_page("login.html", 503, next=next_path, message="The state store is unavailable; try again.")
    cookie, _ = session_keys().issue(role, now)
    logger.info("SECURITY: %s session opened from %s", role, client)
    response = see_other(next_path)
    set_session_cookie(response, cookie)
    return response


def _too_many(next_path: str) -> Response:
    logger.warning("SECURITY: login refused: too many failed logins")
    response = html_page("login.html", 429, next=next_path, message="Too many failed logins; wait and try again.")
    response.headers["Retry-After"] = str(LOGIN_WINDOW_SECONDS)
    return response


@bp.post("/logout")
def logout() -> Response:
    session = current_session(session_keys())
    if session is not None and not csrf_ok(session):
        return json_error(403, "csrf_token_invalid")
    response = see_other("/login")
    clear_session_cookie(response)
    return response
