"""SharePoint's and OneDrive for Business's resolver (issue 19): a sharing link's direct form, ``download=1``.

The direct form of ``https://<tenant>[-my].sharepoint.com/:<t>:/<s>/<…>?e=<…>`` (and of the older
``_layouts/15/guestaccess.aspx?share=…``) is the same URL with ``download=1`` added (``e``, ``d``, ``share`` kept;
``web`` and any earlier ``download`` dropped): SharePoint then answers a redirect to the tenant's
``/_layouts/15/download.aspx?UniqueId=…`` (a short-lived ``tempauth`` in its query), which serves the file. The
request: ``HEAD`` of that form, redirects followed one hop at a time on ``sharepoint.com`` (headers only, no body):
a download (``Content-Disposition``, ``Content-Length``) is ``ok`` with its name and size; a redirect to a sign-in
(``login.microsoftonline.com``, the tenant's ``/_forms/`` or ``Authenticate.aspx``) is ``error``: the link is for
the organisation's people or named recipients, not anyone (the sign-in page is never fetched); ``404`` is
``not_found``; a page is ``unsupported`` (a password prompt or a viewer). Folders (``:f:``) are ``unsupported``
without a request. Sharing links carry no expiry SharePoint states up front: ``expires_at`` is None. In production
the link's own host is asked; a configured endpoint (tests) replaces its origin.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from config import ProviderConfig
from email_processing.links import DeliveryLink
from email_processing.providers.base import query_pairs
from email_processing.providers.sharepoint import PROVIDER as SHAREPOINT
from email_processing.resolution import Resolution, ResolutionStatus
from services.resolvers.base import ProviderHttp
from services.resolvers.share_links import download_resolution, host_of, on_endpoint, walk

SIGN_IN_HOSTS = frozenset({"login.microsoftonline.com", "login.microsoft.com", "login.live.com"})
_SIGN_IN_PATHS = ("/_forms/", "/_layouts/15/authenticate.aspx", "/_layouts/15/accessdenied.aspx")


def is_microsoft_sign_in(url: str) -> bool:
    """True for a Microsoft sign-in page, or a SharePoint tenant's own sign-in or access-denied page."""
    try:
        path = urlsplit(url).path.lower()
    except ValueError:
        return False
    return host_of(url) in SIGN_IN_HOSTS or any(marker in path for marker in _SIGN_IN_PATHS)


def sharepoint_direct_url(url: str) -> str:
    """The sharing link with ``download=1`` (``web`` and any earlier ``download`` dropped, the rest kept)."""
    parts = urlsplit(url)
    pairs = [(k, v) for k, v in query_pairs(parts.query) if k.lower() not in ("download", "web")]
    query = "&".join(f"{k}={v}" if v else k for k, v in pairs + [("download", "1")])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


class SharePointResolver:
    provider = "sharepoint"

    def handles(self, link: DeliveryLink) -> bool:
        return link.provider == self.provider

    def resolve(self, link: DeliveryLink, http: ProviderHttp, config: ProviderConfig) -> Resolution:
        if SHAREPOINT.is_folder(link.raw_url):
            return Resolution(ResolutionStatus.UNSUPPORTED)
        direct = sharepoint_direct_url(on_endpoint(link.raw_url, config))
        answer, sign_in = walk(http, direct, stop=is_microsoft_sign_in)
        return download_resolution(answer, direct, signed_in_only=sign_in is not None)


RESOLVER = SharePointResolver()
