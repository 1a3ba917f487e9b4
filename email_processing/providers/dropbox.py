"""Dropbox: shared links (``/s/``, ``/scl/fi/``, folders ``/scl/fo/`` and legacy ``/sh/``), file requests, the
``dl.dropbox.com`` / ``dl.dropboxusercontent.com`` download hosts, the ``www.dropbox.com/l/…`` click-tracking links of
Dropbox's own notifications and Dropbox Transfer (``www.dropbox.com/t/…``). The direct form is ``dl=1`` on
``www.dropbox.com`` with ``rlkey``/``st`` kept (``rlkey`` grants access); ``/l/`` and ``/t/`` links are landing pages
until resolution follows them, and a file request is an upload page.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from email_processing.providers.base import HostRule, Provider, path, query_pairs
from email_processing.urls import host_matches

_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp", ".ico", ".bmp")
# Canonical order of the Dropbox parameters we keep; unknown ones follow, sorted; ``dl`` is always last.
_DROPBOX_PARAM_ORDER = ("rlkey", "st", "e")
# Links that are pages, not files: an upload page, a notification's tracking link, a Transfer's landing page.
_NO_DIRECT_FORM = ("/request/", "/l/", "/t/")


def dropbox_direct_url(url: str) -> str:
    """Dropbox direct-download form: https://www.dropbox.com, path kept, ``rlkey``/``st`` kept, ``dl=1`` last."""
    parts = urlsplit(url)
    if parts.path.startswith(_NO_DIRECT_FORM):
        return url  # there is no direct form to write: the page itself is passed on
    pairs = [(k, v) for k, v in query_pairs(parts.query) if k not in ("dl", "raw")]
    rank = {name: index for index, name in enumerate(_DROPBOX_PARAM_ORDER)}
    pairs.sort(key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))
    query = "&".join(f"{k}={v}" for k, v in pairs + [("dl", "1")])
    return f"https://www.dropbox.com{parts.path}?{query}"


def _is_dropbox_image_asset(url: str) -> bool:
    """Logos and avatars in Dropbox mails are images served inline (``raw=1``), not shared files."""
    parts = urlsplit(url)
    if not parts.path.lower().endswith(_IMAGE_EXTENSIONS):
        return False
    return any(k == "raw" and v == "1" for k, v in query_pairs(parts.query))


def is_dropbox_folder(url: str) -> bool:
    """True for Dropbox folder links (``/scl/fo/``, legacy ``/sh/``), which the Worker zips (long timeout)."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").rstrip(".")
    except ValueError:
        return False
    return host_matches(host, "dropbox.com") and parts.path.startswith(("/scl/fo/", "/sh/"))


def _is_a_page(url: str) -> bool:
    """An upload page, or a link whose file only resolution reaches (a notification's ``/l/``, a Transfer's ``/t/``):
    copied as it is, R2 would get the page, not the file (and the Worker's fetch of ``/l/`` would count as a click)."""
    return urlsplit(url).path.startswith(_NO_DIRECT_FORM)


PROVIDER = Provider(
    "dropbox",
    (
        HostRule("dropbox.com", path(r"^/(?:s|scl/fi|scl/fo|sh|request)/[^/]+")),
        # the download host of the same shared links (the host swap Dropbox documents for a forced download)
        HostRule("dl.dropboxusercontent.com", path(r"^/(?:s|scl/fi)/[^/]+")),
        # only on www: help.dropbox.com and the rest of dropbox.com have pages under these letters too
        HostRule("www.dropbox.com", path(r"^/l/(?:scl/)?[A-Za-z0-9_-]{8,}/?$|^/t/[A-Za-z0-9_-]{6,}/?$")),
    ),
    direct=dropbox_direct_url,
    excluded=_is_dropbox_image_asset,
    copyable=True,
    never_copied=_is_a_page,
    download_hosts=("dropbox.com", "dropboxusercontent.com"),
    key_params=frozenset({"rlkey", "st", "e", "dl", "raw"}),
    folder=is_dropbox_folder,
)
