"""SASL XOAUTH2 (Google's and Microsoft's) and OAUTHBEARER (RFC 7628) for IMAP AUTHENTICATE: the initial client
responses, and a callback for IMAPClient's ``sasl_login`` (or imaplib's ``authenticate``) that answers a server's
error challenge the way RFC 7628 section 3.2.3 asks (``%x01`` for OAUTHBEARER; the empty response XOAUTH2 servers
expect) instead of sending the token again, and keeps the challenge's JSON (``{"status": "invalid_token", ...}``)
so the caller can tell a refused token from other failures."""

from __future__ import annotations

import json
from typing import Any

XOAUTH2 = "XOAUTH2"
OAUTHBEARER = "OAUTHBEARER"
MECHANISMS = (XOAUTH2, OAUTHBEARER)


def _check(user: str, token: str) -> None:
    if "\x01" in user or "\x01" in token or not token:
        raise ValueError("a SASL user or token may not contain ^A, and the token may not be empty")


def xoauth2_initial_response(user: str, token: str) -> bytes:
    """``user=<user>^Aauth=Bearer <token>^A^A``."""
    _check(user, token)
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode("utf-8")


def _gs2_authzid(user: str) -> str:
    # RFC 5801 section 4: "=" and "," are escaped in a saslname.
    return user.replace("=", "=3D").replace(",", "=2C")


def oauthbearer_initial_response(user: str, token: str) -> bytes:
    """RFC 7628 section 3.1: ``n,a=<user>,^Aauth=Bearer <token>^A^A``."""
    _check(user, token)
    return f"n,a={_gs2_authzid(user)},\x01auth=Bearer {token}\x01\x01".encode("utf-8")


def initial_response(mechanism: str, user: str, token: str) -> bytes:
    if mechanism.upper() == XOAUTH2:
        return xoauth2_initial_response(user, token)
    if mechanism.upper() == OAUTHBEARER:
        return oauthbearer_initial_response(user, token)
    raise ValueError(f"SASL mechanism is one of {MECHANISMS}, not {mechanism!r}")


class OAuth2SaslAuthenticator:
    """``client.sasl_login(auth.mechanism, auth)``: the token once, then the empty answer to an error challenge.
    After a refusal, ``error_challenge`` holds the server's JSON (``None`` when it sent none or not JSON) and
    ``error_status`` its ``status`` (``invalid_token``, ``insufficient_scope``…). ``repr`` never shows the token."""

    def __init__(self, mechanism: str, user: str, token: str) -> None:
        self.mechanism = mechanism.upper()
        self._initial = initial_response(self.mechanism, user, token)
        self._sent = False
        self.user = user
        self.error_challenge: dict[str, Any] | None = None
        self.raw_challenge: bytes | None = None

    def __call__(self, challenge: bytes) -> bytes:
        if not self._sent:
            self._sent = True
            return self._initial
        # Anything after the token is an error challenge (RFC 7628 section 3.2.2): never send the token twice.
        self.raw_challenge = bytes(challenge or b"")
        self.error_challenge = _decode_challenge(self.raw_challenge)
        return b"\x01" if self.mechanism == OAUTHBEARER else b""

    @property
    def error_status(self) -> str | None:
        if self.error_challenge is None:
            return None
        status = self.error_challenge.get("status")
        return str(status) if status is not None else None

    def __repr__(self) -> str:
        return f"OAuth2SaslAuthenticator(mechanism={self.mechanism!r}, user={self.user!r}, " \
               f"error_status={self.error_status!r})"


def _decode_challenge(challenge: bytes) -> dict[str, Any] | None:
    try:
        decoded = json.loads(challenge.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return decoded if isinstance(decoded, dict) else None
