"""The 1 MB HTML cap and the HTML → text fallbacks (BeautifulSoup on lxml, and no lxml at all)."""

from __future__ import annotations

import base64
import logging

import pytest

from email_processing import html_text
from email_processing.html_text import HTML_CAP_BYTES, html_to_text_and_hrefs, truncate_html
from email_processing.links import extract_delivery_links
from email_processing.orchestrator import NullOffloader, process_email
from email_processing.parsing import parse_message

WARNING = "HTML content truncated (exceeded 1MB limit)"


def _html_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "email_processing.html_text" and r.levelno == logging.WARNING]


@pytest.mark.parametrize("char", ["é", "€", "😀"])  # 2, 3 and 4 bytes of UTF-8
@pytest.mark.parametrize("shift", [0, 1, 2, 3])
def test_a_multibyte_character_across_the_boundary_is_cut_whole(char, shift, caplog):
    # Given HTML whose multi-byte character straddles byte 1,048,576
    prefix = "a" * (HTML_CAP_BYTES - shift)
    html = prefix + char * 10
    # When it is capped
    with caplog.at_level(logging.WARNING):
        capped, cut = truncate_html(html)
    # Then the result is valid UTF-8 of at most the cap, made of whole characters, and the WARNING is exact
    encoded = capped.encode("utf-8")
    assert cut is True
    assert len(encoded) <= HTML_CAP_BYTES
    assert HTML_CAP_BYTES - len(encoded) < len(char.encode())
    assert capped == html[: len(capped)]
    assert _html_warnings(caplog) == [WARNING]


def test_html_at_exactly_the_cap_is_untouched_and_nothing_is_logged(caplog):
    html = "é" * (HTML_CAP_BYTES // 2)
    with caplog.at_level(logging.WARNING):
        assert truncate_html(html) == (html, False)
    assert _html_warnings(caplog) == []


def _email_with_html(html: str) -> bytes:
    body = base64.encodebytes(html.encode("utf-8")).decode("ascii").replace("\n", "\r\n")
    return ("From: a@example.com\r\nSubject: big\r\nMessage-ID: <big@example.com>\r\n"
            "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n" + body).encode()


def test_links_before_the_cut_are_found_and_links_after_it_are_lost(caplog):
    # Given a 1.5 MB HTML email with a link on each side of the 1 MB boundary
    filler = "<p>" + "ß" * 700_000 + "</p>"
    raw = _email_with_html('<a href="https://we.tl/t-BEFOREAAAA">x</a>' + filler
                           + '<a href="https://fromsmash.com/AFTERAAAAA-dt">y</a>')
    # When it is processed
    with caplog.at_level(logging.WARNING):
        parsed = parse_message(raw)
        result = process_email(parsed, received_at="2025-01-01T00:00:00Z", sender_allowlist=(),
                               allow_without_links=False, offloader=NullOffloader())
    # Then only the first link survives, the HTML is capped, the flags say so, and the WARNING was logged once
    assert [link.raw_url for link in result.links] == ["https://we.tl/t-BEFOREAAAA"]
    assert parsed.html_truncated is True
    assert len(parsed.html.encode("utf-8")) <= HTML_CAP_BYTES
    assert result.payload["email_content_truncated"] is True
    assert _html_warnings(caplog) == [WARNING]


def test_a_huge_html_part_is_not_fully_transfer_decoded():
    # 30 MB of base64 HTML: the parser decodes only what the cap can use (4x the cap), not the whole part.
    raw = _email_with_html("<p>" + "x" * 30_000_000 + "</p>")
    parsed = parse_message(raw)
    assert parsed.html_truncated is True
    assert len(parsed.html) == HTML_CAP_BYTES


def test_lxml_is_the_fast_path(mocker):
    spy = mocker.spy(html_text, "_with_beautifulsoup")
    text, hrefs = html_to_text_and_hrefs('<p>Hi <a href="https://we.tl/t-AAAAAAAAAA">here</a></p><p>bye</p>')
    assert (text, hrefs) == ("Hi here\n\nbye", ["https://we.tl/t-AAAAAAAAAA"])
    spy.assert_not_called()


def test_a_document_lxml_rejects_goes_to_beautifulsoup_on_lxml(mocker):
    # Given lxml refusing the document
    mocker.patch.object(html_text, "_with_lxml", side_effect=ValueError("rejected"))
    soup = mocker.spy(html_text, "_make_soup")
    # When it is converted
    text, hrefs = html_to_text_and_hrefs('<p>Hi <a href="https://we.tl/t-AAAAAAAAAA">here</a></p><script>x()</script>')
    # Then BeautifulSoup (lxml parser) gives the text and the anchors
    assert soup.call_args.args[1] == "lxml"
    assert hrefs == ["https://we.tl/t-AAAAAAAAAA"]
    assert "Hi" in text and "here" in text and "x()" not in text


def test_without_lxml_it_uses_beautifulsoup_on_html_parser(monkeypatch, mocker):
    # Given lxml not installed
    monkeypatch.setattr(html_text, "_lxml_html", None)
    monkeypatch.setattr(html_text, "_lxml_etree", None)
    soup = mocker.spy(html_text, "_make_soup")
    # When an email's HTML is converted
    text, hrefs = html_to_text_and_hrefs(
        '<html><head><style>p{}</style></head><body><p>Files &amp; more</p>'
        '<a href="https://www.dropbox.com/s/aaa/x.zip?a=1&amp;dl=0">get</a></body></html>')
    # Then html.parser did the work, with entities unescaped in both text and hrefs
    assert soup.call_args.args[1] == "html.parser"
    assert hrefs == ["https://www.dropbox.com/s/aaa/x.zip?a=1&dl=0"]
    assert text.splitlines()[0] == "Files & more"
    assert [link.direct_url for link in extract_delivery_links(text, hrefs)] == [
        "https://www.dropbox.com/s/aaa/x.zip?a=1&dl=1"]


def test_the_fallback_tolerates_markup_that_looks_like_a_url():
    # bs4 warns for such input; the warning must not escape (warnings are errors in this suite).
    import email_processing.html_text as module

    assert module._with_beautifulsoup("https://we.tl/t-AAAAAAAAAA") == ("https://we.tl/t-AAAAAAAAAA", [])


@pytest.mark.parametrize("html", ["", "   ", "<!-- only a comment -->", "\x00\x01", "<", "<<<>>>&&&;",
                                  '<?xml version="1.0" encoding="utf-8"?><html><body>x</body></html>',
                                  "<div>" * 5000 + "deep" + "</div>" * 5000])
def test_odd_html_never_raises(html):
    text, hrefs = html_to_text_and_hrefs(html)
    assert isinstance(text, str) and isinstance(hrefs, list)
