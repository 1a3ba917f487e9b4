"""What a provider module declares: ``Provider`` (host rules, direct-download form, exclusions, folders, what may be
copied and from which download hosts) and the ``HostRule`` it is built from, with the small URL helpers the
provider modules share. A host matches a rule's domain exactly or as a subdomain, never by substring
(``email_processing.urls.host_matches``); the rules only say what a URL claims to be, ``check_url`` then decides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

from email_processing.urls import host_matches


def path(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def query_pairs(query: str) -> list[tuple[str, str]]:
    """Raw ``key=value`` pieces of a query string, without percent-decoding (so rebuilding is lossless)."""
    pairs = []
    for piece in query.split("&"):
        if not piece:
            continue
        key, _, value = piece.partition("=")
        pairs.append((key, value))
    return pairs


def query_value(url: str, name: str) -> str | None:
    """The raw value of the first non-empty ``name`` parameter of ``url``'s query, else None."""
    return next((value for key, value in query_pairs(urlsplit(url).query) if key == name and value), None)


@dataclass(frozen=True)
class HostRule:
    """URLs on ``domain`` (or a subdomain) whose path matches ``path`` are deliveries; with ``query_keys``, only
    those whose query names one of them with a value (``onedrive.live.com/redir?resid=…``, ``…/open?id=…``)."""

    domain: str
    path: re.Pattern[str]
    query_keys: frozenset[str] = frozenset()

    def matches(self, host: str, url_path: str, url: str) -> bool:
        if not host_matches(host, self.domain) or not self.path.search(url_path):
            return False
        if not self.query_keys:
            return True
        return any(key in self.query_keys and value for key, value in query_pairs(urlsplit(url).query))


@dataclass(frozen=True)
class Provider:
    """One file-delivery provider: the payload's ``provider`` name and everything the service and the Worker need
    to know about its links. The Worker's allow-list (``make providers-json``) is built from ``copyable`` and
    ``download_hosts``."""

    name: str
    rules: tuple[HostRule, ...]
    # direct-download form for the offload; None = the raw URL itself
    direct: Callable[[str], str] | None = None
    # True for URLs on the provider's domain that look like deliveries but are not (logos, delete links)
    excluded: Callable[[str], bool] | None = field(default=None)
    # whether R2 may ever hold a copy of this provider's files (MEGA: encrypted, the key is in the fragment)
    copyable: bool = False
    # links of a copyable provider that are still only passed on (Google Docs editors, upload pages)
    never_copied: Callable[[str], bool] | None = None
    # domains (and their subdomains) that its direct downloads and their redirects may use: the Worker's allow-list
    download_hosts: tuple[str, ...] = ()
    # query parameters that make a link what it is (the R2 key form keeps only these); None = the query verbatim
    key_params: frozenset[str] | None = None
    # True when the fragment is part of what a link is (MEGA's key): two links differing in it are two links
    fragment_identifies: bool = False
    folder: Callable[[str], bool] | None = None

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(rule.domain for rule in self.rules))

    def delivers(self, host: str, path: str, url: str) -> bool:
        """True when ``host`` and ``path`` (one reading of ``url``) are one of this provider's delivery URLs."""
        try:
            if not any(rule.matches(host, path, url) for rule in self.rules):
                return False
        except ValueError:  # a query rule reads the URL with Python, which may not read it at all
            return False
        try:
            return self.excluded is None or not self.excluded(url)
        except ValueError:  # an exclusion rule reads the URL with Python, which may not read it at all
            return True

    def is_folder(self, url: str) -> bool:
        """True when ``url`` (one of this provider's links) names a folder, as far as its shape tells."""
        try:
            return self.folder is not None and self.folder(url)
        except ValueError:
            return False

    def copies(self, url: str) -> bool:
        """True when R2 may copy ``url`` (one of this provider's links)."""
        if not self.copyable:
            return False
        try:
            return self.never_copied is None or not self.never_copied(url)
        except ValueError:
            return False
