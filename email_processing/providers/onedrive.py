"""OneDrive (personal): short links ``1drv.ms/<t>/s!<token>`` and the newer ``1drv.ms/<t>/c/<cid>/<token>`` (``<t>``
is the item type: ``f`` a folder, ``u`` any file, ``w``/``x``/``p``/``b`` Office documents and PDF, …), and the long
``onedrive.live.com`` forms carrying the item (``?resid=`` / ``?id=``): the bare page, ``redir``, ``embed``,
``download``, ``view.aspx``. The direct form (``download=1``, or the redirect of a short link) is resolution's. Since
personal OneDrive moved onto SharePoint, downloads are served from ``*.microsoftpersonalcontent.com`` as well as the
older ``*.1drv.com`` / ``*.livefilestore.com`` hosts.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from email_processing.providers.base import HostRule, Provider, path, query_value


def _is_own_root(url: str) -> bool:
    """``onedrive.live.com/?id=root``: the owner's own OneDrive (a notification's "Go to OneDrive"), not an item."""
    item = query_value(url, "id")
    return query_value(url, "resid") is None and item is not None and item.lower() == "root"


def _is_folder(url: str) -> bool:
    parts = urlsplit(url)
    return (parts.hostname or "").rstrip(".").lower() == "1drv.ms" and parts.path.startswith("/f/")


PROVIDER = Provider(
    "onedrive",
    (
        HostRule("1drv.ms", path(r"^/[a-z]/(?:s![A-Za-z0-9_-]+|c/[0-9A-Fa-f]+/[A-Za-z0-9_-]+)")),
        HostRule("onedrive.live.com", path(r"^/(?:redir|embed|download|view\.aspx|edit\.aspx|redir\.aspx)?$"),
                 frozenset({"resid", "id"})),
    ),
    excluded=_is_own_root,
    copyable=True,
    download_hosts=("1drv.ms", "onedrive.live.com", "1drv.com", "onedrive.com", "livefilestore.com",
                    "microsoftpersonalcontent.com"),
    folder=_is_folder,
)
