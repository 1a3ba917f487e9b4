"""Access tokens as the OAuth2 providers hand them out: the value (a secret, never in ``repr``), when it was
obtained and when it expires (epoch seconds), the refresh rule of issue 18, and the interface every provider has."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

# Refresh when less than min(REFRESH_MARGIN_MAX_SECONDS, REFRESH_MARGIN_FRACTION of the lifetime) remains.
REFRESH_MARGIN_MAX_SECONDS = 300.0
REFRESH_MARGIN_FRACTION = 0.10

# RFC 6750 section 2.1 b64token: what may follow "Bearer " (a JWT fits). Anything else could break the SASL string.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


@dataclass(frozen=True)
class AccessToken:
    """A bearer access token; ``expires_at`` and ``obtained_at`` are epoch seconds."""

    value: str = field(repr=False)
    expires_at: float
    obtained_at: float

    @property
    def lifetime(self) -> float:
        return max(0.0, self.expires_at - self.obtained_at)

    def remaining(self, now: float) -> float:
        return self.expires_at - now


def refresh_at(token: AccessToken) -> float:
    """When ``token`` is due for renewal: once less than min(5 minutes, 10 % of its lifetime) of it remains."""
    return token.expires_at - min(REFRESH_MARGIN_MAX_SECONDS, REFRESH_MARGIN_FRACTION * token.lifetime)


def needs_refresh(token: AccessToken | None, now: float) -> bool:
    """True when there is no token or less than min(5 minutes, 10 % of its lifetime) of it remains."""
    return token is None or now > refresh_at(token)


def is_bearer_token(value: str) -> bool:
    """A value that can go into ``auth=Bearer <token>`` as RFC 6750 has it."""
    return _B64TOKEN.fullmatch(value) is not None


@dataclass(frozen=True)
class CacheKey:
    """What identifies a token (issue 18): an app-only token has no subject, so every mailbox of that app shares it.
    ``tenant`` is the Microsoft tenant, or the token endpoint of a generic provider."""

    provider: str
    tenant: str | None
    client: str | None
    scope: str | None
    subject: str | None


class TokenProvider(Protocol):
    """A source of access tokens. ``fetch_token`` always asks the source (the cache decides when to call it) and
    raises ``services.oauth.errors.OAuthError``."""

    @property
    def cache_key(self) -> CacheKey: ...

    def fetch_token(self) -> AccessToken: ...
