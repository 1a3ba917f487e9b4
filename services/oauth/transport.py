"""How the token providers reach a token endpoint: only over https unless the caller explicitly allows plain http
(tests), through a ``requests.Session`` that trusts a given CA file.

With a CA file the session ignores the environment (``trust_env`` off): requests prefers ``REQUESTS_CA_BUNDLE``
to a session's ``verify``, so a private CA would silently lose to it. Without one it is a plain session (system
CAs, proxies from the environment)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import requests

DEFAULT_TIMEOUT_SECONDS = 10.0


class InsecureEndpointError(ValueError):
    """A configuration error, raised when a provider is built: an endpoint that is not https."""


def require_secure_endpoint(url: str, *, allow_insecure: bool = False, name: str = "endpoint") -> str:
    """``url`` itself when it is https (or http with ``allow_insecure``); otherwise InsecureEndpointError."""
    parts = urlsplit(url)
    if not parts.netloc or parts.scheme not in ("https", "http"):
        raise InsecureEndpointError(f"{name} must be an absolute https URL, not {parts.scheme or 'a relative'} URL")
    if parts.scheme == "http" and not allow_insecure:
        raise InsecureEndpointError(f"{name} is plain http ({parts.netloc}): use https, or allow_insecure=True "
                                    "(OAUTH_ALLOW_INSECURE=true, tests only)")
    return url


def require_secure_endpoints(*, allow_insecure: bool, **urls: str) -> None:
    """``require_secure_endpoint`` for each of ``urls`` (name=url)."""
    for name, url in urls.items():
        require_secure_endpoint(url, allow_insecure=allow_insecure, name=name)


class _BoundedSession(requests.Session):
    """Every request without its own ``timeout`` gets the session's (MSAL passes none to a session it is given)."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.default_timeout = timeout

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.default_timeout
        return super().request(method, url, *args, **kwargs)


def http_session(ca_file: str | None = None, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> requests.Session:
    """A session verifying certificates against ``ca_file`` (else the system store), bounded by ``timeout``."""
    session = _BoundedSession(timeout)
    if ca_file:
        session.verify = ca_file
        session.trust_env = False
    return session
