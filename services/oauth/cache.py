"""Access tokens kept per ``CacheKey`` (provider, tenant, client, scope, subject) for every mailbox of a process:
the mailboxes of one app share its app-only token, and one key is refreshed by one thread at a time while the
others wait for its result instead of asking the provider again."""

from __future__ import annotations

import threading
import time
from typing import Callable

from services.oauth.tokens import AccessToken, CacheKey, TokenProvider, needs_refresh


class TokenCache:
    """Thread-safe. ``get(provider)`` returns a token that does not need a refresh yet, fetching one when needed."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._guard = threading.Lock()
        self._tokens: dict[CacheKey, AccessToken] = {}
        self._key_locks: dict[CacheKey, threading.Lock] = {}

    def get(self, provider: TokenProvider) -> AccessToken:
        """The cached token, or a new one from ``provider`` (its ``OAuthError`` passes through, nothing cached)."""
        key = provider.cache_key
        token = self.peek(key)
        if not needs_refresh(token, self._clock()):
            assert token is not None
            return token
        with self._key_lock(key):
            token = self.peek(key)  # another thread may have refreshed it while this one waited
            if not needs_refresh(token, self._clock()):
                assert token is not None
                return token
            token = provider.fetch_token()
            with self._guard:
                self._tokens[key] = token
            return token

    def peek(self, key: CacheKey) -> AccessToken | None:
        with self._guard:
            return self._tokens.get(key)

    def invalidate(self, key: CacheKey, token: AccessToken | None = None) -> None:
        """Forget the token of ``key`` (only if it is still ``token``, when given): the next ``get`` fetches anew."""
        with self._guard:
            if token is None or self._tokens.get(key) is token:
                self._tokens.pop(key, None)

    def drop_expired(self) -> int:
        """Forget every expired token (so the cache does not grow with keys no longer used); returns how many."""
        now = self._clock()
        with self._guard:
            expired = [key for key, token in self._tokens.items() if token.expires_at <= now]
            for key in expired:
                del self._tokens[key]
                lock = self._key_locks.get(key)
                if lock is not None and not lock.locked():
                    del self._key_locks[key]
        return len(expired)

    def _key_lock(self, key: CacheKey) -> threading.Lock:
        with self._guard:
            return self._key_locks.setdefault(key, threading.Lock())
