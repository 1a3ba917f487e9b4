"""Smash: ``fromsmash.com/<id-or-custom-slug>`` and team subdomains ``<team>.fromsmash.com/<…>``. Custom slugs make
any single path segment a possible transfer, so the site's own pages and the API host are excluded. Landing pages:
the files come from resolution (``services/resolvers/fromsmash.py``, its transfer preview API, with
``SMASH_API_KEY``); the Worker may fetch their signed URLs from ``fromsmash.co`` and its subdomains.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from email_processing.providers.base import HostRule, Provider, path
from email_processing.urls import host_matches

# Custom slugs make any single path segment a possible transfer; these are the site's own pages.
_FROMSMASH_SITE_PATHS = frozenset({
    "about", "api", "app", "blog", "business", "contact", "cookies", "developers", "download", "downloads",
    "enterprise", "faq", "features", "help", "home", "legal", "login", "logout", "plans", "pricing", "privacy",
    "pro", "register", "security", "signin", "signup", "support", "team", "teams", "terms", "upload",
})


def _is_fromsmash_non_transfer(url: str) -> bool:
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".").lower()
    if host_matches(host, "api.fromsmash.com") or host.endswith(".api.fromsmash.com"):
        return True
    return parts.path.strip("/").lower() in _FROMSMASH_SITE_PATHS


PROVIDER = Provider(
    "fromsmash",
    (HostRule("fromsmash.com", path(r"^/[A-Za-z0-9][A-Za-z0-9_-]*/?$")),),
    excluded=_is_fromsmash_non_transfer,
    copyable=True,
    # the regional API (transfer.<region>.fromsmash.co) and its signed download URLs (host not verified)
    download_hosts=("fromsmash.co",),
)
