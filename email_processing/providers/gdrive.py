"""Google Drive: file links (``drive.google.com/file/d/<id>/view``, ``/open?id=``, ``/uc?id=``), folders
(``/drive/folders/<id>``), the download forms (``docs.google.com/uc?id=…&export=download``,
``drive.usercontent.google.com/download?id=…``), and Google Docs, Sheets and Slides (``docs.google.com/document|
spreadsheets|presentation/d/<id>``), which are ``gdrive`` links passed on and never copied (they are not files: a copy
would be an export). ``/uc?export=view`` is how mails embed a Drive image inline: an image, not a link. The direct
form of a file link is ``drive.google.com/uc?id=<id>&export=download`` (``resourcekey`` kept: older shared files
need it); the large-file confirmation step is resolution's.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from email_processing.providers.base import HostRule, Provider, path, query_pairs, query_value

_ID = r"[A-Za-z0-9_-]{10,}"
_ACCOUNT = r"(?:u/\d+/)?"  # /u/1/: the signed-in account index the sender's browser showed
_DOMAIN = r"(?:a/[^/]+/)?"  # /a/example.com/: a Workspace domain prefix on older docs.google.com links
_FILE_PATH = re.compile(rf"^/{_ACCOUNT}file/(?:{_ACCOUNT})?d/({_ID})")
_EDITORS = r"(?:document|spreadsheets|presentation)"
_EDITOR_PATH = re.compile(rf"^/{_DOMAIN}{_EDITORS}/{_ACCOUNT}d/")
_FOLDER_PATH = re.compile(rf"^/drive/{_ACCOUNT}(?:mobile/)?folders/{_ID}|^/{_ACCOUNT}folderview$")


def gdrive_direct_url(url: str) -> str:
    """``drive.google.com/uc?id=<id>&export=download`` for a ``/file/d/<id>`` link; any other link itself (an
    ``/open?id=`` may name a folder, the download forms are direct already)."""
    parts = urlsplit(url)
    match = _FILE_PATH.match(parts.path) if (parts.hostname or "").rstrip(".").lower() == "drive.google.com" else None
    if match is None:
        return url
    query = f"id={match.group(1)}&export=download"
    resource_key = query_value(url, "resourcekey")
    return f"https://drive.google.com/uc?{query}&resourcekey={resource_key}" if resource_key else \
        f"https://drive.google.com/uc?{query}"


def _is_embedded_image(url: str) -> bool:
    return any(k == "export" and v.lower() == "view" for k, v in query_pairs(urlsplit(url).query))


def _is_editor_document(url: str) -> bool:
    return _EDITOR_PATH.match(urlsplit(url).path) is not None


def _is_folder(url: str) -> bool:
    return _FOLDER_PATH.match(urlsplit(url).path) is not None


_WITH_ID = frozenset({"id"})

PROVIDER = Provider(
    "gdrive",
    (
        HostRule("drive.google.com", path(rf"^/{_ACCOUNT}file/(?:{_ACCOUNT})?d/{_ID}")),
        HostRule("drive.google.com", path(rf"^/{_ACCOUNT}(?:open|uc|folderview)$"), _WITH_ID),
        HostRule("drive.google.com", path(rf"^/drive/{_ACCOUNT}(?:mobile/)?folders/{_ID}")),
        HostRule("docs.google.com", path(rf"^/{_DOMAIN}{_EDITORS}/{_ACCOUNT}d/(?:e/)?{_ID}")),
        HostRule("docs.google.com", path(rf"^/{_DOMAIN}file/d/{_ID}")),
        HostRule("docs.google.com", path(rf"^/{_DOMAIN}uc$"), _WITH_ID),
        HostRule("drive.usercontent.google.com", path(rf"^/{_ACCOUNT}(?:download|uc)$"), _WITH_ID),
    ),
    direct=gdrive_direct_url,
    excluded=_is_embedded_image,
    copyable=True,
    never_copied=_is_editor_document,
    # a download redirects from drive.google.com to drive.usercontent.google.com (older files: *.googleusercontent.com)
    download_hosts=("drive.google.com", "docs.google.com", "drive.usercontent.google.com", "googleusercontent.com"),
    key_params=frozenset({"id", "resourcekey", "export"}),
    folder=_is_folder,
)
