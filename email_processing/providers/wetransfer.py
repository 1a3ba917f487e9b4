"""WeTransfer: ``wetransfer.com/downloads/<transfer>/[<recipient>/]<hash>`` (also on branded subdomains) and the
``we.tl`` short links. Landing pages: the files behind them come from resolution, which will also name the
download hosts the Worker may use (none until then, so nothing of it is copied).
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
)
