"""Smash's resolver (issue 19), on only with ``SMASH_API_KEY``: a ``fromsmash.com/<transferId>`` link turned into its
files with Smash's documented transfer preview API, as its official SDK (``@smash-sdk/transfer``) calls it, every
call with ``Authorization: Bearer <SMASH_API_KEY>``:

- The API is regional: ``https://transfer.<region>.fromsmash.co``; a transfer id names its region in its
  second-to-last character (``p2smVdWg8U-ct`` → ``c`` → ``eu-west-3``; the SDK's ``getRegionFromId``).
  ``SMASH_API_BASE`` (default ``https://transfer.{region}.fromsmash.co``) has ``{region}`` replaced by it; a
  base without ``{region}`` (a local fake, a proxy) serves every region. A path whose id names no region is a
  custom slug, which only Smash's link service (``link.fromsmash.co/target/…``) resolves: ``unsupported`` here.
- ``GET <base>/transfer/<id>/preview?version=07-2022`` answers ``{"transfer": {status, filesNumber, size,
  availabilityEndDate (ISO 8601), …}}``; ``GET <base>/transfer/<id>/files/preview?version=07-2022`` the files
  (``{"files": [{id, name, size, download}], "next", "urlsExpiredAt"}``), page by page (``start=<next>``) until
  ``max_files`` are listed (``file_count`` is ``filesNumber``). ``download`` is each file's signed URL.
- An error is ``{"name": "<…>Error", …}``: 404 (``NotFound``) is ``not_found``, 410 or a past
  ``availabilityEndDate`` or an ``Expired`` status ``expired``, a ``Password…`` error ``password_required``; any
  other 4xx (a bad key: 401) is ``ResolverError("http_<status>")``, as are 429 and 5xx.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

from config import ProviderConfig
from email_processing.links import DeliveryLink
from email_processing.resolution import Resolution, ResolutionStatus, ResolvedFile
from services.resolvers.base import Answer, ProviderHttp, ResolverError

logger = logging.getLogger(__name__)

API_VERSION = "07-2022"
# Smash's SDK (smash-sdk-core, helper/id.ts): the region letter a transfer id carries second to last.
REGIONS = {"a": "eu-west-1", "b": "eu-west-2", "c": "eu-west-3", "d": "eu-central-1", "e": "us-east-1",
           "f": "us-east-2", "g": "us-west-1", "h": "us-west-2", "i": "ca-central-1"}
_TRANSFER_PATH = re.compile(r"^/([A-Za-z0-9~_-]{4,64})/?$")
_MAX_PAGES = 20


def transfer_id(url: str) -> str | None:
    try:
        match = _TRANSFER_PATH.match(urlsplit(url).path)
    except ValueError:
        return None
    return match.group(1) if match else None


def region_of(transfer: str) -> str | None:
    """The region a transfer id names (ids in real mail look like ``p2smVdWg8U-ct``); None for a custom slug."""
    return REGIONS.get(transfer[-2]) if len(transfer) >= 4 and transfer[-3] == "-" else None


def api_base(config: ProviderConfig, region: str) -> str:
    assert config.endpoint is not None
    return config.endpoint.base_url.rstrip("/").replace("{region}", region)


def parse_iso(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _refusal(answer: Answer) -> ResolutionStatus:
    """A non-200 answer as a status; ``ResolverError`` for one that says nothing about the transfer."""
    try:
        body = answer.json()
    except ResolverError:
        body = None
    name = str(body.get("name", "")) if isinstance(body, dict) else ""
    if "password" in name.lower():
        return ResolutionStatus.PASSWORD_REQUIRED
    if answer.status == 404:
        return ResolutionStatus.NOT_FOUND
    if answer.status == 410:
        return ResolutionStatus.EXPIRED
    raise ResolverError(f"http_{answer.status}", name)


class SmashResolver:
    provider = "fromsmash"

    def handles(self, link: DeliveryLink) -> bool:
        return link.provider == self.provider and transfer_id(link.raw_url) is not None

    def resolve(self, link: DeliveryLink, http: ProviderHttp, config: ProviderConfig) -> Resolution:
        transfer = transfer_id(link.raw_url)
        region = region_of(transfer) if transfer else None
        if transfer is None or region is None or config.endpoint is None:
            return Resolution(ResolutionStatus.UNSUPPORTED)
        base = f"{api_base(config, region)}/transfer/{quote(transfer, safe='~-_')}"
        headers = {"Authorization": f"Bearer {config.api_key or ''}", "Accept": "application/json"}
        answer = http.get(f"{base}/preview", headers=headers, params={"version": API_VERSION})
        if answer.status != 200:
            status = _refusal(answer)
            logger.info("RESOLVE: fromsmash answered %s status=%s", answer.status, status.value)
            return Resolution(status)
        status, expires_at, count = _preview(answer.json())
        if status is not ResolutionStatus.OK:
            return Resolution(status, expires_at=expires_at)
        files = _files(http, f"{base}/files/preview", headers, config.max_files)
        if isinstance(files, ResolutionStatus):
            return Resolution(files, expires_at=expires_at)
        return Resolution(ResolutionStatus.OK, files, expires_at=expires_at,
                          file_count=max(count or 0, len(files))).capped(config.max_files)


def _preview(body: Any, now: float | None = None) -> tuple[ResolutionStatus, float | None, int | None]:
    transfer = body.get("transfer") if isinstance(body, dict) else None
    if not isinstance(transfer, dict):
        raise ResolverError("invalid_answer", "no transfer")
    expires_at = parse_iso(transfer.get("availabilityEndDate"))
    count = transfer.get("filesNumber")
    count = int(count) if isinstance(count, (int, str)) and str(count).isdigit() else None
    state = str(transfer.get("status", "")).lower()
    if state in ("expired", "deleted") or (expires_at is not None and expires_at <= (now or time.time())):
        return ResolutionStatus.EXPIRED, expires_at, count
    return ResolutionStatus.OK, expires_at, count


def _files(http: ProviderHttp, url: str, headers: dict[str, str],
           max_files: int) -> tuple[ResolvedFile, ...] | ResolutionStatus:
    """The files page by page until ``max_files`` are known (or the last page)."""
    files: list[ResolvedFile] = []
    params = {"version": API_VERSION}
    for _ in range(_MAX_PAGES):
        answer = http.get(url, headers=headers, params=params)
        if answer.status != 200:
            return _refusal(answer)
        body = answer.json()
        items = body.get("files") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise ResolverError("invalid_answer", "no files")
        files.extend(_file(item, http) for item in items)
        following = body.get("next")
        if len(files) >= max_files or not isinstance(following, str) or not following:
            return tuple(files)
        params = {"version": API_VERSION, "start": following}
    return tuple(files)


def _file(item: Any, http: ProviderHttp) -> ResolvedFile:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise ResolverError("invalid_answer", "file without name")
    size = item.get("size")
    download = item.get("download")
    url = http.checked(download) if isinstance(download, str) and download else None
    return ResolvedFile(item["name"], size if isinstance(size, int) and size >= 0 else None, url)


RESOLVER = SmashResolver()
