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

import requests

from services.oauth.errors import OAuthError, token_endpoint_error, transient
from services.oauth.tokens import AccessToken, CacheKey, is_bearer_token
from services.oauth.transport import DEFAULT_TIMEOUT_SECONDS, http_session, require_secure_endpoint

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

    @property
    def cache_key(self) -> CacheKey:
        return CacheKey(PROVIDER, self.config.token_url, self.config.client_id, self.config.scope,
                        self.config.subject)

    def fetch_token(self) -> AccessToken:
        with self.store.lock():
            current = self.store.load() or self.config.refresh_token
            if not current:
                raise OAuthError("no_refresh_token", "no refresh token is stored or configured: sign in "
                                                     "(oauth-login)", True)
            now = time.time()
            answer = self._refresh(current)
            value = str(answer.get("access_token") or "")
            if not is_bearer_token(value):
                raise OAuthError("invalid_token_response", "the token endpoint answered no usable access token",
                                 True)
            rotated = answer.get("refresh_token")
            if isinstance(rotated, str) and rotated and rotated != current:
                self.store.save(rotated)
        expires_in = float(answer.get("expires_in") or 0)
        logger.info("OAUTH: token obtained provider=%s subject=%s expires_in=%d rotated=%s", PROVIDER,
                    self.config.subject, int(expires_in), isinstance(rotated, str) and rotated != current)
        return AccessToken(value, now + expires_in, now)

    def _refresh(self, refresh_token: str) -> dict[str, Any]:
        from authlib.integrations.base_client.errors import OAuthError as AuthlibOAuthError
        from authlib.integrations.requests_client import OAuth2Session

        config = self.config
        secrets = (refresh_token, config.client_secret)
        statuses: list[int] = []
        session = OAuth2Session(config.client_id, config.client_secret, scope=config.scope,
                                token_endpoint_auth_method="client_secret_post" if config.client_secret
                                else "none")
        base = http_session(config.ca_file)
        session.verify, session.trust_env = base.verify, base.trust_env
        session.hooks["response"].append(lambda response, *args, **kwargs: statuses.append(response.status_code))
        try:
            with session:
                return dict(session.refresh_token(config.token_url, refresh_token=refresh_token,
                                                  timeout=config.timeout_seconds))
        except AuthlibOAuthError as exc:
            raise token_endpoint_error(exc.error, exc.description, statuses[-1] if statuses else None,
                                       secrets) from None
        except requests.Timeout:
            raise transient("timeout", "the token endpoint did not answer in time") from None
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            raise token_endpoint_error(None, None, status) from None
        except requests.RequestException as exc:
            raise transient("connection_error", f"cannot reach the token endpoint ({type(exc).__name__})") from None
        except ValueError:
            status = statuses[-1] if statuses else None
            raise token_endpoint_error("invalid_token_response", "the token endpoint answered no JSON object",
                                       status) from None
