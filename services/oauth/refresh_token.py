"""Delegated access tokens from a refresh token (RFC 6749 section 6) at any provider's token endpoint, with the
rotation rule of issue 18: under the store's lock, the newest stored refresh token (it always wins over the initial
one from the configuration) is used, and the rotated one is saved before the access token is handed out, so two
processes never spend the same refresh token and a crash never loses the only valid one.

The OAuth client is Authlib's ``OAuth2Session`` (``authlib.integrations.requests_client``), imported only when a
token is first asked for. Authlib over requests-oauthlib: it is actively released (requests-oauthlib's last release
was in March 2024), it needs no second library (requests-oauthlib is a layer over oauthlib), its session is a
``requests.Session`` so the CA file, ``trust_env`` and timeout apply as everywhere else here, and it parses RFC 6749
error answers into ``error``/``description`` and keeps the old refresh token when the provider does not rotate
(Google).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ContextManager, Iterator, Protocol

from services.oauth.errors import OAuthError
from services.oauth.token_endpoint import OAuthClient, token_session
from services.oauth.tokens import AccessToken, CacheKey, is_bearer_token
from services.oauth.transport import DEFAULT_TIMEOUT_SECONDS, require_secure_endpoint

logger = logging.getLogger(__name__)

PROVIDER = "refresh_token"


class RefreshTokenStore(Protocol):
    """Where a mailbox's newest refresh token lives (durable: Redis or a persistent SQLite in the service).
    ``lock()`` excludes every other refresh of the same mailbox, in this process and in the others."""

    def load(self) -> str | None: ...

    def save(self, new_refresh_token: str) -> None: ...

    def lock(self) -> ContextManager[None]: ...


class InMemoryRefreshTokenStore:
    """A ``RefreshTokenStore`` for one process (tests): a dict entry and a ``threading.Lock``."""

    def __init__(self, refresh_token: str | None = None) -> None:
        self._value = refresh_token
        self._lock = threading.Lock()
        self._guard = threading.Lock()
        self.saves = 0

    def load(self) -> str | None:
        with self._guard:
            return self._value

    def save(self, new_refresh_token: str) -> None:
        with self._guard:
            self._value = new_refresh_token
            self.saves += 1

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        with self._lock:
            yield

    def __repr__(self) -> str:
        return f"InMemoryRefreshTokenStore(saves={self.saves})"


@dataclass(frozen=True)
class RefreshTokenConfig:
    """``subject``: the mailbox the refresh token signs in (part of the cache key, never sent)."""

    token_url: str
    client_id: str
    subject: str
    refresh_token: str | None = field(default=None, repr=False)  # the initial one; the store's wins once present
    client_secret: str | None = field(default=None, repr=False)
    scope: str | None = None
    ca_file: str | None = None
    allow_insecure: bool = False
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS

    def __post_init__(self) -> None:
        if not self.client_id or not self.subject:
            raise ValueError("refresh_token needs client_id and the mailbox subject")
        require_secure_endpoint(self.token_url, allow_insecure=self.allow_insecure, name="token_url")


class RefreshTokenProvider:
    """Access tokens from the newest refresh token in ``refresh_token_store``; a rotated one is saved before it
    returns. One store per mailbox (its lock is the mailbox's refresh lock)."""

    def __init__(self, config: RefreshTokenConfig, refresh_token_store: RefreshTokenStore) -> None:
        self.config = config
        self.store = refresh_token_store
        self._initial_refused = False  # the configured refresh token was refused once: not tried again

    @property
    def cache_key(self) -> CacheKey:
        return CacheKey(PROVIDER, self.config.token_url, self.config.client_id, self.config.scope,
                        self.config.subject)

    def fetch_token(self) -> AccessToken:
        with self.store.lock():
            stored = self.store.load()
            now = time.time()
            answer, spent = self._refresh_newest(stored)
            value = str(answer.get("access_token") or "")
            if not is_bearer_token(value):
                raise OAuthError("invalid_token_response", "the token endpoint answered no usable access token",
                                 True)
            rotated = answer.get("refresh_token")
            newest = rotated if isinstance(rotated, str) and rotated else spent
            if newest != spent or (stored is not None and spent != stored):
                self.store.save(newest)  # rotated, or the configured one replaced a refused stored one
        expires_in = float(answer.get("expires_in") or 0)
        logger.info("OAUTH: token obtained provider=%s subject=%s expires_in=%d rotated=%s", PROVIDER,
                    self.config.subject, int(expires_in), newest != spent)
        return AccessToken(value, now + expires_in, now)

    def _refresh_newest(self, stored: str | None) -> tuple[dict[str, Any], str]:
        """The token endpoint's answer to the stored refresh token (else the configured one), and the refresh token
        spent. When the stored one is refused (``invalid_grant``) and the configuration holds another one (an
        operator set a new OAUTH_REFRESH_TOKEN secret, e.g. from ``oauth-login --loopback``), that one is tried,
        once per process."""
        initial = self.config.refresh_token
        current = stored or initial
        if not current:
            raise OAuthError("no_refresh_token", "no refresh token is stored or configured: sign in "
                                                 "(oauth-login)", True)
        try:
            return self._refresh(current), current
        except OAuthError as exc:
            if exc.code != "invalid_grant" or not initial or initial == current or self._initial_refused:
                raise
            try:
                answer = self._refresh(initial)
            except OAuthError:
                self._initial_refused = True
                raise exc from None
            logger.info("OAUTH: the stored refresh token was refused; the configured one signed in subject=%s",
                        self.config.subject)
            return answer, initial

    def _refresh(self, refresh_token: str) -> dict[str, Any]:
        config = self.config
        client = OAuthClient(config.client_id, config.client_secret, config.scope, config.ca_file,
                             config.timeout_seconds)
        with token_session(client, secrets=(refresh_token,)) as session:
            return dict(session.refresh_token(config.token_url, refresh_token=refresh_token,
                                              timeout=config.timeout_seconds))
