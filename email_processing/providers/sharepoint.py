"""SharePoint and OneDrive for Business: sharing links ``https://<tenant>[-my].sharepoint.com/:<t>:/<s>/<…>``, where
``<t>`` is the item type (``f`` a folder, ``u`` any file, ``w``/``x``/``p`` Office documents, ``b`` PDF, ``i`` image,
``v`` video, ``t`` text, ``o`` OneNote) and ``<s>`` the link's scope (``g`` anyone, ``s``/``r`` site, ``p`` the
shorter personal form, …), and the older anonymous ``_layouts/15/guestaccess.aspx?share=…`` form. The tenant is the
customer's own subdomain, so the whole of ``sharepoint.com`` is the provider's. The direct form (``download=1``)
is resolution's.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from email_processing.providers.base import HostRule, Provider, path

_FOLDER_PATH = re.compile(r"^/:f:/")


def _is_folder(url: str) -> bool:
    return _FOLDER_PATH.match(urlsplit(url).path) is not None


PROVIDER = Provider(
    "sharepoint",
    (
        HostRule("sharepoint.com", path(r"^/:[a-z]:/[a-z]/[^/]+")),
        HostRule("sharepoint.com", path(r"^/(?:[^?#]*/)?_layouts/15/guestaccess\.aspx$"),
                 frozenset({"share", "docid"})),
    ),
    copyable=True,
    download_hosts=("sharepoint.com",),
    folder=_is_folder,
)
