"""SwissTransfer (Infomaniak): share links ``/d/<uuid>`` (v1, www.swisstransfer.com) and ``/dl/<uuid>`` (v2, also on
swisstransfer.infomaniak.com), and the ``/api/download/…`` file URLs; a ``?delete=`` link deletes the transfer and is
never a delivery. Landing pages: the files (on ``dl-<id>.swisstransfer.com``, per Infomaniak's apps) come from
resolution (``services/resolvers/swisstransfer.py``), which the R2 copy fetches one by one. A landing page itself is
never copied (``never_copied``): only ``/api/download/…`` file URLs are.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from email_processing.providers.base import HostRule, Provider, path, query_pairs


def _is_swisstransfer_delete_link(url: str) -> bool:
    return any(k == "delete" for k, _ in query_pairs(urlsplit(url).query))


def _is_landing_page(url: str) -> bool:
    """A ``/d/`` or ``/dl/`` share page (HTML), as opposed to an ``/api/download/…`` file."""
    return not urlsplit(url).path.startswith("/api/download/")


PROVIDER = Provider(
    "swisstransfer",
    (
        HostRule("swisstransfer.com", path(r"^/(?:d|dl)/[^/]+|^/api/download/[^/]+")),
        HostRule("swisstransfer.infomaniak.com", path(r"^/(?:d|dl)/[^/]+")),
    ),
    excluded=_is_swisstransfer_delete_link,
    copyable=True,
    never_copied=_is_landing_page,
    # The files are on dl-<id>.swisstransfer.com; landing pages on the same domain are kept out by never_copied.
    download_hosts=("swisstransfer.com",),
)
