"""Box's resolver (issue 19): a shared link's direct form, ``/shared/static/<shared name>``.

Box's API documents a shared file's ``download_url`` as ``https://<host>/shared/static/<shared name>.<ext>``
beside its ``url`` ``https://<host>/s/<shared name>``; the extension is optional (Box serves the file without it).
So ``/s/<name>`` on ``app.box.com`` or a company's ``<company>.app.box.com`` becomes ``/shared/static/<name>`` on the
same host (pure), asked with a ``HEAD``, redirects followed one hop at a time (to ``*.boxcloud.com``, headers only):
a download is ``ok`` with its name and size from the headers; a sign-in (``/login``, ``account.box.com``: a link for
the company's or the collaborators' eyes only) is ``error`` and never fetched; ``404`` is ``not_found``; a page is
``unsupported`` (a password prompt: Box asks it on a page; a folder). Custom (vanity) links ``/v/<name>`` and a file
inside a shared folder (``/s/<name>/file/<n>``) have no static form Box documents: ``unsupported`` without a request.
Residual risk: Box may count the HEAD in the link's ``download_count``. In production the link's own host is asked;
a configured endpoint (tests) replaces its origin.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from config import ProviderConfig
from email_processing.links import DeliveryLink
from email_processing.resolution import Resolution, ResolutionStatus
from services.resolvers.base import ProviderHttp
from services.resolvers.share_links import download_resolution, host_of, on_endpoint, walk

_SHARED = re.compile(r"^/s/([A-Za-z0-9_-]+)/?$")
_STATIC = re.compile(r"^/shared/static/[A-Za-z0-9]+(?:\.\w+)?$")


def box_direct_url(url: str) -> str | None:
    """``/shared/static/<name>`` for ``/s/<name>`` (a static link itself), None for shapes without one."""
    parts = urlsplit(url)
    if _STATIC.match(parts.path):
        return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    match = _SHARED.match(parts.path)
    if match is None:
        return None
    return urlunsplit((parts.scheme, parts.netloc, f"/shared/static/{match.group(1)}", "", ""))


def is_box_sign_in(url: str) -> bool:
    try:
        path = urlsplit(url).path
    except ValueError:
        return False
    return host_of(url) == "account.box.com" or path == "/login" or path.startswith("/login/")


class BoxResolver:
    provider = "box"

    def handles(self, link: DeliveryLink) -> bool:
        return link.provider == self.provider

    def resolve(self, link: DeliveryLink, http: ProviderHttp, config: ProviderConfig) -> Resolution:
        direct = box_direct_url(on_endpoint(link.raw_url, config))
        if direct is None:
            return Resolution(ResolutionStatus.UNSUPPORTED)
        answer, sign_in = walk(http, direct, stop=is_box_sign_in)
        return download_resolution(answer, direct, signed_in_only=sign_in is not None)


RESOLVER = BoxResolver()
