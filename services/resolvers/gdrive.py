"""Google Drive's resolver (issue 19): a shared file's direct download, with the large-file confirmation step.

Requests, all on ``GDRIVE_DOWNLOAD_BASE`` (``https://drive.usercontent.google.com``, where Drive's own "Download"
button leads): ``HEAD <base>/download?id=<id>&export=download`` (``resourcekey`` kept: older shared files need it),
redirects followed one hop at a time on Google's download hosts. The answers:

- ``200`` with ``Content-Disposition: attachment``: the file; its name from that header, its size from
  ``Content-Length``. Only headers are read (HEAD): the body is never downloaded.
- ``200 text/html``: for files too large to scan (about 100 MB and more) Drive answers a "can't scan this file for
  viruses" page instead; its form (``id="download-form"``, hidden inputs ``id``, ``export``, ``confirm``,
  ``uuid``) is the confirmed download. That page is read with one GET, the form's action host-checked, and the
  confirmed URL (``…&confirm=t&uuid=…``) asked with a HEAD for the exact name and size (the page shows a rounded
  size only: it is not used).
- a redirect to ``accounts.google.com`` (a sign-in page): the file is not shared with "anyone with the link":
  ``error`` (someone must grant access; the sign-in page itself is never fetched).
- ``404``: ``not_found``. ``403`` is read once (GET): a "Quota exceeded" page (too many downloads of the file
  today) is ``limit_reached``, any other ``error`` (access denied).
- anything else: ``ResolverError("invalid_answer")``; 429 and 5xx are ``ProviderHttp``'s.

Folders and Google Docs, Sheets and Slides are ``unsupported`` without any request (a folder has no single download;
an editor document is not a file). A Drive link does not expire: ``expires_at`` is None.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urlencode, urljoin, urlsplit

from config import ProviderConfig
from email_processing.links import DeliveryLink
from email_processing.providers.base import query_value
from email_processing.providers.gdrive import PROVIDER as GDRIVE
from email_processing.resolution import Resolution, ResolutionStatus, ResolvedFile
from services.resolvers.base import Answer, ProviderHttp, ResolverError
from services.resolvers.share_links import (
    endpoint_url,
    file_name_from_disposition,
    header,
    host_of,
    is_attachment,
    is_html,
    size_from_headers,
    walk,
)

logger = logging.getLogger(__name__)

DEFAULT_BASE = "https://drive.usercontent.google.com"
SIGN_IN_HOST = "accounts.google.com"
_ID = re.compile(r"^[A-Za-z0-9_-]{10,}$")
_FILE_PATH = re.compile(r"^/(?:u/\d+/)?(?:a/[^/]+/)?file/(?:u/\d+/)?d/([A-Za-z0-9_-]{10,})")


def drive_file_id(url: str) -> str | None:
    """The file id of a Drive file link (``/file/d/<id>``, ``?id=<id>`` of ``/open``, ``/uc``, ``/download``)."""
    parts = urlsplit(url)
    match = _FILE_PATH.match(parts.path)
    if match is not None:
        return match.group(1)
    value = query_value(url, "id")
    return value if value is not None and _ID.match(value) else None


def download_path(file_id: str, resource_key: str | None) -> str:
    query = {"id": file_id, "export": "download"}
    if resource_key:
        query["resourcekey"] = resource_key
    return "/download?" + urlencode(query)


@dataclass
class WarningPage:
    """What the virus-scan warning page holds: its download form (action, hidden fields in order) and the name."""

    action: str | None = None
    fields: list[tuple[str, str]] = field(default_factory=list)
    name: str | None = None


class _WarningPageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = WarningPage()
        self._in_form = False
        self._in_name = 0    # depth inside <span class="uc-name-size">
        self._in_link = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {key: value or "" for key, value in attrs}
        if tag == "form" and values.get("id") == "download-form":
            self._in_form = True
            self.page.action = values.get("action") or ""
        elif tag == "input" and self._in_form and values.get("type") == "hidden" and values.get("name"):
            self.page.fields.append((values["name"], values.get("value", "")))
        elif tag == "span" and "uc-name-size" in values.get("class", "").split():
            self._in_name = 1
        elif tag == "span" and self._in_name:
            self._in_name += 1
        elif tag == "a" and self._in_name and self.page.name is None:
            self._in_link = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False
        elif tag == "a":
            self._in_link = False
        elif tag == "span" and self._in_name:
            self._in_name -= 1

    def handle_data(self, data: str) -> None:
        text = " ".join(data.split())
        if self._in_link and text:
            self.page.name = f"{self.page.name} {text}" if self.page.name else text


def read_warning_page(html: str) -> WarningPage:
    """Drive's "can't scan this file for viruses" page: its ``download-form`` and the file's name."""
    parser = _WarningPageParser()
    parser.feed(html)
    parser.close()
    return parser.page


def confirmed_url(page: WarningPage, page_url: str) -> str | None:
    """The URL the page's form submits (a GET): its action with the hidden fields, None without a usable form."""
    names = {name for name, _ in page.fields}
    if page.action is None or not {"id", "confirm"} <= names:
        return None
    return urljoin(page_url, page.action).split("?")[0] + "?" + urlencode(page.fields)


def _is_sign_in(url: str) -> bool:
    return host_of(url) == SIGN_IN_HOST


def _file_from(answer: Answer, url: str, fallback_name: str | None) -> ResolvedFile:
    name = file_name_from_disposition(header(answer, "Content-Disposition")) or fallback_name
    if name is None:
        raise ResolverError("invalid_answer", "a download without a file name")
    return ResolvedFile(name, size_from_headers(answer.headers), url)


def _ok(file: ResolvedFile) -> Resolution:
    return Resolution(ResolutionStatus.OK, (file,), size_bytes=file.size_bytes, file_count=1,
                      direct_url=file.download_url)


class GoogleDriveResolver:
    provider = "gdrive"

    def handles(self, link: DeliveryLink) -> bool:
        return link.provider == self.provider

    def resolve(self, link: DeliveryLink, http: ProviderHttp, config: ProviderConfig) -> Resolution:
        url = link.raw_url
        file_id = drive_file_id(url)
        if GDRIVE.is_folder(url) or not GDRIVE.copies(url) or file_id is None:
            return Resolution(ResolutionStatus.UNSUPPORTED)
        download = endpoint_url(config, download_path(file_id, query_value(url, "resourcekey")), DEFAULT_BASE)
        answer, stopped = walk(http, download, stop=_is_sign_in)
        if stopped is not None:
            logger.info("RESOLVE: gdrive file needs a sign-in (not shared with anyone with the link)")
            return Resolution(ResolutionStatus.ERROR)
        return self._read(answer, download, http)

    def _read(self, answer: Answer, download: str, http: ProviderHttp) -> Resolution:
        if answer.status in (404, 410):
            return Resolution(ResolutionStatus.NOT_FOUND)
        if answer.status == 403:
            page = http.get(answer.url)
            quota = b"quota exceeded" in page.body.lower()
            return Resolution(ResolutionStatus.LIMIT_REACHED if quota else ResolutionStatus.ERROR)
        if answer.status != 200:
            raise ResolverError("invalid_answer", f"status {answer.status}")
        if is_attachment(answer):
            return _ok(_file_from(answer, download, None))
        if is_html(answer):
            return self._confirm(answer.url, http)
        raise ResolverError("invalid_answer", "neither a file nor a page")

    def _confirm(self, page_url: str, http: ProviderHttp) -> Resolution:
        page_answer = http.get(page_url)
        if page_answer.status != 200 or not is_html(page_answer):
            raise ResolverError("invalid_answer", "the warning page went away")
        page = read_warning_page(page_answer.body.decode("utf-8", "replace"))
        confirmed = confirmed_url(page, page_answer.url)
        if confirmed is None:
            raise ResolverError("invalid_answer", "a page without a download form")
        confirmed = http.checked(confirmed)
        answer, stopped = walk(http, confirmed, stop=_is_sign_in)
        if stopped is not None:
            return Resolution(ResolutionStatus.ERROR)
        if answer.status == 200 and is_attachment(answer):
            return _ok(_file_from(answer, confirmed, page.name))
        if page.name is None:
            raise ResolverError("invalid_answer", f"confirmed download answered {answer.status}")
        return _ok(ResolvedFile(page.name, None, confirmed))


RESOLVER = GoogleDriveResolver()
