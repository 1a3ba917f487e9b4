"""What the file-host resolvers (Google Drive, Dropbox, OneDrive, SharePoint, Box, pCloud) share: putting a link on
the configured endpoint (the provider's real origin in production, a local fake in tests), reading a download's
name and size from its headers without its body, and walking redirects one hop at a time with a stop rule. Pure,
except ``walk``, which asks through ``ProviderHttp`` (every hop host-checked there).
"""

from __future__ import annotations

import re
from email.message import Message
from typing import Callable, Mapping
from urllib.parse import unquote, urlsplit, urlunsplit

from config import ProviderConfig
from email_processing.resolution import Resolution, ResolutionStatus, ResolvedFile
from services.resolvers.base import Answer, ProviderHttp, ResolverError

REDIRECTS = (301, 302, 303, 307, 308)
MAX_HOPS = 5
_EXTENDED_FILENAME = re.compile(r"filename\*\s*=\s*([^;]+)", re.IGNORECASE)


def on_endpoint(url: str, config: ProviderConfig) -> str:
    """``url`` with its scheme, host and port replaced by those of ``config``'s base URL (path and query kept);
    ``url`` itself when the provider has no configured endpoint."""
    if config.endpoint is None:
        return url
    base = urlsplit(config.endpoint.base_url)
    parts = urlsplit(url)
    return urlunsplit((base.scheme, base.netloc, parts.path, parts.query, ""))


def endpoint_url(config: ProviderConfig, path_and_query: str, default_origin: str) -> str:
    """``path_and_query`` under ``config``'s base URL (its path prefix kept), else under ``default_origin``."""
    base = config.endpoint.base_url if config.endpoint is not None else default_origin
    return base.rstrip("/") + path_and_query


def host_of(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").rstrip(".").lower()
    except ValueError:
        return ""


def file_name_from_disposition(value: str | None) -> str | None:
    """The file name a ``Content-Disposition`` header gives (RFC 6266: ``filename*`` preferred), else None."""
    if not value:
        return None
    name = _extended_filename(value)
    if name is None:
        message = Message()
        message["Content-Disposition"] = value
        name = message.get_filename()
    if not name:
        return None
    name = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name or None


def _extended_filename(value: str) -> str | None:
    """RFC 8187 ``filename*=<charset>'<language>'<percent-encoded>``, which RFC 6266 prefers to ``filename``."""
    match = _EXTENDED_FILENAME.search(value)
    if match is None:
        return None
    charset, _, encoded = match.group(1).strip().partition("'")
    _, _, encoded = encoded.partition("'")
    try:
        return unquote(encoded, encoding=charset or "utf-8", errors="strict")
    except (LookupError, UnicodeDecodeError):
        return None


def size_from_headers(headers: Mapping[str, str]) -> int | None:
    """``Content-Length`` as bytes, None when absent or not a plain non-negative integer."""
    value = _header(headers, "Content-Length")
    return int(value) if value is not None and value.strip().isdigit() else None


def is_html(answer: Answer) -> bool:
    return (_header(answer.headers, "Content-Type") or "").split(";")[0].strip().lower() == "text/html"


def is_attachment(answer: Answer) -> bool:
    return (_header(answer.headers, "Content-Disposition") or "").strip().lower().startswith("attachment")


def last_path_segment(url: str) -> str | None:
    segment = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    return segment or None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return str(value)
    return None


def header(answer: Answer, name: str) -> str | None:
    return _header(answer.headers, name)


def walk(http: ProviderHttp, url: str, *, method: str = "HEAD",
         stop: Callable[[str], bool] | None = None) -> tuple[Answer, str | None]:
    """Follow redirects from ``url`` one hop at a time (each request host-checked by ``http``) until an answer
    that is not a redirect, or a redirect whose target ``stop`` accepts (returned unfetched as the second value)."""
    answer = http.request(method, url)
    for _ in range(MAX_HOPS):
        location = answer.location() if answer.status in REDIRECTS else None
        if location is None:
            return answer, None
        if stop is not None and stop(location):
            return answer, location
        answer = http.request(method, location)
    raise ResolverError("invalid_answer", "too many redirects")


def download_resolution(answer: Answer, direct_url: str, *, signed_in_only: bool = False) -> Resolution:
    """What a HEAD of a share's direct form says (after its redirects): ``ok`` with the file's name and size from the
    headers for a download; ``error`` when it leads to a sign-in (``signed_in_only``) or is refused (401/403);
    ``not_found`` for 404/410; ``unsupported`` for a page instead of a file (a folder, a password prompt, a viewer)."""
    if signed_in_only or answer.status in (401, 403):
        return Resolution(ResolutionStatus.ERROR)
    if answer.status in (404, 410):
        return Resolution(ResolutionStatus.NOT_FOUND)
    if answer.status != 200:
        raise ResolverError("invalid_answer", f"status {answer.status}")
    if is_html(answer) and not is_attachment(answer):
        return Resolution(ResolutionStatus.UNSUPPORTED)
    name = file_name_from_disposition(header(answer, "Content-Disposition")) or last_path_segment(answer.url)
    if name is None:
        raise ResolverError("invalid_answer", "a download without a file name")
    file = ResolvedFile(name, size_from_headers(answer.headers), direct_url)
    return Resolution(ResolutionStatus.OK, (file,), size_bytes=file.size_bytes, file_count=1, direct_url=direct_url)
