"""parse_message / parse_parts: headers, charsets, transfer encodings, caps, and never raising."""

from __future__ import annotations

import base64
import logging
import quopri

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from email_processing.parsing import (
    HTML_CAP_BYTES,
    TEXT_CAP_BYTES,
    ParsedEmail,
    TextPart,
    encoded_fetch_limit,
    parse_message,
    parse_parts,
)

HEADERS = (b"From: =?utf-8?b?SsOpcsO0bWU=?= <Jerome@Example.COM>\r\nTo: inbox@example.com\r\n"
           b"Subject: =?iso-8859-1?q?R=E9sum=E9?= des fichiers\r\nDate: Tue, 03 Jun 2025 10:00:00 +0200\r\n"
           b"Message-ID: <AbC.123@Example.com>\r\nMIME-Version: 1.0\r\n")


def test_headers_are_decoded():
    parsed = parse_message(HEADERS + b"Content-Type: text/plain\r\n\r\nhello\r\n")
    assert parsed.subject == "Résumé des fichiers"
    assert parsed.from_header == "Jérôme <Jerome@Example.COM>"
    assert parsed.sender_email == "jerome@example.com"
    assert parsed.message_id == "AbC.123@Example.com"
    assert parsed.date_header == "Tue, 03 Jun 2025 10:00:00 +0200"
    assert parsed.text_plain == "hello"
    assert parsed.body_head == b"hello\r\n"


def test_folded_subject_and_missing_headers():
    parsed = parse_message(b"Subject: a long\r\n subject line\r\n\r\nbody")
    assert parsed.subject == "a long subject line"
    assert (parsed.message_id, parsed.date_header, parsed.from_header, parsed.sender_email) == (None, None, "", "")


def test_a_from_header_without_an_address_gives_no_sender_email():
    parsed = parse_message(b"From: Undisclosed\r\n\r\nx")
    assert (parsed.from_header, parsed.sender_email) == ("Undisclosed", "")


def test_quoted_printable_soft_breaks_inside_a_url_are_joined():
    url = "https://www.dropbox.com/scl/fi/aaaaaaaaaaaaaaaaaaaaa/x.zip?rlkey=bbbbbbbbbbbbbbbbbbbbbbbbb&dl=0"
    body = quopri.encodestring(f"link {url} end".encode())
    assert b"=\n" in body and b"=3D" in body
    raw = HEADERS + b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    assert url in parse_message(raw + body).text_plain


def test_a_trailing_semicolon_on_the_transfer_encoding_is_tolerated():
    raw = HEADERS + b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable;\r\n\r\ncaf=C3=A9\r\n"
    assert parse_message(raw).text_plain == "café"


@pytest.mark.parametrize("declared, body, expected", [
    ("utf-8", "prêt".encode("utf-8"), "prêt"),
    ("iso-8859-1", "prêt".encode("latin-1"), "prêt"),
    ("us-ascii", "prêt".encode("utf-8"), "prêt"),            # mislabelled: UTF-8 is tried next
    ("utf-8", "prêt".encode("cp1252"), "prêt"),              # mislabelled: Windows-1252 is the last resort
    ("x-unknown-charset", "prêt".encode("utf-8"), "prêt"),   # unknown: UTF-8 is tried
    ("x-mac-cyrillic", "Привет".encode("mac_cyrillic"), "Привет"),
])
def test_charsets_fall_back_sensibly(declared, body, expected):
    raw = HEADERS + f"Content-Type: text/plain; charset={declared}\r\n\r\n".encode() + body
    assert parse_message(raw).text_plain == expected


def test_an_unknown_charset_is_recorded_as_a_defect():
    raw = HEADERS + b"Content-Type: text/plain; charset=bogus\r\n\r\nhi"
    assert "unknown_charset:bogus" in parse_message(raw).defects


def test_attachments_are_never_read_as_text():
    raw = (HEADERS + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
           b"visible\r\n--b\r\nContent-Type: text/plain; name=a.txt\r\nContent-Disposition: attachment\r\n\r\n"
           b"SECRET ATTACHMENT https://we.tl/t-AAAAAAAAAA\r\n--b\r\nContent-Type: application/pdf\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(b"%PDF") + b"--b--\r\n")
    parsed = parse_message(raw)
    assert parsed.text_plain == "visible"
    assert parsed.html == ""


def test_plain_text_is_capped_at_one_mib_with_a_warning(caplog):
    raw = HEADERS + b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + "€".encode() * 400_000
    with caplog.at_level(logging.WARNING):
        parsed = parse_message(raw)
    assert parsed.text_truncated is True
    assert len(parsed.text_plain.encode()) <= TEXT_CAP_BYTES
    assert "Text content truncated (exceeded 1MB limit)" in caplog.messages


def test_an_mbox_from_line_and_a_bom_do_not_hide_the_headers():
    assert parse_message(b"From someone Tue Jun  3 10:00:00 2025\nSubject: x\n\nbody").subject == "x"
    assert parse_message(b"\xef\xbb\xbfSubject: y\r\n\r\nbody").subject == "y"


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=2000))
def test_any_bytes_parse_without_raising(raw):
    assert isinstance(parse_message(raw), ParsedEmail)


@settings(max_examples=100, deadline=None)
@given(body=st.binary(max_size=500), cte=st.sampled_from([None, "base64", "quoted-printable", "x-weird", "8bit"]),
       charset=st.sampled_from([None, "utf-8", "iso-2022-jp", "utf-16", "nonsense", "shift_jis"]))
def test_any_fetched_part_parses_without_raising(body, cte, charset):
    part = TextPart("text/html", charset, cte, body, truncated=True)
    assert isinstance(parse_parts(HEADERS, [part]), ParsedEmail)


def test_not_bytes_at_all_gives_an_empty_email_with_a_defect():
    parsed = parse_message("a str")  # type: ignore[arg-type]
    assert parsed.subject == "" and parsed.defects


# --- parse_parts (IMAP partial fetch) ---------------------------------------------------------------------------

TEXT = "Prêt à télécharger: https://we.tl/t-AAAAAAAAAA 日本語 " * 40


@pytest.mark.parametrize("cte", ["base64", "quoted-printable", "8bit"])
@pytest.mark.parametrize("cut", [1, 2, 3, 5, 77, 101])
def test_a_part_cut_anywhere_decodes_to_a_prefix_of_the_text(cte, cut):
    # Given a text part whose encoded body was fetched with a byte limit that falls anywhere
    data = TEXT.encode("utf-8")
    encoded = {"base64": base64.encodebytes(data), "quoted-printable": quopri.encodestring(data), "8bit": data}[cte]
    body = encoded[: len(encoded) - cut]
    # When it is parsed
    parsed = parse_parts(HEADERS, [TextPart("text/plain", "utf-8", cte, body, truncated=True)])
    # Then what we get is a clean prefix of the text (no replacement character from a split character)
    assert "\ufffd" not in parsed.text_plain
    assert TEXT.startswith(parsed.text_plain)
    assert len(parsed.text_plain) > len(TEXT) // 2
    assert parsed.text_truncated is True


def test_parse_parts_gives_the_same_email_as_parse_message():
    html = '<p>Files: <a href="https://we.tl/t-AAAAAAAAAA">here</a></p>'
    raw = (HEADERS + b"Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\n\r\nFiles\r\n--b\r\n"
           b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.encodebytes(html.encode()) + b"--b--\r\n")
    whole = parse_message(raw)
    parts = parse_parts(HEADERS, [TextPart("text/plain", "utf-8", None, b"Files", False),
                                  TextPart("text/html", "utf-8", "base64", base64.encodebytes(html.encode()), False)],
                        body_head=whole.body_head)
    assert parts == whole


def test_the_html_cap_applies_to_fetched_parts_too(caplog):
    html = ("<p>" + "é" * 700_000 + "</p>").encode()
    with caplog.at_level(logging.WARNING):
        parsed = parse_parts(HEADERS, [TextPart("text/html", "utf-8", None, html, truncated=False)])
    assert parsed.html_truncated is True
    assert len(parsed.html.encode()) <= HTML_CAP_BYTES
    assert caplog.messages.count("HTML content truncated (exceeded 1MB limit)") == 1


@pytest.mark.parametrize("cte", [None, "base64", "quoted-printable"])
def test_the_encoded_fetch_limit_is_enough_to_fill_the_cap(cte):
    # 4-byte characters are the worst case for filling a UTF-8 cap from raw bytes.
    data = ("😀" * (HTML_CAP_BYTES // 2)).encode("utf-8")
    encoded = {None: data, "base64": base64.encodebytes(data), "quoted-printable": quopri.encodestring(data)}[cte]
    limit = encoded_fetch_limit(HTML_CAP_BYTES, cte)
    parsed = parse_parts(b"", [TextPart("text/html", "utf-8", cte, encoded[:limit], truncated=len(encoded) > limit)])
    assert parsed.html_truncated is True
    assert len(parsed.html.encode()) > HTML_CAP_BYTES - 4


@pytest.mark.parametrize("text", [b"<p>hi</p><!https://we.tl/t-AAAAAAAAAA>", b"ab", b"abcd", b"abcde"])
def test_a_base64_body_keeps_its_last_bytes_whatever_its_length(text):
    import base64

    raw = (b"Subject: b64\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(text) + b"\r\n")
    assert parse_message(raw).text_plain == text.decode()


@pytest.mark.parametrize("charset", ["bz2", "zlib_codec", "base64", "hex", "rot13", "uu", "punycode", "idna",
                                     "unicode_escape", "raw_unicode_escape"])
def test_a_python_codec_that_is_no_mail_charset_is_an_unknown_charset(charset):
    import bz2

    body = bz2.compress(b"A" * 1_000_000) if charset == "bz2" else b"plain text \\u0041 " + b"x" * 100
    raw = (f"Subject: codec\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset={charset}\r\n"
           "Content-Transfer-Encoding: 8bit\r\n\r\n").encode() + body
    parsed = parse_message(raw)
    assert len(parsed.text_plain) < 200_000   # never inflated, never run as a codec
    assert f"unknown_charset:{charset}" in parsed.defects
