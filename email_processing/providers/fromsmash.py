"""Smash: ``fromsmash.com/<id-or-custom-slug>`` and team subdomains ``<team>.fromsmash.com/<…>``. Custom slugs make
any single path segment a possible transfer, so the site's own pages and the API host are excluded. Landing pages:
the files come from resolution (``services/resolvers/fromsmash.py``, its transfer preview API, with
``SMASH_API_KEY``), whose signed file URLs on ``*.fromsmash.co`` R2 copies one by one.
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


def _is_a_landing_page(url: str) -> bool:
    """Every Smash delivery link names a transfer's page, never a file; files are on ``fromsmash.co`` hosts."""
    return not host_matches((urlsplit(url).hostname or "").rstrip(".").lower(), "fromsmash.co")


PROVIDER = Provider(
    "fromsmash",
    (HostRule("fromsmash.com", path(r"^/[A-Za-z0-9][A-Za-z0-9_-]*/?$")),),
    excluded=_is_fromsmash_non_transfer,
    copyable=True,
    # every Smash link is a landing page: none goes to the Worker as it is; its resolved files do
    never_copied=_is_a_landing_page,
    # the regional API the resolver calls (transfer.<region>.fromsmash.co) and the signed file URLs (a Smash-owned
    # domain: files served from another host are refused by the Worker as policy, and keep their source URLs)
    download_hosts=("fromsmash.co",),
)
