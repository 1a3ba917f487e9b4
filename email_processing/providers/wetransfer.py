"""WeTransfer: ``wetransfer.com/downloads/<transfer>/[<recipient>/]<hash>`` (also on branded subdomains) and the
``we.tl`` short links. Landing pages: the files behind them come from resolution (``services/resolvers/wetransfer.py``,
with ``RESOLVE_WETRANSFER=true``), whose direct links the Worker may fetch from ``download.wetransfer.com`` (never
the landing pages).
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
    # the direct links the download API hands out; not wetransfer.com itself, whose landing pages R2 must not copy
    download_hosts=("download.wetransfer.com",),
)
