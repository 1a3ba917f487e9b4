"""Dropbox's resolver (issue 19): the ``www.dropbox.com/l/…`` click-tracking links of Dropbox's own notifications
("X shared a file with you") turned into the share link they lead to, and that link's direct (``dl=1``) form.

Which ``/l/`` links are followed, and why: an ``/l/`` link is a redirect that Dropbox records as the recipient's
click, and the same prefix carries every link of Dropbox's mails: shares (``/l/scl/<token>``), but also password
resets (``/l/<token>/forgot_finish``), deleted-file notices, file requests, tracking pixels (``/l/<token>`` as a
1×1 image) and account or e-mail settings, unsubscribe included. Only ``/l/scl/<token>`` is followed: the shape
share notifications use ("Go to file", "Go to folder"). A bare ``/l/<token>`` may be anything, a pixel or an
unsubscribe, so it is ``unsupported`` without a request.

Requests: ``HEAD <DROPBOX_LINK_BASE>/l/scl/<token>`` (the link's path on the configured origin, which is the link's own
``https://www.dropbox.com`` in production), one hop at a time, never more than the hop itself: each redirect target is
host-checked (dropbox.com hosts only) and read, not fetched, unless it is another ``/l/scl/`` link. A target that is a
share link (``/s/…``, ``/scl/fi/…``, ``/scl/fo/…``) is ``ok``: ``direct_url`` is its ``dl=1`` form (``rlkey`` and
``st`` kept), the file name the last segment of its path (a folder lists no file: its ``dl=1`` form is a zip). A
target anywhere else (a sign-in page, settings, an unsubscribe page) is ``unsupported``, and it is never fetched
(fetching an unsubscribe target would unsubscribe the recipient). ``404``/``410`` are ``not_found``; a page
(``200``) instead of a redirect is ``unsupported``. ``RESOLVE_DROPBOX_TRACKING_LINKS=false`` turns this off
(``none``).

Residual risk: the one HEAD of an ``/l/scl/`` link may still count as the recipient's click on the share ("viewed"
in the sender's activity, a notification's "opened" statistics), and Dropbox could start using ``/l/scl/`` for
something else; the fakes cannot show either (README limits).

Plain share links (``/s/``, ``/scl/fi/``, ``/scl/fo/``) need no request: their direct form is written by the
extractor, so they stay ``none`` (a HEAD of their ``dl=1`` form would give the name and size, but Dropbox would
count it as a download, and the name is in the path already).
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

from config import ProviderConfig
from email_processing.links import DeliveryLink
from email_processing.providers.dropbox import dropbox_direct_url, is_dropbox_folder
from email_processing.resolution import Resolution, ResolutionStatus, ResolvedFile
from services.resolvers.base import ProviderHttp, ResolverError
from services.resolvers.share_links import MAX_HOPS, REDIRECTS, last_path_segment, on_endpoint

logger = logging.getLogger(__name__)

# the only /l/ links followed: share notifications' "Go to file/folder"
SHARE_TRACKING_PATH = re.compile(r"^/l/scl/[A-Za-z0-9_-]{8,}/?$")
SHARE_PATH = re.compile(r"^/(?:s|scl/fi|scl/fo)/[^/]+")


def is_followed_tracking_link(url: str) -> bool:
    """True for the ``/l/`` links this resolver follows (``/l/scl/<token>``): see the module docstring."""
    return SHARE_TRACKING_PATH.match(urlsplit(url).path) is not None


def is_share_link(url: str) -> bool:
    return SHARE_PATH.match(urlsplit(url).path) is not None


def share_resolution(share_url: str) -> Resolution:
    """``ok`` for a share link a tracking link led to: its ``dl=1`` form, and the file its path names."""
    direct = dropbox_direct_url(share_url)
    if is_dropbox_folder(direct):
        return Resolution(ResolutionStatus.OK, direct_url=direct)
    name = last_path_segment(share_url)
    files = (ResolvedFile(name, None, direct),) if name else ()
    return Resolution(ResolutionStatus.OK, files, file_count=len(files) or None, direct_url=direct)


class DropboxResolver:
    provider = "dropbox"

    def handles(self, link: DeliveryLink) -> bool:
        return link.provider == self.provider and urlsplit(link.raw_url).path.startswith("/l/")

    def resolve(self, link: DeliveryLink, http: ProviderHttp, config: ProviderConfig) -> Resolution:
        if not config.resolve_tracking_links:
            return Resolution(ResolutionStatus.NONE)
        if not is_followed_tracking_link(link.raw_url):
            return Resolution(ResolutionStatus.UNSUPPORTED)
        url = on_endpoint(link.raw_url, config)
        for _ in range(MAX_HOPS):
            answer = http.request("HEAD", url)
            if answer.status == 405:
                answer = http.request("GET", url)
            if answer.status in (404, 410):
                return Resolution(ResolutionStatus.NOT_FOUND)
            if answer.status == 200:
                return Resolution(ResolutionStatus.UNSUPPORTED)
            location = answer.location() if answer.status in REDIRECTS else None
            if location is None:
                raise ResolverError("invalid_answer", f"status {answer.status}")
            target = http.checked(location)  # a look-alike host raises here, before anything reads the target
            if is_share_link(target):
                return share_resolution(target)
            if not is_followed_tracking_link(target):
                logger.info("RESOLVE: a dropbox tracking link led elsewhere than a share (not followed)")
                return Resolution(ResolutionStatus.UNSUPPORTED)
            url = target
        raise ResolverError("invalid_answer", "too many redirects")


RESOLVER = DropboxResolver()
