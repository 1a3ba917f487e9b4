"""A mailbox's newest refresh token kept in the state store (Redis, or SQLite on a persistent disk), encrypted with
``STATE_ENCRYPTION_KEY`` (Fernet, from ``cryptography``) when it is set, and refreshed under the store's per-mailbox
lock so that two processes never race a rotation. The ``RefreshTokenStore`` of ``services.oauth.refresh_token``.

Stored form: ``fernet:<token>`` with a key, ``plain:<value>`` without one. A plain value is still read once a key is
set (and written encrypted at the next rotation); an encrypted value without the key, or with another key, is a
terminal ``OAuthError`` (``stored_token_unreadable``): the operator must give the key back or sign in again.
"""

from __future__ import annotations

import hashlib
from typing import Any, ContextManager

from services.oauth.errors import OAuthError

_FERNET = "fernet:"
_PLAIN = "plain:"


class TokenCipher:
    """Fernet with ``key`` (a url-safe base64 32-byte key, as ``Fernet.generate_key()`` makes), or no encryption."""

    def __init__(self, key: str | None) -> None:
        self._fernet: Any = None
        if key:
            from cryptography.fernet import Fernet

            self._fernet = Fernet(key.encode("ascii"))  # ValueError for a malformed key

    @property
    def encrypts(self) -> bool:
        return self._fernet is not None

    def seal(self, value: str) -> str:
        if self._fernet is None:
            return _PLAIN + value
        return _FERNET + self._fernet.encrypt(value.encode("utf-8")).decode("ascii")

    def open(self, stored: str) -> str:
        if stored.startswith(_PLAIN):
            return stored[len(_PLAIN):]
        if not stored.startswith(_FERNET):
            raise OAuthError("stored_token_unreadable", "the stored refresh token has an unknown form", terminal=True)
        if self._fernet is None:
            raise OAuthError("stored_token_unreadable", "the stored refresh token is encrypted and "
                                                        "STATE_ENCRYPTION_KEY is not set", terminal=True)
        from cryptography.fernet import InvalidToken

        try:
            return self._fernet.decrypt(stored[len(_FERNET):].encode("ascii")).decode("utf-8")
        except InvalidToken:
            raise OAuthError("stored_token_unreadable", "the stored refresh token does not decrypt with "
                                                        "STATE_ENCRYPTION_KEY (another key?)", terminal=True) from None


class StoredRefreshTokens:
    """``RefreshTokenStore`` for ``mailbox_id`` on a state store (``read_refresh_token``, ``write_refresh_token``,
    ``refresh_lock``), sealed by ``cipher``."""

    def __init__(self, store: Any, mailbox_id: str, cipher: TokenCipher) -> None:
        self._store = store
        self._mailbox_id = mailbox_id
        self._cipher = cipher

    def load(self) -> str | None:
        stored = self._store.read_refresh_token(self._mailbox_id)
        return None if stored is None else self._cipher.open(stored)

    def save(self, new_refresh_token: str) -> None:
        self._store.write_refresh_token(self._mailbox_id, self._cipher.seal(new_refresh_token))

    def lock(self) -> ContextManager[None]:
        return self._store.refresh_lock(self._mailbox_id)

    def version(self) -> str | None:
        """A fingerprint of the stored value (None: nothing stored) that changes whenever another refresh token is
        stored, by a rotation or by ``oauth-login``; it reveals nothing of the token."""
        stored = self._store.read_refresh_token(self._mailbox_id)
        return None if stored is None else hashlib.sha256(stored.encode("utf-8")).hexdigest()[:16]
