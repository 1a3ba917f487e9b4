"""HTML side of an email: the 1 MB cap and HTML → plain text plus the anchors' hrefs.

``truncate_html`` bounds what reaches the HTML parser (1,048,576 bytes of UTF-8, cut at a character boundary) and
logs the operator WARNING ``HTML content truncated (exceeded 1MB limit)``. ``html_to_text_and_hrefs`` walks the tree
with ``lxml.html`` directly (about 3-4x faster than BeautifulSoup on the same documents); documents lxml rejects go
to BeautifulSoup on the lxml parser, and without lxml installed at all to BeautifulSoup on ``html.parser``.
"""

from __future__ import annotations

import codecs
import logging
import re
import threading
import warnings
from typing import Any

logger = logging.getLogger(__name__)

try:  # lxml is a pinned dependency, but the service must keep working without it.
    import lxml.etree as _lxml_etree
    import lxml.html as _lxml_html
except ImportError:  # pragma: no cover - exercised by monkeypatching in tests
    _lxml_etree = None
    _lxml_html = None

HTML_CAP_BYTES = 1_048_576
HTML_TRUNCATED_WARNING = "HTML content truncated (exceeded 1MB limit)"

# Elements whose content is never text a reader sees.
_INVISIBLE_TAGS = ("script", "style", "head", "title", "noscript", "template")
# Elements that start a new line in rendered text.
_BLOCK_TAGS = (
    "p", "div", "br", "tr", "li", "ul", "ol", "table", "h1", "h2", "h3", "h4", "h5", "h6",
    "blockquote", "pre", "hr", "section", "article", "header", "footer", "center", "dd", "dt", "dl",
    "address", "form", "fieldset",
)
# Table cells stay on their row's line, separated by a space.
_CELL_TAGS = ("td", "th")

_MANY_NEWLINES = re.compile(r"\n{3,}")
_URL_WHITESPACE = re.compile(r"[\t\r\n]")


def truncate_html(html: str, limit: int = HTML_CAP_BYTES) -> tuple[str, bool]:
    """Cut ``html`` to at most ``limit`` bytes of UTF-8 at a character boundary; True (and the WARNING) when cut.

    ``limit`` is smaller than the cap only for a second HTML part of one email, which gets what the first left.
    """
    if len(html) * 4 <= limit:  # cannot exceed the limit: skip the encode
        return html, False
    # surrogatepass: a lone surrogate must not make the cap itself fail.
    encoded = html.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit:
        return html, False
    # An incremental decoder with final=False drops an incomplete trailing sequence: the cut lands on a boundary.
    decoder = codecs.getincrementaldecoder("utf-8")("surrogatepass")
    cut = decoder.decode(encoded[: max(limit, 0)], final=False)
    warn_html_truncated()
    return cut, True


def warn_html_truncated() -> None:
    """The operator WARNING for a cut HTML body (also used when the cut happened before charset decoding)."""
    logger.warning(HTML_TRUNCATED_WARNING)


def html_to_text_and_hrefs(html: str) -> tuple[str, list[str]]:
    """Visible text of ``html`` (block elements on their own lines) and the hrefs of its anchors, in order."""
    if not html or not html.strip():
        return "", []
    if _lxml_html is not None:
        try:
            return _with_lxml(html)
        except Exception as exc:  # lxml rejects some documents (e.g. an XML encoding declaration in a str)
            logger.debug("HTML: lxml rejected the document (%s); using BeautifulSoup", type(exc).__name__)
    return _with_beautifulsoup(html)


def _with_lxml(html: str) -> tuple[str, list[str]]:
    # libxml2's HTML parser (what lxml.html uses) with plain elements: the HtmlElement class lookup per element
    # cost about a tenth of the HTML time in the benchmark, and nothing here needs HtmlElement's methods.
    root = _lxml_etree.fromstring(html, _lxml_parser())
    if root is None:
        return "", []
    hrefs = [href for href in (el.get("href") for el in root.iter("a", "area")) if href]
    _lxml_etree.strip_elements(root, *_INVISIBLE_TAGS, with_tail=False)
    for el in root.iter(*_BLOCK_TAGS):
        el.tail = "\n" + el.tail if el.tail else "\n"
        if el.tag not in ("br", "hr"):
            el.text = "\n" + el.text if el.text else "\n"
    for el in root.iter(*_CELL_TAGS):
        el.tail = " " + el.tail if el.tail else " "
    text = _lxml_etree.tostring(root, method="text", encoding="unicode", with_tail=False)
    return _normalise_text(text), [_clean_href(href) for href in hrefs]


_PARSERS = threading.local()


def _lxml_parser() -> Any:
    # lxml parsers are not thread-safe to share: one per thread (Gunicorn threads, poller, CLI).
    parser = getattr(_PARSERS, "parser", None)
    if parser is None:
        parser = _lxml_etree.HTMLParser(remove_comments=True, remove_pis=True, no_network=True,
                                        recover=True, default_doctype=False)
        _PARSERS.parser = parser
    return parser


def _make_soup(html: str, parser: str) -> Any:
    from bs4 import BeautifulSoup

    with warnings.catch_warnings():
        # bs4 warns when markup looks like a URL or a file name, or like XML; for email bodies these are noise,
        # and they would be errors under the test suite's warning policy. This path is the rare fallback.
        warnings.simplefilter("ignore")
        return BeautifulSoup(html, parser)


def _with_beautifulsoup(html: str) -> tuple[str, list[str]]:
    soup = _make_soup(html, "lxml" if _lxml_html is not None else "html.parser")
    hrefs = [tag.get("href") for tag in soup.find_all(["a", "area"], href=True)]
    for tag in soup.find_all(list(_INVISIBLE_TAGS)):
        tag.decompose()
    for tag in soup.find_all(list(_BLOCK_TAGS)):
        tag.insert_before("\n")
        tag.insert_after("\n")
    for tag in soup.find_all(list(_CELL_TAGS)):
        tag.insert_after(" ")
    text = soup.get_text()
    return _normalise_text(text), [_clean_href(href) for href in hrefs if isinstance(href, str) and href]


def _clean_href(href: str) -> str:
    # Browsers drop tabs and line breaks inside URLs; broken QP wrapping leaves them in hrefs.
    return _URL_WHITESPACE.sub("", href).strip()


def _normalise_text(text: str) -> str:
    """Whitespace runs to one space per line, at most one blank line in a row (str.split: C speed, no regex)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if _INVISIBLE_CHARS_PRESENT(text):
        text = text.translate(_INVISIBLE_CHARS)
    text = "\n".join(" ".join(line.split()) for line in text.split("\n"))
    return _MANY_NEWLINES.sub("\n\n", text).strip()


# Zero-width characters are not whitespace for str.split() but render as nothing.
_INVISIBLE_CHARS = {0x200B: None, 0x200C: None, 0x200D: None, 0xFEFF: None, 0xAD: None}
_INVISIBLE_CHARS_RE = re.compile("[\u200b\u200c\u200d\ufeff\xad]")


def _INVISIBLE_CHARS_PRESENT(text: str) -> bool:
    return _INVISIBLE_CHARS_RE.search(text) is not None
