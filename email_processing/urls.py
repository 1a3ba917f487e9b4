"""URLs as their receivers read them: ``check_url``, the one check every URL the service fetches or emits passes.

Browsers, Node, ``requests`` and the Worker read a URL by the WHATWG URL standard (``ada-url`` is its Python binding):
the host ends at ``\\`` as well as at ``/``, percent-encoded and full-width host characters are decoded, a missing
``//`` is forgiven. Python's ``urllib.parse`` reads RFC 3986 and does none of this, so a URL can name one host to
Python and another to whoever downloads it. A URL passes only when it is https, carries no userinfo, names no port but
443, and both readings agree on a host that is one of the allowed domains or a subdomain of one, spelt as a host name
(letters, digits, ``-``, ``_``). What passes comes back in the WHATWG parser's canonical serialisation (``href``): that
is what gets emitted or fetched, so what a receiver parses is what was checked. A refusal carries one of
``REFUSAL_REASONS`` and a host fit for a log line, never the URL (delivery links are capabilities).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Literal
from urllib.parse import SplitResult, urlsplit

from ada_url import URL, HostType

RefusalReason = Literal["scheme", "userinfo", "port", "host", "unparsable"]
REFUSAL_REASONS: tuple[RefusalReason, ...] = ("scheme", "userinfo", "port", "host", "unparsable")

# Labels of letters, digits, "-" and "_" (lower-case: the WHATWG parser has folded case and applied IDNA), an
# optional trailing dot. Characters WHATWG still lets into a domain (";", "!", "$", …) are refused: no host a
# provider owns is spelt with them, and other readers split on some of them.
_HOST_NAME = re.compile(r"(?:[a-z0-9_-]{1,63}\.)*[a-z0-9_-]{1,63}\.?")
# What of a refused URL's host may go into a log line: the characters of host names and IP literals, bounded
# (no space, "," or ";", which separate the refusals of one email's log line).
_LOGGABLE_HOST = re.compile(r"[A-Za-z0-9._~%!$&'()*+=:\[\]-]{1,253}")


@dataclass(frozen=True)
class CheckedUrl:
    """A URL that passed ``check_url``: ``href`` is the canonical serialisation, the rest are its parts."""

    href: str
    hostname: str
    pathname: str
    search: str  # with its leading "?", "" when there is no query


@dataclass(frozen=True)
class RefusedUrl:
    """Why ``check_url`` refused a URL, and the host a receiver would have contacted (``-`` when none is known)."""

    reason: RefusalReason
    host: str


@dataclass(frozen=True)
class UrlReading:
    """Host (lower-case) and path of a URL as one parser reads it."""

    host: str
    path: str


def host_matches(host: str, domain: str) -> bool:
    """True when ``host`` is ``domain`` or one of its subdomains (case-insensitive, trailing dot ignored)."""
    host = host.lower().rstrip(".")
    domain = domain.lower().rstrip(".")
    return host == domain or host.endswith("." + domain)


def check_url(url: str, domains: Iterable[str]) -> CheckedUrl | RefusedUrl:
    """``url`` in canonical form when a receiver fetches it over https, without userinfo, on port 443, from a host
    within ``domains`` that Python reads the same way; else the refusal, reason and host."""
    return read_url(url).check(domains)


def url_readings(url: str) -> list[UrlReading]:
    """How the WHATWG parser and Python each read ``url`` (those that can)."""
    return read_url(url).readings()


def read_url(url: str) -> ReadUrl:
    """``url`` read once by both parsers, for a caller that asks what it claims to be, then checks it."""
    return ReadUrl(url)


class ReadUrl:
    """A URL as the WHATWG parser and Python read it (``None`` for a parser that cannot)."""

    __slots__ = ("python", "url", "whatwg")

    def __init__(self, url: str) -> None:
        self.url = _scalar_values(url)
        try:
            self.whatwg: URL | None = URL(self.url)
        except ValueError:
            self.whatwg = None
        try:
            self.python: SplitResult | None = urlsplit(self.url)
        except ValueError:  # a bracket Python cannot read, or a host that NFKC turns into a delimiter
            self.python = None

    def readings(self) -> list[UrlReading]:
        """Host and path by each parser that reads the URL: one that either puts on a provider's delivery URLs is a
        candidate delivery link, which ``check`` then accepts or refuses."""
        readings = []
        if self.whatwg is not None:
            readings.append(UrlReading(self.whatwg.hostname, self.whatwg.pathname))
        if self.python is not None:
            readings.append(UrlReading(self.python.hostname or "", self.python.path))
        return readings

    def check(self, domains: Iterable[str]) -> CheckedUrl | RefusedUrl:
        """See ``check_url``."""
        parsed, python = self.whatwg, self.python
        if parsed is None:
            return RefusedUrl("unparsable", _loggable((python.hostname or "") if python is not None else ""))
        host = parsed.hostname
        try:
            python_port = python.port if python is not None else None
        except ValueError:
            python = None
        if python is None:
            return RefusedUrl("unparsable", _loggable(host))
        if parsed.protocol != "https:":
            return RefusedUrl("scheme", _loggable(host))
        if ((python.hostname or "").rstrip(".") != host.rstrip(".") or parsed.host_type != HostType.DEFAULT
                or not _HOST_NAME.fullmatch(host) or not any(host_matches(host, domain) for domain in domains)):
            return RefusedUrl("host", _loggable(host))
        # Python's reading counts too: "https://@host/" is an empty userinfo the WHATWG serialisation silently drops.
        if parsed.username or parsed.password or python.username is not None:
            return RefusedUrl("userinfo", _loggable(host))
        if parsed.port != "" or python_port not in (None, 443):
            return RefusedUrl("port", _loggable(host))
        return CheckedUrl(href=parsed.href, hostname=host, pathname=parsed.pathname, search=parsed.search)


def host_of(url: str) -> str:
    """The host of ``url`` as a log line may carry it (links are capabilities: only provider and host are logged);
    ``-`` for one that cannot be read or shown."""
    read = ReadUrl(url)
    if read.whatwg is not None:
        return _loggable(read.whatwg.hostname)
    return _loggable((read.python.hostname or "") if read.python is not None else "")


def _scalar_values(url: str) -> str:
    """``url`` as a JavaScript receiver hands it to its URL parser (a USVString): surrogate pairs joined, lone
    surrogates (a UTF-7 body can decode to them) replaced by U+FFFD."""
    if url.isascii():
        return url
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        return url.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return url


def _loggable(host: str) -> str:
    return host if _LOGGABLE_HOST.fullmatch(host) else "-"
