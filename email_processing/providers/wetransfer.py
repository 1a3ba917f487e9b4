"""WeTransfer: ``wetransfer.com/downloads/<transfer>/[<recipient>/]<hash>`` (also on branded subdomains) and the
``we.tl`` short links. Landing pages: the files behind them come from resolution (``services/resolvers/wetransfer.py``,
with ``RESOLVE_WETRANSFER=true``), whose direct links the Worker copies none of yet (see ``download_hosts``).
"""

from __future__ import annotations

from email_processing.providers.base import HostRule, Provider, path

PROVIDER = Provider(
    "wetransfer",
    (
        HostRule("wetransfer.com", path(r"^/downloads/[^/]+/[^/]+")),
        HostRule("we.tl", path(r"^/[A-Za-z0-9][A-Za-z0-9_-]*/?$")),
    ),
    copyable=True,
    # No download hosts yet, on purpose: the direct links are on download.wetransfer.com, but listing it puts
    # WeTransfer links on the copy path, landing pages included (they would be refused, yet queued for enrichment).
)
