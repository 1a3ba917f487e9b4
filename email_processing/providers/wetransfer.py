"""WeTransfer: ``wetransfer.com/downloads/<transfer>/[<recipient>/]<hash>`` (also on branded subdomains) and the
``we.tl`` short links. Landing pages, never copied themselves: the files behind them come from resolution
(``services/resolvers/wetransfer.py``, with ``RESOLVE_WETRANSFER=true``), whose direct links on
``download.wetransfer.com`` (one file, or the transfer's zip) are what R2 copies.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from email_processing.providers.base import HostRule, Provider, path
from email_processing.urls import host_matches

DIRECT_HOST = "download.wetransfer.com"


def _is_a_landing_page(url: str) -> bool:
    """Every delivery link (a transfer's page, a short link) is; only the resolver's direct links are files."""
    return not host_matches((urlsplit(url).hostname or "").rstrip(".").lower(), DIRECT_HOST)

PROVIDER = Provider(
    "wetransfer",
    (
        HostRule("wetransfer.com", path(r"^/downloads/[^/]+/[^/]+")),
        HostRule("we.tl", path(r"^/[A-Za-z0-9][A-Za-z0-9_-]*/?$")),
    ),
    copyable=True,
    never_copied=_is_a_landing_page,
    # The host of the direct links the web client gets (a WeTransfer-owned name: were the links to move elsewhere,
    # the Worker refuses the host as policy and the webhook keeps the landing URL).
    download_hosts=(DIRECT_HOST,),
)
