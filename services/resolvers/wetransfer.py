"""WeTransfer's resolver (issue 19), off unless ``RESOLVE_WETRANSFER=true``. It speaks WeTransfer's **undocumented**
web-client download API (the requests wetransfer.com's own download page makes, as community downloaders describe
them; WeTransfer's documented public API was shut down in 2022): this interface can change or disappear without
notice, and the resolution is then ``error`` and the link goes out as it is.

- A ``we.tl/<id>`` short link is followed hop by hop on its real host (each ``Location`` checked against the
  provider's hosts, at most ``MAX_REDIRECTS``) until it names ``wetransfer.com/downloads/<transfer_id>/
  [<recipient_id>/]<security_hash>``; that page itself is never fetched. A short link answering 404 is
  ``not_found``. (Tests prove the hop logic against a fake playing the configured base URL's origin, which
  ``ProviderHttp`` accepts besides the provider's hosts; production requests the short link where it points.)
- ``POST <WETRANSFER_API_BASE>/transfers/<transfer_id>/prepare-download`` with ``{"security_hash"[,
  "recipient_id"]}`` answers the transfer: ``state`` (``downloadable``; ``expired``/``deleted`` are ``expired``,
  anything else a transfer not ready, ``error``), ``password_protected`` (``password_required``), ``expires_at``
  (ISO 8601 UTC) and ``files`` (older answers: ``items``) with ``id``, ``name``, ``size``.
- ``POST <base>/transfers/<transfer_id>/download`` with ``{"security_hash", "intent": "entire_transfer"}`` answers
  ``{"direct_link": …}`` on ``download.wetransfer.com``: the file itself for a one-file transfer (its
  ``download_url``), else a zip of all (the resolution's ``direct_url``; the files are listed without URLs).
- 404 is ``not_found``, 410 ``expired``, 401 ``password_required``; 429 and 5xx are ``ResolverError``.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

from config import ProviderConfig
from email_processing.links import DeliveryLink
from email_processing.resolution import Resolution, ResolutionStatus, ResolvedFile
from email_processing.urls import host_matches
from services.resolvers.base import MAX_REDIRECTS, Answer, ProviderHttp, ResolverError

logger = logging.getLogger(__name__)

_DOWNLOADS_PATH = re.compile(r"^/downloads/([0-9A-Za-z]{8,64})/(?:([0-9A-Za-z]{8,64})/)?([0-9A-Za-z]{4,32})/?$")
_SHORT_PATH = re.compile(r"^/[A-Za-z0-9][A-Za-z0-9_-]*/?$")
_REDIRECTS = (301, 302, 303, 307, 308)
_REFUSALS = {404: ResolutionStatus.NOT_FOUND, 410: ResolutionStatus.EXPIRED, 401: ResolutionStatus.PASSWORD_REQUIRED}


class TransferRef:
    """A transfer as its landing page names it: id, recipient (or None), security hash (a capability)."""

    __slots__ = ("recipient_id", "security_hash", "transfer_id")

    def __init__(self, transfer_id: str, recipient_id: str | None, security_hash: str) -> None:
        self.transfer_id = transfer_id
        self.recipient_id = recipient_id
        self.security_hash = security_hash

    def body(self, **extra: str) -> dict[str, str]:
        body = {"security_hash": self.security_hash, **extra}
        if self.recipient_id:
            body["recipient_id"] = self.recipient_id
        return body


def transfer_ref(url: str) -> TransferRef | None:
    """The transfer a ``wetransfer.com/downloads/…`` URL names, else None."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    match = _DOWNLOADS_PATH.match(parts.path)
    if match is None or not host_matches(parts.hostname or "", "wetransfer.com"):
        return None
    return TransferRef(match.group(1), match.group(2), match.group(3))


def _is_short_link(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return host_matches(parts.hostname or "", "we.tl") and bool(_SHORT_PATH.match(parts.path))


def follow_short_link(http: ProviderHttp, url: str) -> TransferRef | None:
    """Follow a short link's redirects, every hop host-checked, until one names a transfer; None for a 404."""
    for _ in range(MAX_REDIRECTS):
        answer = http.request("GET", url)
        if answer.status == 404:
            return None
        location = answer.location() if answer.status in _REDIRECTS else None
        if location is None:
            raise ResolverError("invalid_answer", f"short link answered {answer.status}")
        url = http.checked(location)
        ref = transfer_ref(url)
        if ref is not None:
            return ref
    raise ResolverError("invalid_answer", "too many redirects")


def parse_iso(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def transfer_state(data: Any) -> tuple[ResolutionStatus, tuple[ResolvedFile, ...], float | None]:
    """A prepare-download answer: its status, its files (no URLs yet) and its expiry."""
    if not isinstance(data, dict) or not isinstance(data.get("state"), str):
        raise ResolverError("invalid_answer", "no state")
    expires_at = parse_iso(data.get("expires_at"))
    if data["state"] in ("expired", "deleted"):
        return ResolutionStatus.EXPIRED, (), expires_at
    if data.get("password_protected"):
        return ResolutionStatus.PASSWORD_REQUIRED, (), expires_at
    if data["state"] != "downloadable":
        return ResolutionStatus.ERROR, (), expires_at  # still uploading or processing
    items = data.get("files", data.get("items"))
    if not isinstance(items, list) or not items:
        raise ResolverError("invalid_answer", "no files")
    files = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ResolverError("invalid_answer", "file without name")
        size = item.get("size")
        files.append(ResolvedFile(item["name"], size if isinstance(size, int) and size >= 0 else None))
    return ResolutionStatus.OK, tuple(files), expires_at


def _post(http: ProviderHttp, url: str, body: dict[str, str]) -> Answer | ResolutionStatus:
    answer = http.request("POST", url, json_body=body,
                          headers={"Accept": "application/json", "X-Requested-With": "XMLHttpRequest"})
    if answer.status == 200:
        return answer
    if answer.status in _REFUSALS:
        logger.info("RESOLVE: wetransfer answered %s", answer.status)
        return _REFUSALS[answer.status]
    raise ResolverError(f"http_{answer.status}")


class WeTransferResolver:
    provider = "wetransfer"

    def handles(self, link: DeliveryLink) -> bool:
        return link.provider == self.provider and (transfer_ref(link.raw_url) is not None
                                                   or _is_short_link(link.raw_url))

    def resolve(self, link: DeliveryLink, http: ProviderHttp, config: ProviderConfig) -> Resolution:
        if config.endpoint is None:
            return Resolution(ResolutionStatus.UNSUPPORTED)
        ref = transfer_ref(link.raw_url)
        if ref is None and _is_short_link(link.raw_url):
            ref = follow_short_link(http, http.checked(link.raw_url))
            if ref is None:
                return Resolution(ResolutionStatus.NOT_FOUND)
        if ref is None:
            return Resolution(ResolutionStatus.UNSUPPORTED)
        return resolve_transfer(http, config, ref)


def resolve_transfer(http: ProviderHttp, config: ProviderConfig, ref: TransferRef) -> Resolution:
    """The two API calls for one transfer (``config.endpoint`` set)."""
    assert config.endpoint is not None
    base = f"{config.endpoint.base_url.rstrip('/')}/transfers/{quote(ref.transfer_id, safe='')}"
    prepared = _post(http, f"{base}/prepare-download", ref.body())
    if isinstance(prepared, ResolutionStatus):
        return Resolution(prepared)
    status, files, expires_at = transfer_state(prepared.json())
    if status is not ResolutionStatus.OK:
        return Resolution(status, expires_at=expires_at)
    download = _post(http, f"{base}/download", ref.body(intent="entire_transfer"))
    if isinstance(download, ResolutionStatus):
        return Resolution(download, expires_at=expires_at)
    answer = download.json()
    link = answer.get("direct_link") if isinstance(answer, dict) else None
    if not isinstance(link, str):
        raise ResolverError("invalid_answer", "no direct_link")
    direct = http.checked(link)
    if len(files) == 1:
        files = (ResolvedFile(files[0].name, files[0].size_bytes, direct),)
        return Resolution(ResolutionStatus.OK, files, expires_at=expires_at, file_count=1)
    resolution = Resolution(ResolutionStatus.OK, files, expires_at=expires_at, file_count=len(files),
                            direct_url=direct)
    return resolution.capped(config.max_files)


RESOLVER = WeTransferResolver()
