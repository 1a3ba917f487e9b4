"""Google Workspace tokens for one mailbox through a service account with domain-wide delegation: google-auth
signs an RFC 7523 JWT (subject: the mailbox user, scope ``https://mail.google.com/``) and trades it at the key
file's ``token_uri``. google-auth is imported only when a token is first asked for.

google-auth itself retries a 5xx or 429 answer twice (about 1 s, then 2 s) before it gives up; its ``Request`` is
built on a session that trusts ``ca_file`` and bounded by ``timeout_seconds``.
"""

from __future__ import annotations

import calendar
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests

from config import GOOGLE_MAIL_SCOPE
from services.oauth.errors import OAuthError, from_error_body, safe_description, transient
from services.oauth.tokens import AccessToken, CacheKey, is_bearer_token
from services.oauth.transport import (
    DEFAULT_TIMEOUT_SECONDS,
    InsecureEndpointError,
    http_session,
    require_secure_endpoint,
)

logger = logging.getLogger(__name__)

PROVIDER = "google_service_account"
DEFAULT_SCOPE = GOOGLE_MAIL_SCOPE


@dataclass(frozen=True)
class GoogleServiceAccountConfig:
    """``subject``: the Workspace user whose mailbox is opened (domain-wide delegation)."""

    service_account_file: str
    subject: str
    scope: str = DEFAULT_SCOPE
    ca_file: str | None = None
    allow_insecure: bool = False
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS

    def __post_init__(self) -> None:
        if not self.service_account_file or not self.subject:
            raise ValueError("google_service_account needs service_account_file and the mailbox user as subject")


class GoogleServiceAccountProvider:
    """Access tokens for ``config.subject``, from the key file's ``token_uri``."""

    def __init__(self, config: GoogleServiceAccountConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._credentials: Any = None
        self._request: Any = None

    @property
    def cache_key(self) -> CacheKey:
        return CacheKey(PROVIDER, None, self.config.service_account_file, self.config.scope, self.config.subject)

    def fetch_token(self) -> AccessToken:
        from google.auth import exceptions

        with self._lock:
            credentials, request = self._prepare()
            now = time.time()
            try:
                credentials.refresh(request)
            except exceptions.RefreshError as exc:
                raise self._refused(exc) from None
            except exceptions.TransportError as exc:
                cause = exc.__cause__
                if isinstance(cause, requests.Timeout):
                    raise transient("timeout", "the Google token endpoint did not answer in time") from None
                raise transient("connection_error", f"cannot reach the Google token endpoint "
                                                    f"({type(cause or exc).__name__})") from None
            value = str(credentials.token or "")
            if not is_bearer_token(value):
                raise OAuthError("invalid_token_response", "the token endpoint answered no usable access token", True)
            expires_at = float(calendar.timegm(credentials.expiry.utctimetuple())) if credentials.expiry else now
            logger.info("OAUTH: token obtained provider=%s subject=%s expires_in=%d", PROVIDER, self.config.subject,
                        int(expires_at - now))
            return AccessToken(value, expires_at, now)

    @staticmethod
    def _refused(exc: Any) -> OAuthError:
        data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else None
        if data is not None and data.get("error"):
            error = from_error_body(data)
            if exc.retryable and error.terminal and error.code not in ("invalid_grant", "unauthorized_client"):
                return OAuthError(error.code, error.description, False)
            return error
        if exc.retryable:
            return transient("server_error", "the Google token endpoint failed (5xx or 429)")
        return OAuthError("invalid_token_response", safe_description(exc.args[0] if exc.args else exc), True)

    def _prepare(self) -> tuple[Any, Any]:
        if self._credentials is None:
            from google.auth.transport.requests import Request
            from google.oauth2 import service_account

            info = self._read_key_file()
            try:
                require_secure_endpoint(str(info.get("token_uri") or ""), allow_insecure=self.config.allow_insecure,
                                        name="the service account's token_uri")
            except InsecureEndpointError as exc:
                raise OAuthError("insecure_endpoint", str(exc), True) from None
            try:
                credentials = service_account.Credentials.from_service_account_info(
                    info, scopes=[self.config.scope], subject=self.config.subject)
            except (ValueError, KeyError) as exc:
                raise OAuthError("service_account_file_invalid", f"the service account file is not a valid key "
                                                                 f"file ({type(exc).__name__})", True) from None
            timeout = self.config.timeout_seconds

            class _BoundedRequest(Request):
                def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None,
                             timeout: float | None = timeout, **kwargs: Any) -> Any:
                    return super().__call__(url, method, body, headers, timeout, **kwargs)

            self._request = _BoundedRequest(http_session(self.config.ca_file, timeout))
            self._credentials = credentials
        return self._credentials, self._request

    def _read_key_file(self) -> dict[str, Any]:
        try:
            with open(self.config.service_account_file, encoding="utf-8") as handle:
                info = json.load(handle)
        except OSError as exc:
            raise OAuthError("service_account_file_unreadable", f"cannot read the service account file "
                                                                f"({exc.strerror})", True) from None
        except ValueError:
            raise OAuthError("service_account_file_invalid", "the service account file is not JSON", True) from None
        if not isinstance(info, dict):
            raise OAuthError("service_account_file_invalid", "the service account file is not a JSON object", True)
        return info
