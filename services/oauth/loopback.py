"""The authorization code grant with a loopback redirect and PKCE (RFC 8252 section 7.3, RFC 7636) for
``oauth-login --loopback``: a delegated sign-in run on the operator's own machine, for providers whose device flow
does not allow the mail scope (Google). A one-request HTTP server on 127.0.0.1 receives the redirect; the code is
exchanged (with its PKCE verifier) for tokens; the refresh token is what the operator stores as a secret.

The ``state`` is compared in constant time; anything else reaching the loopback port gets a 404 and is ignored.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from services.oauth.errors import OAuthError
from services.oauth.token_endpoint import OAuthClient, token_session
from services.oauth.transport import require_secure_endpoints

GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
GOOGLE_AUTHORIZATION_URL = "https://accounts.google.com/o/oauth2/v2/auth"
DEFAULT_WAIT_SECONDS = 300.0
_DONE_PAGE = (b"<!doctype html><title>render-signal</title><p>Signed in. You can close this tab and go back to "
              b"the terminal.</p>")
_FAILED_PAGE = b"<!doctype html><title>render-signal</title><p>The sign-in did not complete: see the terminal.</p>"


def authorization_url_for(token_url: str) -> str | None:
    """The authorization endpoint that goes with a well-known token endpoint (Google, Microsoft); else None."""
    if token_url.rstrip("/") == GOOGLE_TOKEN_URL:
        return GOOGLE_AUTHORIZATION_URL
    if token_url.endswith("/oauth2/v2.0/token"):
        return token_url[: -len("token")] + "authorize"
    return None


@dataclass(frozen=True)
class LoopbackConfig:
    authorization_url: str
    token_url: str
    client: OAuthClient
    allow_insecure: bool = False
    host: str = "127.0.0.1"
    port: int = 0                                   # 0: a free port
    wait_seconds: float = DEFAULT_WAIT_SECONDS

    def __post_init__(self) -> None:
        require_secure_endpoints(allow_insecure=self.allow_insecure, token_url=self.token_url,
                                 authorization_url=self.authorization_url)


class _Redirect:
    """The one redirect the server waits for: its query parameters, once it came with the right ``state``."""

    def __init__(self, state: str) -> None:
        self.state = state
        self.params: dict[str, str] | None = None
        self.arrived = threading.Event()

    def accept(self, query: str) -> bool:
        params = {key: values[0] for key, values in parse_qs(query).items() if values}
        if not hmac.compare_digest(params.get("state", "").encode(), self.state.encode()):
            return False
        if not self.arrived.is_set():
            self.params = params
            self.arrived.set()
        return True


def _handler(redirect: _Redirect) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            accepted = redirect.accept(urlsplit(self.path).query)
            ok = accepted and redirect.params is not None and "code" in redirect.params
            body = _DONE_PAGE if ok else _FAILED_PAGE
            self.send_response(200 if accepted else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the query holds the code: never logged
            return

    return Handler


def loopback_sign_in(config: LoopbackConfig, *, on_authorization_url: Callable[[str], None]) -> dict[str, Any]:
    """Serve the loopback redirect, hand the authorization URL to ``on_authorization_url`` (print it), wait up to
    ``wait_seconds`` for the redirect, exchange the code: the token answer with its refresh token."""
    state = secrets.token_urlsafe(24)
    verifier = secrets.token_urlsafe(64)
    redirect = _Redirect(state)
    server = ThreadingHTTPServer((config.host, config.port), _handler(redirect))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True,
                              name="oauth-loopback")
    thread.start()
    try:
        redirect_uri = f"http://{config.host}:{server.server_address[1]}/"
        with token_session(config.client, redirect_uri=redirect_uri) as session:
            # access_type=offline and prompt=consent: Google hands out a refresh token only with both.
            url, _ = session.create_authorization_url(config.authorization_url, state=state, code_verifier=verifier,
                                                      access_type="offline", prompt="consent")
        on_authorization_url(url)
        if not redirect.arrived.wait(config.wait_seconds):
            raise OAuthError("expired_token", f"no sign-in came back within {config.wait_seconds:.0f} s", True)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    return _exchange(config, redirect.params or {}, redirect_uri, verifier)


def _exchange(config: LoopbackConfig, params: dict[str, str], redirect_uri: str, verifier: str) -> dict[str, Any]:
    if "code" not in params:
        error = params.get("error") or "invalid_request"
        raise OAuthError(error, params.get("error_description") or "the provider sent no authorization code", True)
    code = params["code"]
    with token_session(config.client, secrets=(code, verifier), redirect_uri=redirect_uri) as session:
        answer = dict(session.fetch_token(config.token_url, grant_type="authorization_code", code=code,
                                          code_verifier=verifier, timeout=config.client.timeout_seconds))
    if not answer.get("refresh_token"):
        raise OAuthError("no_refresh_token", "the provider granted no refresh token (Google: access_type=offline "
                                             "was asked; remove the app's earlier grant and sign in again)", True)
    return answer
