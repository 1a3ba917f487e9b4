"""SwissTransfer (Infomaniak): share links ``/d/<uuid>`` (v1, www.swisstransfer.com) and ``/dl/<uuid>`` (v2, also on
swisstransfer.infomaniak.com), and the ``/api/download/…`` file URLs; a ``?delete=`` link deletes the transfer and is
never a delivery. Landing pages: the files (on ``dl-<id>.swisstransfer.com``, per Infomaniak's apps) come from
resolution (``services/resolvers/swisstransfer.py``); the Worker copies none of them yet (see ``download_hosts``).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from email_processing.providers.base import HostRule, Provider, path, query_pairs


def _is_swisstransfer_delete_link(url: str) -> bool:
    return any(k == "delete" for k, _ in query_pairs(urlsplit(url).query))


PROVIDER = Provider(
    "swisstransfer",
    (
        HostRule("swisstransfer.com", path(r"^/(?:d|dl)/[^/]+|^/api/download/[^/]+")),
        HostRule("swisstransfer.infomaniak.com", path(r"^/(?:d|dl)/[^/]+")),
    ),
    excluded=_is_swisstransfer_delete_link,
    copyable=True,
    # No download hosts yet, on purpose: the files are on dl-<id>.swisstransfer.com, which only "swisstransfer.com"
    # covers, and with it the Worker would also be sent an unresolved landing page (www.swisstransfer.com/d/…) and
    # store the page. The resolver checks its download URLs against the domains above.
)
