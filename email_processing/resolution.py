"""What a landing link holds once resolved (issue 19, "Resolution: landing pages to files"): the outcome of asking a
provider about one link, and the fields it adds to the link's ``delivery_links[]`` entry. Pure values: the
resolvers that fill them are in ``services/resolvers/`` (one module per provider); the enrichment stage runs them.

A link no resolver handles is ``none``; any failure leaves the landing URL in the payload with its status, so a
resolution never removes a link.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from timestamps import iso_utc

MAX_FILES_PER_LINK = 100  # the default of MAX_FILES_PER_LINK: files listed (and copied) per link


class ResolutionStatus(enum.Enum):
    OK = "ok"                                  # the files are known (and downloadable until expires_at)
    EXPIRED = "expired"                        # the transfer or share is gone for good
    PASSWORD_REQUIRED = "password_required"    # the sender protected it: only a person can open it
    LIMIT_REACHED = "limit_reached"            # a download limit of the transfer is used up
    RATE_LIMITED = "rate_limited"              # the provider asked us to slow down (429): tried again later
    NOT_FOUND = "not_found"                    # no such transfer, file or share
    UNSUPPORTED = "unsupported"                # a shape the resolver cannot turn into files (a folder, Docs…)
    ERROR = "error"                            # the provider failed or answered something unexpected
    NONE = "none"                              # no resolver handles this link (or resolution is off)


# What may be cached, and for how long at most when the provider names no expiry (seconds).
CACHE_SECONDS = {ResolutionStatus.OK: 3600.0, ResolutionStatus.EXPIRED: 86400.0,
                 ResolutionStatus.NOT_FOUND: 3600.0, ResolutionStatus.PASSWORD_REQUIRED: 3600.0,
                 ResolutionStatus.LIMIT_REACHED: 3600.0, ResolutionStatus.UNSUPPORTED: 86400.0}


@dataclass(frozen=True)
class ResolvedFile:
    """One file a link holds. ``download_url`` is a short-lived capability (never logged, never in the payload):
    what the R2 copy fetches."""

    name: str
    size_bytes: int | None = None
    download_url: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Resolution:
    """``expires_at``: epoch seconds, or None. ``direct_url``: a better direct form than the extractor's (a share
    link's download form behind a tracking link); ``retry_after``: seconds a rate-limited provider asked for."""

    status: ResolutionStatus
    files: tuple[ResolvedFile, ...] = ()
    expires_at: float | None = None
    size_bytes: int | None = None
    file_count: int | None = None
    direct_url: str | None = field(default=None, repr=False)
    retry_after: float | None = None

    @property
    def total_bytes(self) -> int | None:
        if self.size_bytes is not None:
            return self.size_bytes
        sizes = [item.size_bytes for item in self.files]
        return sum(s for s in sizes if s is not None) if sizes and None not in sizes else None

    def capped(self, max_files: int) -> "Resolution":
        """At most ``max_files`` files listed; ``file_count`` keeps the true count."""
        if len(self.files) <= max_files:
            return self
        return Resolution(self.status, self.files[:max_files], self.expires_at, self.total_bytes,
                          self.file_count if self.file_count is not None else len(self.files), self.direct_url,
                          self.retry_after)


UNRESOLVED = Resolution(ResolutionStatus.NONE)


def link_fields(resolution: Resolution | None, r2_urls: tuple[str | None, ...] = ()) -> dict[str, Any]:
    """The fields a resolution adds to a ``delivery_links[]`` entry (issue 19): ``resolution``, ``expires_at``
    (``YYYY-MM-DDTHH:MM:SSZ`` or null), ``size_bytes``, ``file_count`` and ``files`` (``{name, size_bytes,
    r2_url}``, whenever the provider listed files). ``r2_urls``: each listed file's R2 copy, in order."""
    resolution = resolution or UNRESOLVED
    files = [{"name": item.name, "size_bytes": item.size_bytes,
              "r2_url": r2_urls[index] if index < len(r2_urls) else None}
             for index, item in enumerate(resolution.files)]
    count = resolution.file_count if resolution.file_count is not None else (len(files) if files else None)
    return {"resolution": resolution.status.value, "expires_at": iso_utc(resolution.expires_at),
            "size_bytes": resolution.total_bytes, "file_count": count, "files": files}
