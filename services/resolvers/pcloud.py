"""pCloud's resolver (issue 19): a public link's files through pCloud's documented public-link API.

Requests, on ``PCLOUD_API_BASE`` (``https://api.pcloud.com``; links on ``e.pcloud.link`` belong to the EU data
region, whose API is ``https://eapi.pcloud.com``, used instead while the base is the default):

- ``GET /showpublink?code=<code>``: ``{"result": 0, "metadata": {name, size, isfolder, contents…}}``, the object the
  link points to (a folder's ``contents`` recursively). A folder lists its files (names, sizes; at most
  ``max_files``, ``file_count`` the true number) without download URLs: pCloud's documentation calls fetching
  download links for files one does not intend to download bad behaviour, so one is asked only for a single file.
- ``GET /getpublinkdownload?code=<code>[&fileid=<n>]`` for a file link (``fileid`` for ``/file/<n>?code=``, a file
  inside a folder link): ``{"result": 0, "hosts": [...], "path": "/…", "expires": "<RFC 2822 date>"}``; the direct
  URL is ``https://<hosts[0]><path>`` (host-checked: a ``pcloud.com`` host), valid until ``expires``.

``result`` codes (pCloud's documented ones): ``7001`` invalid code and ``7002`` deleted by the owner, and ``2009``
file not found: ``not_found``; ``7004`` expired: ``expired``; ``7005`` traffic limit and ``7006`` maximum downloads:
``limit_reached``; ``4000`` (too many tries from this IP): ``ResolverError("rate_limited")``; ``5000``/``5002``
(internal, no servers): ``ResolverError("provider_error")``; any other: ``ResolverError("invalid_answer")``. pCloud
documents no result code for a password-protected link (``linkpassword``), so none is mapped: such a link is an
``invalid_answer`` error until its answer is known.
"""

from __future__ import annotations

import re
from email.utils import parsedate_to_datetime
from typing import Any, Iterator
from urllib.parse import urlencode, urlsplit

from config import ProviderConfig
from email_processing.links import DeliveryLink
from email_processing.providers.base import query_value
from email_processing.resolution import Resolution, ResolutionStatus, ResolvedFile
from services.resolvers.base import ProviderHttp, ResolverError
from services.resolvers.share_links import host_of

DEFAULT_BASE = "https://api.pcloud.com"
EU_BASE = "https://eapi.pcloud.com"
_FILE_PATH = re.compile(r"^/file/(\d+)/?$")

STATUS_OF_RESULT = {7001: ResolutionStatus.NOT_FOUND, 7002: ResolutionStatus.NOT_FOUND,
                    2009: ResolutionStatus.NOT_FOUND, 7004: ResolutionStatus.EXPIRED,
                    7005: ResolutionStatus.LIMIT_REACHED, 7006: ResolutionStatus.LIMIT_REACHED}
TRANSIENT_RESULTS = {4000: "rate_limited", 5000: "provider_error", 5002: "provider_error"}


def api_base(link_url: str, config: ProviderConfig) -> str:
    base = config.endpoint.base_url if config.endpoint is not None else DEFAULT_BASE
    if host_of(link_url) == "e.pcloud.link" and base.rstrip("/") == DEFAULT_BASE:
        return EU_BASE
    return base


def result_status(answer: Any) -> ResolutionStatus | None:
    """None for ``result: 0``; the status of a documented result code; raises for a transient or unknown one."""
    if not isinstance(answer, dict) or not isinstance(answer.get("result"), int):
        raise ResolverError("invalid_answer", "no result code")
    code = answer["result"]
    if code == 0:
        return None
    if code in TRANSIENT_RESULTS:
        raise ResolverError(TRANSIENT_RESULTS[code], f"result {code}")
    if code in STATUS_OF_RESULT:
        return STATUS_OF_RESULT[code]
    raise ResolverError("invalid_answer", f"result {code}")


def folder_files(metadata: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The files of a folder's (recursive) ``contents``, depth first in pCloud's order."""
    for item in metadata.get("contents") or ():
        if not isinstance(item, dict):
            raise ResolverError("invalid_answer", "a folder entry that is not an object")
        if item.get("isfolder"):
            yield from folder_files(item)
        else:
            yield item


def resolved_file(item: dict[str, Any], download_url: str | None = None) -> ResolvedFile:
    name, size = item.get("name"), item.get("size")
    if not isinstance(name, str) or not name:
        raise ResolverError("invalid_answer", "a file without a name")
    return ResolvedFile(name, size if isinstance(size, int) and size >= 0 else None, download_url)


def expiry_seconds(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def _metadata(answer: Any) -> dict[str, Any]:
    metadata = answer.get("metadata")
    if not isinstance(metadata, dict):
        raise ResolverError("invalid_answer", "no metadata")
    return metadata


class PCloudResolver:
    provider = "pcloud"

    def handles(self, link: DeliveryLink) -> bool:
        return link.provider == self.provider

    def resolve(self, link: DeliveryLink, http: ProviderHttp, config: ProviderConfig) -> Resolution:
        code = query_value(link.raw_url, "code")
        if code is None:
            return Resolution(ResolutionStatus.UNSUPPORTED)
        base = api_base(link.raw_url, config)
        shown = http.get(base.rstrip("/") + "/showpublink?" + urlencode({"code": code})).json()
        status = result_status(shown)
        if status is not None:
            return Resolution(status)
        metadata = _metadata(shown)
        file_match = _FILE_PATH.match(urlsplit(link.raw_url).path)
        if metadata.get("isfolder") and file_match is None:
            return self._folder(metadata, config)
        item, file_id = metadata, None
        if file_match is not None:
            file_id = file_match.group(1)
            item = next((f for f in folder_files(metadata) if str(f.get("fileid")) == file_id), {})
            if not item:
                return Resolution(ResolutionStatus.NOT_FOUND)
        return self._file(item, code, file_id, base, http)

    def _folder(self, metadata: dict[str, Any], config: ProviderConfig) -> Resolution:
        files = [resolved_file(item) for item in folder_files(metadata)]
        sizes = [f.size_bytes for f in files]
        total = sum(s for s in sizes if s is not None) if None not in sizes else None
        return Resolution(ResolutionStatus.OK, tuple(files), size_bytes=total,
                          file_count=len(files)).capped(config.max_files)

    def _file(self, item: dict[str, Any], code: str, file_id: str | None, base: str,
              http: ProviderHttp) -> Resolution:
        query = {"code": code, **({"fileid": file_id} if file_id else {})}
        path = "/getpublinkdownload?" + urlencode(query)
        answer = http.get(base.rstrip("/") + path).json()
        status = result_status(answer)
        if status is not None:
            return Resolution(status)
        hosts, file_path = answer.get("hosts"), answer.get("path")
        if not hosts or not isinstance(hosts, list) or not isinstance(hosts[0], str) or \
                not isinstance(file_path, str) or not file_path.startswith("/"):
            raise ResolverError("invalid_answer", "no download host or path")
        direct = http.checked(f"https://{hosts[0]}{file_path}")  # a host outside pcloud.com raises
        file = resolved_file(item, direct)
        return Resolution(ResolutionStatus.OK, (file,), expires_at=expiry_seconds(answer.get("expires")),
                          size_bytes=file.size_bytes, file_count=1, direct_url=direct)


RESOLVER = PCloudResolver()
