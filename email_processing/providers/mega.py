"""MEGA: ``mega.nz/file/<handle>#<key>`` and ``mega.nz/folder/<handle>#<key>`` (also on the old ``mega.co.nz`` host),
and the legacy ``mega.nz/#!<handle>!<key>`` / ``#F!<handle>!<key>`` forms. The decryption key is in the fragment,
so the fragment stays in ``raw_url`` and two links that differ only in it are two links; the content is encrypted
end to end, so a MEGA link is detected and passed on, never copied. Like every link, it never goes into a log line.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from email_processing.providers.base import HostRule, Provider, path

_LINK_PATH = r"^/(?:file|folder)/[A-Za-z0-9_-]{6,}$|^/$"
_LEGACY_FRAGMENT = re.compile(r"^F?![A-Za-z0-9_-]{6,}!")


def _is_not_a_link(url: str) -> bool:
    """The home page ``mega.nz/`` and its ``#`` pages (``#register``, …): only ``#!``/``#F!`` make it a link."""
    parts = urlsplit(url)
    return parts.path in ("", "/") and _LEGACY_FRAGMENT.match(parts.fragment) is None


def _is_folder(url: str) -> bool:
    parts = urlsplit(url)
    return parts.path.startswith("/folder/") or parts.fragment.startswith("F!")


PROVIDER = Provider(
    "mega",
    (HostRule("mega.nz", path(_LINK_PATH)), HostRule("mega.co.nz", path(_LINK_PATH))),
    excluded=_is_not_a_link,
    copyable=False,
    fragment_identifies=True,
    folder=_is_folder,
)
