"""SwissTransfer's resolver (issue 19): a share link ``www.swisstransfer.com/d/<linkUUID>`` (or ``/dl/<linkUUID>``)
turned into its files with the one request Infomaniak's own clients make, ``GET <SWISSTRANSFER_API_BASE>/links/
<linkUUID>`` (no account, no key). Its answer ``{"result": "success", "data": {...}}`` is the link: ``expiredDate``
(``YYYY-MM-DD HH:MM:SS``, UTC), ``downloadCounterCredit`` (downloads left), ``downloadHost``
(``dl-<id>.swisstransfer.com``) and ``container`` with ``needPassword`` and ``files`` (``UUID``, ``fileName``,
``fileSizeInBytes``). Each file downloads from ``https://<downloadHost>/api/download/<linkUUID>/<fileUUID>`` (the zip
of all from ``…/api/download/<linkUUID>``, not used: every file has its own URL). Errors are told by their text, as
the official clients read them: 404 saying ``expired`` is ``expired``, ``virus`` a transfer withheld (``error``, not
cached), any other 404 ``not_found``; 401 ``need_password``/``wrong_password`` (or ``needPassword`` in the answer)
``password_required``; no download credit left ``limit_reached``. Whether the ``/dl/`` (v2) links answer on this v1
route was not verified against the real service.
"""

from __future__ import annotations

import calendar
import logging
import re
import time
from typing import Any
from urllib.parse import quote, urlsplit

from config import ProviderConfig
from email_processing.links import DeliveryLink
from email_processing.resolution import Resolution, ResolutionStatus, ResolvedFile
from services.resolvers.base import Answer, ProviderHttp, ResolverError

logger = logging.getLogger(__name__)

_SHARE_PATH = re.compile(r"^/(?:d|dl)/([0-9A-Za-z][0-9A-Za-z-]{7,63})/?$")
_DATE = "%Y-%m-%d %H:%M:%S"


def link_uuid(url: str) -> str | None:
    """The link UUID of a SwissTransfer share link, else None."""
    try:
        match = _SHARE_PATH.match(urlsplit(url).path)
    except ValueError:
        return None
    return match.group(1) if match else None


def parse_date(value: Any) -> float | None:
    """SwissTransfer's ``YYYY-MM-DD HH:MM:SS`` (UTC) as epoch seconds; None when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        return float(calendar.timegm(time.strptime(value.strip(), _DATE)))
    except ValueError:
        return None


def _error_status(answer: Answer) -> ResolutionStatus | None:
    """What a refusal says, read from its text as SwissTransfer's own clients do; None for an unknown answer."""
    text = answer.body.decode("utf-8", "replace").lower()
    if answer.status in (401, 403) or "need_password" in text or "wrong_password" in text:
        return ResolutionStatus.PASSWORD_REQUIRED
    if answer.status == 410 or (answer.status == 404 and "expired" in text):
        return ResolutionStatus.EXPIRED
    if answer.status == 404 and "virus" in text:
        return ResolutionStatus.ERROR  # a virus check running (or a virus found): nothing to copy now
    if answer.status == 404:
        return ResolutionStatus.NOT_FOUND
    return None


def transfer_resolution(data: Any, http: ProviderHttp, *, now: float | None = None) -> Resolution:
    """A ``links/<uuid>`` answer's ``data`` as a resolution; download URLs checked against the provider's hosts."""
    if not isinstance(data, dict):
        raise ResolverError("invalid_answer", "no data")
    if "container" not in data and data.get("type") in ("need_password", "wrong_password"):
        return Resolution(ResolutionStatus.PASSWORD_REQUIRED)
    container, host, uuid = data.get("container"), data.get("downloadHost"), data.get("linkUUID")
    if not isinstance(container, dict) or not isinstance(host, str) or not isinstance(uuid, str):
        raise ResolverError("invalid_answer", "no container")
    expires_at = parse_date(data.get("expiredDate")) or parse_date(container.get("expiredDate"))
    if expires_at is not None and expires_at <= (time.time() if now is None else now):
        return Resolution(ResolutionStatus.EXPIRED, expires_at=expires_at)
    if container.get("needPassword") not in (None, 0, False, "0"):
        return Resolution(ResolutionStatus.PASSWORD_REQUIRED, expires_at=expires_at)
    credit = data.get("downloadCounterCredit")
    if isinstance(credit, int) and credit <= 0:
        return Resolution(ResolutionStatus.LIMIT_REACHED, expires_at=expires_at)
    files = container.get("files")
    if not isinstance(files, list):
        raise ResolverError("invalid_answer", "no files")
    resolved = tuple(_file(item, host, uuid, http) for item in files)
    return Resolution(ResolutionStatus.OK, resolved, expires_at=expires_at, file_count=len(resolved))


def _file(item: Any, host: str, link: str, http: ProviderHttp) -> ResolvedFile:
    if not isinstance(item, dict) or not isinstance(item.get("UUID"), str) or not isinstance(item.get("fileName"),
                                                                                            str):
        raise ResolverError("invalid_answer", "file without UUID or name")
    size = item.get("fileSizeInBytes")
    url = http.checked(f"https://{host}/api/download/{quote(link, safe='-')}/{quote(item['UUID'], safe='-')}")
    return ResolvedFile(item["fileName"], size if isinstance(size, int) and size >= 0 else None, url)


class SwissTransferResolver:
    provider = "swisstransfer"

    def handles(self, link: DeliveryLink) -> bool:
        return link.provider == self.provider and link_uuid(link.raw_url) is not None

    def resolve(self, link: DeliveryLink, http: ProviderHttp, config: ProviderConfig) -> Resolution:
        uuid = link_uuid(link.raw_url)
        if uuid is None or config.endpoint is None:
            return Resolution(ResolutionStatus.UNSUPPORTED)
        answer = http.get(f"{config.endpoint.base_url.rstrip('/')}/links/{quote(uuid, safe='-')}",
                          headers={"Accept": "application/json"})
        if answer.status != 200:
            status = _error_status(answer)
            if status is None:
                raise ResolverError(f"http_{answer.status}")
            logger.info("RESOLVE: swisstransfer answered %s status=%s", answer.status, status.value)
            return Resolution(status)
        body = answer.json()
        resolution = transfer_resolution(body.get("data") if isinstance(body, dict) else None, http)
        return resolution.capped(config.max_files)


RESOLVER = SwissTransferResolver()
