"""OneDrive's (personal) resolver (issue 19): a share's direct form on ``onedrive.live.com``.

``onedrive.live.com`` share links (``redir``, ``embed``, ``view.aspx``, the bare ``/?id=…``) have a direct form on
the same host: the path ``/download`` with the same query (``resid``, ``authkey``, ``cid``…; a bare page's ``id`` is
the ``resid``). ``1drv.ms`` short links are redirects to one of those: they are followed one hop at a time (``HEAD``,
each hop host-checked) until the first hop on an ``onedrive.live.com`` page form, which is not fetched but turned into
its direct form. That form is then asked with a ``HEAD``, redirects followed (to ``*.files.1drv.com`` /
``*.livefilestore.com``, or ``my.microsoftpersonalcontent.com`` since personal OneDrive moved onto SharePoint):
a download is ``ok`` with its name and size from the headers; a sign-in (``login.live.com``,
``login.microsoftonline.com``) is ``error`` (not shared with anyone with the link; never fetched); ``404`` is
``not_found``; a page is ``unsupported``. Folder short links (``1drv.ms/f/…``) are ``unsupported`` without a request.
The newest links redirect with a ``redeem`` token instead of ``resid``: their ``/download`` form is the same rewrite,
unverified against the real service. In production the link's own host is asked; a configured endpoint (tests)
replaces its origin.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from config import ProviderConfig
from email_processing.links import DeliveryLink
from email_processing.providers.base import query_pairs
from email_processing.providers.onedrive import PROVIDER as ONEDRIVE
from email_processing.resolution import Resolution, ResolutionStatus
from services.resolvers.base import ProviderHttp
from services.resolvers.share_links import download_resolution, host_of, on_endpoint, walk
from services.resolvers.sharepoint import is_microsoft_sign_in

SHORT_HOST = "1drv.ms"
_PAGE_PATH = re.compile(r"^/(?:redir|embed|download|view\.aspx|edit\.aspx|redir\.aspx)?$", re.IGNORECASE)


def is_onedrive_page(url: str) -> bool:
    """True for an ``onedrive.live.com`` share page form (its path only: the host is checked by ``ProviderHttp``)."""
    return _PAGE_PATH.match(urlsplit(url).path) is not None


def onedrive_direct_url(url: str) -> str:
    """``/download`` with the page's query (``id`` renamed ``resid`` when there is no ``resid``)."""
    parts = urlsplit(url)
    pairs = query_pairs(parts.query)
    if not any(k == "resid" for k, _ in pairs):
        pairs = [("resid" if k == "id" else k, v) for k, v in pairs]
    query = "&".join(f"{k}={v}" for k, v in pairs)
    return urlunsplit((parts.scheme, parts.netloc, "/download", query, ""))


class OneDriveResolver:
    provider = "onedrive"

    def handles(self, link: DeliveryLink) -> bool:
        return link.provider == self.provider

    def resolve(self, link: DeliveryLink, http: ProviderHttp, config: ProviderConfig) -> Resolution:
        if ONEDRIVE.is_folder(link.raw_url):
            return Resolution(ResolutionStatus.UNSUPPORTED)
        page = on_endpoint(link.raw_url, config)
        if host_of(link.raw_url) == SHORT_HOST:
            answer, landing = walk(http, page, stop=lambda url: is_onedrive_page(url) or is_microsoft_sign_in(url))
            if landing is None:
                return download_resolution(answer, page)
            if is_microsoft_sign_in(landing):
                return Resolution(ResolutionStatus.ERROR)
            page = http.checked(landing)  # a look-alike host raises here, before the page is read
        direct = onedrive_direct_url(page)
        answer, sign_in = walk(http, direct, stop=is_microsoft_sign_in)
        return download_resolution(answer, direct, signed_in_only=sign_in is not None)


RESOLVER = OneDriveResolver()
