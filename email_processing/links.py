"""File-delivery links: ``extract_links`` (``extract_delivery_links``: the links alone) over the provider registry.

A provider is one module of ``email_processing.providers`` exporting one ``Provider``, listed in ``PROVIDERS``: its
name, the host domains it owns (a host matches a domain exactly or as a subdomain, never by substring) with the URL
paths that are deliveries on them, optionally a direct-download rewrite and an exclusion rule, and what may be
copied (``is_copyable``) and which links are folders (``is_folder_link``). Candidate URLs come from the HTML anchors
first (document order), then from the text, then from a linear scan of the entity-decoded HTML source, which finds
what the HTML parser lost (nesting past libxml2's depth limit, broken markup, comments); each is HTML-unescaped,
stripped of trailing punctuation, unwrapped from Outlook SafeLinks and Google redirects, checked against the
registry and reported once, in order of first appearance. A candidate that either Python or a WHATWG parser puts on
a provider's delivery URLs is then checked by ``email_processing.urls.check_url`` (the host as receivers read it,
https, no userinfo, no port but 443): what passes is emitted in the WHATWG canonical form, what does not is returned
as a ``RefusedLink`` (reason, provider, host) for the caller to count and log. Redirect wrappers are unwrapped only
when they pass the same check.
"""

from __future__ import annotations

import html
import re
from bisect import bisect_left
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Protocol
from urllib.parse import parse_qsl, urlsplit

from email_processing.providers import PROVIDERS, HostRule, Provider, provider_named
from email_processing.providers.base import query_pairs as _query_pairs
from email_processing.providers.dropbox import dropbox_direct_url, is_dropbox_folder
from email_processing.urls import ReadUrl, RefusalReason, RefusedUrl, check_url, host_matches, read_url

__all__ = [
    "MAX_CANDIDATES_CHECKED", "MAX_URL_LENGTH", "PROVIDERS", "DeliveryLink", "ExtractedLinks", "HostRule", "LinkLike",
    "Provider", "RefusedLink", "dropbox_direct_url", "extract_delivery_links", "extract_links", "host_matches",
    "is_allowed_provider_url", "is_copyable", "is_dropbox_folder", "is_folder_link",
]

MAX_URL_LENGTH = 8192  # longer candidates are not links a person shares; bounds the work per match
_MAX_UNWRAP_DEPTH = 4
# Full checks (parse, unwrap, classify) per email: past this many distinct candidates that name a provider's domain,
# the rest are counted as unchecked, not checked (issue 16 defect 2: work per email is bounded whatever it holds).
MAX_CANDIDATES_CHECKED = 1000


@dataclass(frozen=True)
class DeliveryLink:
    provider: str
    raw_url: str
    direct_url: str


@dataclass(frozen=True)
class RefusedLink:
    """A candidate on a provider's delivery URLs that ``check_url`` refused: what is counted and logged (no URL)."""

    reason: RefusalReason
    provider: str
    host: str


class ExtractedLinks(NamedTuple):
    links: list[DeliveryLink]
    refused: tuple[RefusedLink, ...]
    unchecked: int = 0  # candidates left unchecked once MAX_CANDIDATES_CHECKED were


class LinkLike(Protocol):
    """What the payload builder and the R2 offloader read of a link: a ``DeliveryLink`` or an offloaded one."""

    @property
    def provider(self) -> str: ...

    @property
    def raw_url(self) -> str: ...

    @property
    def direct_url(self) -> str: ...


# --- host and provider checks ----------------------------------------------------------------------------------

def is_copyable(link: LinkLike) -> bool:
    """True when R2 may copy ``link`` (False for MEGA, Google Docs/Sheets/Slides, upload pages, unknown providers)."""
    try:
        return provider_named(link.provider).copies(link.raw_url)
    except KeyError:
        return False


def is_folder_link(link: LinkLike) -> bool:
    """True when ``link``'s shape says it names a folder (Dropbox ``/scl/fo/``, Drive folders, ``1drv.ms/f/``, …)."""
    try:
        return provider_named(link.provider).is_folder(link.raw_url)
    except KeyError:
        return False


def is_allowed_provider_url(url: str) -> str | None:
    """The provider name when ``url`` is an https delivery link of a registered provider that ``check_url``
    accepts, else None."""
    link = _link_for(url)
    return link.provider if isinstance(link, DeliveryLink) else None


def _claiming_provider(read: ReadUrl) -> Provider | None:
    """The provider on whose delivery URLs either reading of the URL (WHATWG or Python) puts it."""
    for reading in read.readings():
        for provider in PROVIDERS:
            if provider.delivers(reading.host, reading.path, read.url):
                return provider
    return None


def _link_for(url: str) -> DeliveryLink | RefusedLink | None:
    """The delivery link ``url`` is (canonical raw and direct URLs), the refusal of one it claims to be, or None."""
    read = read_url(url)
    provider = _claiming_provider(read)
    if provider is None:
        return None
    checked = read.check(provider.domains)
    if isinstance(checked, RefusedUrl):
        return RefusedLink(checked.reason, provider.name, checked.host)
    if len(checked.href) > MAX_URL_LENGTH or not provider.delivers(checked.hostname, checked.pathname, checked.href):
        return None  # e.g. "/s/../home": a delivery path to Python, the account page to a receiver
    direct_url = checked.href
    if provider.direct is not None:  # the direct form is emitted too: it passes the same check
        direct = check_url(provider.direct(checked.href), provider.domains)
        if isinstance(direct, RefusedUrl):
            return RefusedLink(direct.reason, provider.name, direct.host)
        direct_url = direct.href
    return DeliveryLink(provider=provider.name, raw_url=checked.href, direct_url=direct_url)


# --- candidates ------------------------------------------------------------------------------------------------

# A URL in running text stops at whitespace, quotes, angle brackets, control characters and characters never left
# bare in a URL. One character class, no nested quantifier: a linear scan, also of 1 MB of HTML source.
_TEXT_URL = re.compile(r"""https?://[^\s<>"'`{}|\\^\[\]\x00-\x1f\x7f]+""", re.IGNORECASE)
# An href cannot hold a raw < or >: when it does, an unclosed quote made the parser read on into the next markup.
_MARKUP_IN_HREF = re.compile(r"[<>]")
# html.unescape converts decimal references with int(), which refuses more than 4300 digits (ValueError).
_LONG_DECIMAL_REF = re.compile(r"&#([0-9]{8,})(;?)")
_TRAILING = ".,;:!?'\"*>}»…“”‘’"
_CLOSERS = {")": "(", "]": "["}
_STRIPPABLE = _TRAILING + "".join(_CLOSERS)


def _strip_trailing(url: str) -> str:
    """``url`` without the punctuation of the sentence around it: trailing ``_TRAILING`` characters, and a trailing
    ``)`` or ``]`` while the URL holds more of it than of its opener ("(https://…/file.zip)": the paren is the
    sentence's, "…/take(1).mov" keeps its own)."""
    # Linear, in C-level string operations: recounting and re-slicing once per character stripped made a URL ending
    # in thousands of ")" quadratic (issue 16 defect 2). One rstrip finds the tail that could go; stripping it from
    # the end, the first closer kept is, for each kind, the one with ``surplus`` of its kind after it in the tail.
    tail_start = len(url.rstrip(_STRIPPABLE))
    if tail_start == len(url):
        return url
    tail = url[tail_start:]
    end = tail_start
    for closer, opener in _CLOSERS.items():
        surplus = max(url.count(closer) - url.count(opener), 0)
        if tail.count(closer) > surplus:
            kept_at = len(tail.rsplit(closer, surplus + 1)[0])
            end = max(end, tail_start + kept_at + 1)
    return url[:end]


_REDIRECTORS = ("safelinks.protection.outlook.com", "google.com")
_TAB_OR_NEWLINE = re.compile(r"[\t\r\n]")


def _unwrap_redirector(url: str) -> str | None:
    """The target of an Outlook SafeLinks or Google redirect URL, else None. A wrapper is a hop the link takes: it is
    read only when it passes ``check_url`` like any other URL (so a backslash cannot fake the wrapper's host)."""
    # ``check_url`` passes a host only as Python reads it: a substring of the URL once tab and line breaks are
    # removed (as both parsers remove them). So this shortcut skips no wrapper that the check would pass.
    lowered = _TAB_OR_NEWLINE.sub("", url).lower()
    if "google." not in lowered and "safelinks." not in lowered:
        return None
    wrapper = check_url(url, _REDIRECTORS)
    if isinstance(wrapper, RefusedUrl):
        return None
    names: tuple[str, ...]
    if host_matches(wrapper.hostname, "safelinks.protection.outlook.com"):
        names = ("url",)
    elif host_matches(wrapper.hostname, "google.com") and wrapper.pathname == "/url":
        names = ("q", "url")
    else:
        return None
    params = dict(parse_qsl(wrapper.search[1:], keep_blank_values=True))
    for name in names:
        target = params.get(name)
        if target and target.lower().startswith(("http://", "https://")):
            return target
    return None


def _shorten_decimal_ref(match: re.Match[str]) -> str:
    digits = match.group(1).lstrip("0") or "0"
    # Past 7 digits the code point is beyond U+10FFFF, which html.unescape turns into U+FFFD as well.
    return "&#" + digits + match.group(2) if len(digits) <= 7 else "\ufffd"


def _unescape_entities(text: str) -> str:
    """``html.unescape`` that also survives decimal references too long for ``int()`` (linear in ``text``)."""
    if "&" not in text:
        return text
    if "&#" in text:
        text = _LONG_DECIMAL_REF.sub(_shorten_decimal_ref, text)
    return html.unescape(text)


def _href_candidate(href: str) -> str:
    markup = _MARKUP_IN_HREF.search(href)
    return href[: markup.start()] if markup else href


def _normalise_candidate(url: str) -> str:
    url = url.strip()
    if "&" in url:
        url = _unescape_entities(url)
    url = _strip_trailing(url)
    for _ in range(_MAX_UNWRAP_DEPTH):
        target = _unwrap_redirector(url)
        if target is None:
            break
        url = _strip_trailing(target.strip())
    return url


def _dedup_key(link: DeliveryLink) -> str:
    """Two spellings of one link (host case, tracking parameters, a trailing slash) are the same link; for a
    provider whose links are told apart by their fragment (MEGA's key), the fragment counts too."""
    parts = urlsplit(link.direct_url)
    pairs = [(k, v) for k, v in _query_pairs(parts.query) if not k.lower().startswith("utm_")]
    query = "&".join(f"{k}={v}" for k, v in pairs)
    fragment = f"#{parts.fragment}" if parts.fragment and provider_named(link.provider).fragment_identifies else ""
    return f"{(parts.hostname or '').lower()}{parts.path.rstrip('/')}?{query}{fragment}"


def _classify(candidate: str) -> tuple[DeliveryLink | RefusedLink | None, str]:
    """The verdict on ``candidate`` and its normalised form."""
    if len(candidate) > MAX_URL_LENGTH:
        return None, candidate
    normalised = _normalise_candidate(candidate)
    return _link_for(normalised), normalised


def _hint_pattern() -> re.Pattern[str]:
    names = {domain for provider in PROVIDERS for domain in provider.domains} | set(_REDIRECTORS)
    return re.compile("|".join(re.escape(name) for name in sorted(names, key=len, reverse=True)), re.IGNORECASE)


def _may_deliver(candidate: str) -> bool:
    """False for a candidate that cannot be a provider's delivery link nor a redirect wrapper around one: a host
    ``check_url`` passes is a substring of the URL once entities are decoded and tabs and line breaks removed
    (``_unwrap_redirector`` relies on the same), so a candidate naming no provider domain and no wrapper is dropped
    by one regex search instead of a full parse. (A host spelled with percent escapes or IDNA mappings that only the
    WHATWG reading decodes is refused by the check anyway; it is then dropped here, not counted as a refusal.)"""
    if "&" in candidate:
        candidate = _unescape_entities(candidate)
    if "\t" in candidate or "\n" in candidate or "\r" in candidate:
        candidate = _TAB_OR_NEWLINE.sub("", candidate)
    return _HINT.search(candidate) is not None


_HINT = _hint_pattern()


class _FirstSightings:
    """Delivery links in order of first sight, one per ``_dedup_key``; refused candidates, one per URL. Each
    distinct candidate is checked once (the text and the HTML source repeat the anchors' URLs), at most
    ``max_checked`` of them; the first candidate past that is counted in ``unchecked`` (``extract_links`` then
    counts the tree's remaining candidates and stops)."""

    def __init__(self, max_checked: int = MAX_CANDIDATES_CHECKED) -> None:
        self.links: list[DeliveryLink] = []
        self.unchecked = 0
        self._seen: set[str] = set()
        self._refused: dict[str, RefusedLink] = {}
        self._verdicts: dict[str, tuple[DeliveryLink | RefusedLink | None, str]] = {}
        self._max_checked = max_checked

    @property
    def refused(self) -> tuple[RefusedLink, ...]:
        return tuple(self._refused.values())

    def new_link(self, candidate: str) -> DeliveryLink | None:
        """The delivery link ``candidate`` names, unless it names none or one already seen (now marked seen). A
        refused candidate is remembered as a refusal."""
        if not _may_deliver(candidate):
            return None
        verdict = self._verdicts.get(candidate)
        if verdict is None:
            if len(self._verdicts) >= self._max_checked:
                self.unchecked += 1
                return None
            verdict = self._verdicts[candidate] = _classify(candidate)
        link, normalised = verdict
        if isinstance(link, RefusedLink):
            self._refused.setdefault(normalised, link)
            return None
        if link is None:
            return None
        key = _dedup_key(link)
        if key in self._seen:
            return None
        self._seen.add(key)
        return link


def extract_links(text: str, hrefs: list[str], html_source: str = "") -> ExtractedLinks:
    """Delivery links in ``hrefs`` (document order), then in ``text``, then in ``html_source`` (the HTML the hrefs
    and text were read from, scanned for links its parser lost), each once, in order of first appearance; and the
    candidates refused by the URL check, each once."""
    sightings = _FirstSightings()
    tree_candidates = [_href_candidate(href) for href in hrefs if href and href[:4].lower() == "http"]
    if text:
        tree_candidates.extend(match.group(0) for match in _TEXT_URL.finditer(text))
    shortened: list[DeliveryLink] = []
    for index, candidate in enumerate(tree_candidates):
        link = sightings.new_link(candidate)
        if link is not None:
            sightings.links.append(link)
            if candidate.endswith(_ELLIPSES):
                shortened.append(link)
        elif sightings.unchecked:  # the budget is spent: the rest is counted, not looked at
            sightings.unchecked += len(tree_candidates) - index - 1
            break
    if html_source and not sightings.unchecked:
        _add_links_only_the_source_shows(sightings, html_source, set(tree_candidates))
    links = _without_shortened_displays(sightings.links, shortened) if shortened else sightings.links
    return ExtractedLinks(links, sightings.refused, sightings.unchecked)


_ELLIPSES = ("…", "...")


def _without_shortened_displays(links: list[DeliveryLink], shortened: list[DeliveryLink]) -> list[DeliveryLink]:
    """``links`` without those read from text ending in an ellipsis that begin another link of the email: the text
    of an anchor shortened for display ("https://www.dropbox.com/s/kqbk7…") is not a second link. A link followed by
    an ellipsis of the sentence, with no longer link it begins, stays."""
    def begins_another(link: DeliveryLink) -> bool:
        stem = link.raw_url.rstrip("/")
        return any(other.raw_url != link.raw_url and other.raw_url.startswith(stem) for other in links)

    dropped = {id(link) for link in shortened if begins_another(link)}
    return [link for link in links if id(link) not in dropped]


def extract_delivery_links(text: str, hrefs: list[str], html_source: str = "") -> list[DeliveryLink]:
    """The delivery links of ``extract_links``."""
    return extract_links(text, hrefs, html_source).links


def _add_links_only_the_source_shows(sightings: _FirstSightings, html_source: str, classified: set[str]) -> None:
    # The source shows some links only cut (a line break or a quote inside an href, <wbr> inside a text link):
    # a scan-only link that starts a link found whole in the tree is that link's cut copy, not a link of its own.
    found_whole = sorted(link.raw_url for link in sightings.links)
    for candidate in _html_source_candidates(html_source):
        # Most of the source's URLs are the anchors' hrefs again, ``classified`` already (same string, same verdict):
        # skipping them keeps the scan's cost far below the tree's.
        if candidate in classified:
            continue
        link = sightings.new_link(candidate)
        if link is not None and not _starts_one_of(found_whole, link.raw_url):
            sightings.links.append(link)
        elif sightings.unchecked:
            return  # the budget is spent (the source's further candidates are not counted)


def _html_source_candidates(html_source: str) -> Iterator[str]:
    # Always scanned, not only when the tree looks incomplete: libxml2 reports recoverable errors for most email HTML
    # and drops comments by design, so its error log cannot tell a lost link. Decoding and scan are linear passes.
    for match in _TEXT_URL.finditer(_unescape_entities(html_source)):
        yield match.group(0)


def _starts_one_of(sorted_urls: list[str], prefix: str) -> bool:
    # The strings starting with ``prefix`` sort right after it: one bisection, not a pass over all of them.
    index = bisect_left(sorted_urls, prefix)
    return index < len(sorted_urls) and sorted_urls[index].startswith(prefix)
