"""Provider links in HTML the parser cannot build a tree for are still found (issue 15, defect 10).

libxml2's HTML parser (behind lxml) stops building the tree at depth 256 (2048 with XML_PARSE_HUGE) and silently
drops what follows; broken markup (an unclosed quote, a NUL in a tag name, an unterminated comment) swallows anchors.
The HTML source is therefore also scanned, entity-decoded, for provider URLs, after the tree's links.
"""

from __future__ import annotations

import quopri

import pytest

from email_processing import html_text
from email_processing.html_text import HTML_CAP_BYTES, html_to_text_and_hrefs
from email_processing.links import extract_delivery_links
from email_processing.orchestrator import NullOffloader, ProcessResult, process_email
from email_processing.parsing import parse_message

DROPBOX = "https://www.dropbox.com/s/aaaaaaaaaaaaaaa/x.mov?dl=0"
WETRANSFER = "https://we.tl/t-AAAAAAAAAA"
SWISSTRANSFER = "https://www.swisstransfer.com/d/00000000-0000-4000-8000-000000000000"
FI = "https://www.dropbox.com/scl/fi/aaaaaaaaaaaaaaaaaaaaa/a.zip?rlkey=bbbbbbbbbbbbbbbbbbbbbbbbb&st=cccccccc&dl=0"
FI_ENCODED = FI.replace("&", "&amp;")
APOSTROPHE = "https://www.dropbox.com/s/aaaaaaaaaaaaaaa/it's.mov?dl=0"


def _process(html: str, text_plain: str | None = None) -> ProcessResult:
    # quoted-printable keeps NULs, long lines and stray markup intact through the MIME layer.
    headers = "From: jane@example.com\r\nSubject: files\r\nMessage-ID: <m@example.com>\r\nMIME-Version: 1.0\r\n"
    html_part = ("Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
                 + quopri.encodestring(html.encode("utf-8")).decode("ascii"))
    if text_plain is None:
        raw = headers + html_part
    else:
        raw = (headers + "Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\n"
               "Content-Type: text/plain; charset=utf-8\r\n\r\n" + text_plain + "\r\n--b\r\n"
               + html_part + "\r\n--b--\r\n")
    parsed = parse_message(raw.encode("ascii"))
    assert (parsed.html, parsed.html_truncated) == (html.replace("\x00", ""), False)  # NULs go, nothing else
    return process_email(parsed, received_at="2025-06-03T08:00:00Z", sender_allowlist=(),
                         allow_without_links=True, offloader=NullOffloader())


def _raw_urls(result: ProcessResult) -> list[str]:
    return [link.raw_url for link in result.links]


def _nested(depth: int, inner: str) -> str:
    return "<html><body>" + "<div>" * depth + inner + "</div>" * depth + "</body></html>"


# --- nesting beyond the parser's depth limit ----------------------------------------------------------------------

def test_the_parser_really_drops_anchors_past_its_depth_limit():
    # The premise of the tests below: an anchor under html, body and 254 <div> is past libxml2's depth limit (256).
    assert html_to_text_and_hrefs(_nested(253, f'<a href="{DROPBOX}">x</a>'))[1] == [DROPBOX]
    assert html_to_text_and_hrefs(_nested(254, f'<a href="{DROPBOX}">x</a>'))[1] == []


@pytest.mark.parametrize("depth", [254, 2049, 90_000])  # just past libxml2's limit, past its HUGE limit, ~1 MB
def test_links_nested_deeper_than_the_parser_depth_limit_are_found(depth):
    # Given an HTML body whose anchor and text link sit deeper than libxml2 builds a tree for
    html = _nested(depth, f'<p>Your files: <a href="{DROPBOX}">download</a> or {WETRANSFER}</p>')
    assert len(html.encode()) < HTML_CAP_BYTES
    # When the email is processed
    result = _process(html)
    # Then both links are found, through the same provider classification as tree links
    assert [(link.provider, link.raw_url) for link in result.links] == [("dropbox", DROPBOX),
                                                                        ("wetransfer", WETRANSFER)]
    assert result.links[0].direct_url == "https://www.dropbox.com/s/aaaaaaaaaaaaaaa/x.mov?dl=1"


# --- badly broken markup -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("html", [
    pytest.param(f'<p><a href="{WETRANSFER}>click</a> and some more text <b>bold</b></p>', id="unclosed-quote"),
    pytest.param(f'<p <a href="{WETRANSFER}">x</a></p>', id="stray-lt-in-a-tag"),
    pytest.param(f'<img alt="<" <a href="{WETRANSFER}">x</a>', id="stray-lt-after-an-attribute"),
    pytest.param(f'<p>hi</p><!-- <a href="{WETRANSFER}">x</a>', id="unterminated-comment"),
    pytest.param(f"<p>hi</p><!{WETRANSFER}>", id="bogus-comment-tag"),
    pytest.param(f"<p>hi<?{WETRANSFER}?></p>", id="processing-instruction"),
    pytest.param(f'<p>x</p><![CDATA[ <a href="{WETRANSFER}">x</a>', id="unterminated-cdata"),
])
def test_a_link_in_badly_broken_markup_is_found(html):
    # Given broken HTML in which the parser loses the link (from anchor and from text)
    assert WETRANSFER not in html_to_text_and_hrefs(html)[1]
    # When the email is processed / Then the link is found, exactly as written
    assert _raw_urls(_process(html)) == [WETRANSFER]


@pytest.mark.parametrize("html", [
    pytest.param(f'<p><a\x00 href="{WETRANSFER}">x</a></p>', id="nul-in-a-tag-name"),
    pytest.param(f'<p><a hr\x00ef="{WETRANSFER}">x</a></p>', id="nul-in-an-attribute-name"),
    pytest.param(f"<p>{WETRANSFER}\x00 more</p>", id="nul-after-a-text-link"),
])
def test_a_nul_byte_in_the_html_does_not_hide_a_link(html):
    # Given HTML with NUL bytes where lxml, fed them, would drop the anchor or glue U+FFFD to the link
    assert WETRANSFER not in html_to_text_and_hrefs(html)[1]
    # When the email is processed (MIME parsing drops NULs first) / Then the link is found
    assert _raw_urls(_process(html)) == [WETRANSFER]


def test_a_nul_byte_in_html_given_straight_to_the_extractor_ends_a_scanned_link():
    # Given HTML that still holds a NUL (a caller that did not go through MIME parsing)
    html = f"<p><a\x00 href=\"{DROPBOX}\">x</a> {WETRANSFER}\x00more</p>"
    text, hrefs = html_to_text_and_hrefs(html)
    # When its links are extracted with the source / Then the NUL ends the link like any control character
    assert [link.raw_url for link in extract_delivery_links(text, hrefs, html_source=html)] == [DROPBOX, WETRANSFER]


def test_a_link_the_fallback_parser_loses_is_found_too(monkeypatch):
    # Given lxml not installed (BeautifulSoup on html.parser does the tree) and a link in a comment
    monkeypatch.setattr(html_text, "_lxml_html", None)
    monkeypatch.setattr(html_text, "_lxml_etree", None)
    html = f'<p><a href="{DROPBOX}">a</a></p><!-- <a href="{WETRANSFER}">b</a> -->'
    text, hrefs = html_to_text_and_hrefs(html)
    assert (text, hrefs) == ("a", [DROPBOX])
    # When the email is processed / Then the scan finds it whatever parser built the tree
    assert _raw_urls(_process(html)) == [DROPBOX, WETRANSFER]


def test_an_unclosed_quote_does_not_turn_the_swallowed_markup_into_part_of_the_link():
    # Given an href whose closing quote is missing, so the attribute runs on into the next anchor
    html = f'<p><a href="{DROPBOX}>click</a></p><p><a href="{WETRANSFER}">two</a></p>'
    # When the email is processed
    result = _process(html)
    # Then the first link ends where the markup starts, and the swallowed second anchor is found too
    assert _raw_urls(result) == [DROPBOX, WETRANSFER]


# --- entities ---------------------------------------------------------------------------------------------------

def test_entities_in_a_link_only_the_scan_finds_are_decoded():
    # Given links the tree drops (in a comment) written with entities: &amp; separators, a numeric-encoded scheme
    html = f'<p>hi</p><!-- <a href="{FI_ENCODED}">x</a> https&#58;&#47;&#47;we.tl/t-AAAAAAAAAA -->'
    # When the email is processed
    result = _process(html)
    # Then they are found decoded, and the Dropbox direct form keeps rlkey and st
    assert _raw_urls(result) == [FI, WETRANSFER]
    assert result.links[0].direct_url == (
        "https://www.dropbox.com/scl/fi/aaaaaaaaaaaaaaaaaaaaa/a.zip?rlkey=bbbbbbbbbbbbbbbbbbbbbbbbb&st=cccccccc&dl=1")


def test_a_numeric_reference_with_thousands_of_digits_does_not_stop_link_extraction():
    # Given a link followed by a decimal character reference longer than Python's int-conversion digit limit
    # (&amp;# survives the parser's own decoding as &#, which the link rules decode once more)
    html = f'<p><a href="{WETRANSFER}?x=&amp;#{"1" * 5000};">x</a> {DROPBOX}</p>'
    # When the email is processed / Then no exception escapes and the other link is still found
    assert DROPBOX in _raw_urls(_process(html))


def test_a_zero_padded_character_reference_decodes_like_a_short_one():
    # Given a comment-only link whose colon is written as a decimal reference padded past 7 digits
    html = "<p>hi</p><!-- https&#0000000058;//we.tl/t-AAAAAAAAAA -->"
    # When the email is processed / Then the reference is decoded, not dropped as out of range
    assert _raw_urls(_process(html)) == [WETRANSFER]


# --- deduplication and order ------------------------------------------------------------------------------------

def test_a_link_in_both_the_tree_and_the_scan_is_reported_once():
    # Given the same link as an entity-encoded anchor, as visible text and (inside a comment) again
    html = f'<p><a href="{FI_ENCODED}">get it</a> {FI_ENCODED}</p><!-- {FI_ENCODED} -->'
    # When the email is processed / Then it is reported once
    assert _raw_urls(_process(html)) == [FI]


@pytest.mark.parametrize("html", [
    pytest.param(f'<a href="{FI[:60]}\n{FI[60:]}">x</a>', id="line-break-inside-an-href"),
    pytest.param(f"<p>{WETRANSFER[:18]}<wbr>{WETRANSFER[18:]}</p>", id="wbr-inside-a-text-link"),
    pytest.param(f'<a href="{APOSTROPHE}">x</a>', id="apostrophe-inside-an-href"),
])
def test_the_scan_adds_no_truncated_copy_of_a_link_the_tree_found_whole(html):
    # Given a link the tree reads whole but a source scan can only see cut at a line break, a tag or a quote
    result = _process(html)
    # Then only the whole link is reported
    assert len(result.links) == 1
    assert result.links[0].raw_url in (FI, WETRANSFER, APOSTROPHE)


def test_tree_links_come_first_then_links_only_the_scan_finds_in_source_order():
    # Given a comment-only link before the anchors, an anchor, a text link, the plain part, another comment link
    html = (f"<!-- {SWISSTRANSFER} --><p><a href=\"{DROPBOX}\">a</a> https://fromsmash.com/AAAAAAAAAA-dt</p>"
            f"<!-- {WETRANSFER} -->")
    # When the email is processed
    result = _process(html, text_plain="plain: https://we.tl/t-BBBBBBBBBB")
    # Then: anchors, text (plain part, then the HTML's text), then the scan-only links in source order
    assert _raw_urls(result) == [DROPBOX, "https://we.tl/t-BBBBBBBBBB", "https://fromsmash.com/AAAAAAAAAA-dt",
                                 SWISSTRANSFER, WETRANSFER]


def test_links_only_the_scan_finds_pass_the_same_provider_allow_list():
    # Given a comment with lookalike hosts, a Dropbox logo, a SwissTransfer delete link, a tracker and one real link
    html = ("<p>hi</p><!-- https://dropbox.com.evil.example/s/aaaaaaaaaaaaaaa/x.zip "
            "https://evildropbox.com/s/aaaaaaaaaaaaaaa/x.zip "
            "https://www.dropbox.com/scl/fi/zzz/logo.png?rlkey=y&amp;raw=1 "
            "https://www.swisstransfer.com/d/0000?delete=ffff http://email.wetransfer.com/wf/click?upn=AAAA "
            f"ftp://we.tl/t-AAAAAAAAAA {WETRANSFER} -->")
    # When the email is processed / Then only the allow-listed delivery link is reported
    assert [(link.provider, link.raw_url) for link in _process(html).links] == [("wetransfer", WETRANSFER)]


# --- the HTML text is the tree's ----------------------------------------------------------------------------------

def test_the_email_content_is_the_tree_text_when_the_tree_is_fine():
    # Given well-formed HTML with a link only in a comment and in a script
    html = (f"<html><head><title>T</title><script>var u = '{DROPBOX}';</script></head>"
            f"<body><p>Hello</p><!-- {WETRANSFER} --><p>bye</p></body></html>")
    # When the email is processed
    result = _process(html)
    # Then the links are found but email_content is the visible text alone
    assert _raw_urls(result) == [DROPBOX, WETRANSFER]
    assert result.payload["email_content"] == "Hello\n\nbye"


# --- linear time on adversarial input ---------------------------------------------------------------------------

_NEAR_CAP = HTML_CAP_BYTES - 4096


@pytest.mark.timeout(30)  # a generous watchdog, not a timing: a quadratic scan of 1 MB would take far longer
@pytest.mark.parametrize("html", [
    pytest.param(("https://www.dropbox.com/" * (_NEAR_CAP // 24)), id="dropbox-prefix-repeated"),
    pytest.param(("https://www.dropbox.com/s/a " * (_NEAR_CAP // 28)), id="many-short-candidates"),
    pytest.param(("<div>https://we.tl/" * (_NEAR_CAP // 19)), id="candidates-in-deep-nesting"),
    pytest.param("https://we.tl/t-" + "A" * _NEAR_CAP, id="one-run-without-delimiters"),
    pytest.param("h" * _NEAR_CAP, id="scheme-like-run"),
    pytest.param("&amp;" * (_NEAR_CAP // 5), id="entities"),
    pytest.param("https://we.tl/t-A?&#" + "1" * _NEAR_CAP, id="endless-numeric-reference"),
    pytest.param("&#x" + "f" * _NEAR_CAP, id="endless-hex-reference"),
    pytest.param("<a href=\"https://we.tl/t-" + "<" * _NEAR_CAP, id="open-attribute-of-angle-brackets"),
])
def test_a_1mb_adversarial_html_body_is_processed(html):
    # Given close to 1 MB of input shaped against a URL scan
    # When the email is processed / Then it finishes (under the watchdog) with no bogus link
    result = _process(html)
    assert all(link.provider in ("dropbox", "wetransfer") for link in result.links)
    assert len(result.links) <= 1
