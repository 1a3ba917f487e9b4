"""Every payload can be serialised as UTF-8 JSON: strings that decode to lone surrogates are cleaned (issue 15 §4).

A body in UTF-7, or in one of Python's escape codecs that a sender may name as its charset, decodes to lone
surrogates; ``json.dumps(..., ensure_ascii=False).encode("utf-8")`` then fails, and before the fix the outbox item
could never be sent. The emails here are real MIME messages, parsed by ``parse_message``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from email_processing import payload as payload_module
from email_processing.orchestrator import NullOffloader, OffloadedLink, process_email
from email_processing.parsing import parse_message
from email_processing.payload import build_payload, payload_bytes, received_at_from_date_header
from harness.contract import validate_webhook_body

HEADERS = (b"From: =?utf-7?Q?J+2D0-ane?= <jane@example.com>\r\n"
           b"To: files@example.com\r\n"
           b"Subject: =?utf-7?B?KzJEMC0=?= Fichiers\r\n"
           b"Message-ID: <surrogates@example.com>\r\n"
           b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
           b"MIME-Version: 1.0\r\n")

UTF7_BODY = HEADERS + (b"Content-Type: text/plain; charset=utf-7\r\n\r\n"
                       b"Hello +2D0- world, a pair +2D3eAA-: https://www.dropbox.com/s/abc/f+2D0-.pdf?dl=0\r\n")
LINK_BODY = HEADERS + (b"Content-Type: text/plain; charset=utf-7\r\n\r\n"
                       b"Files: https://wetransfer.com/downloads/abc+2D0-def/123\r\n")
# unicode-escape is no mail charset (it counts as unknown and the text is read as UTF-8): nothing to clean, still valid
ESCAPE_BODY = HEADERS + (b"Content-Type: text/plain; charset=unicode-escape\r\n\r\n"
                         b"Hello \\ud800 and \\udcff https://wetransfer.com/downloads/abc\\udc80def/123\r\n")
HTML_BODY = HEADERS + (b"Content-Type: text/html; charset=utf-7\r\n\r\n"
                       b"<p>Bonjour +2D0- <a href=\"https://www.dropbox.com/s/abc/g.pdf?dl=0\">ici</a></p>\r\n")


def payload_of(raw: bytes) -> dict[str, Any]:
    parsed = parse_message(raw)
    result = process_email(parsed, received_at=received_at_from_date_header(parsed.date_header),
                           sender_allowlist=(), allow_without_links=True, offloader=NullOffloader())
    return result.payload


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in strings_in(item)]
    if isinstance(value, list):
        return [text for item in value for text in strings_in(item)]
    return []


def has_surrogate(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


@pytest.mark.parametrize("raw", [UTF7_BODY, ESCAPE_BODY, HTML_BODY], ids=["utf-7", "unicode-escape", "utf-7-html"])
def test_an_email_whose_charset_decodes_to_lone_surrogates_gives_a_payload_that_serialises(raw: bytes):
    # Given an email whose parsed text really holds lone surrogates (else this test would prove nothing)
    parsed = parse_message(raw)
    assert has_surrogate(parsed.subject) and has_surrogate(parsed.from_header)
    # When its payload is built
    payload = payload_of(raw)
    # Then no string of it holds a surrogate, it encodes as UTF-8 JSON and keeps the contract
    assert not [text for text in strings_in(payload) if has_surrogate(text)]
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    validate_webhook_body(body)
    validate_webhook_body(payload_bytes(payload))


def test_lone_surrogates_become_replacement_characters_and_the_rest_is_kept():
    payload = payload_of(UTF7_BODY)
    assert payload["subject"] == "\ufffd Fichiers"
    assert payload["sender_address"] == "J\ufffdane <jane@example.com>"
    assert payload["sender_email"] == "jane@example.com"
    # A UTF-7 surrogate pair is one real character, not two replacements
    assert payload["email_content"].startswith("Hello \ufffd world, a pair \U0001f600: https://www.dropbox.com/")
    assert payload["bodyPreview"].startswith("Hello \ufffd world, a pair \U0001f600:")


def test_strings_inside_delivery_links_are_cleaned():
    payload = payload_of(LINK_BODY)
    [link] = payload["delivery_links"]
    # the lone surrogate became U+FFFD, as a JavaScript receiver reads it, then the canonical form encoded it
    assert link["raw_url"] == "https://wetransfer.com/downloads/abc%EF%BF%BDdef/123"
    assert not has_surrogate(link["direct_url"])
    # Links handed in by the offloader are cleaned as well
    parsed = parse_message(UTF7_BODY)
    offloaded = OffloadedLink("dropbox", "https://www.dropbox.com/s/a/x\ud83d?dl=0", "https://www.dropbox.com/s/a/x?dl=1",
                              "https://r2.example/x", "x\udc80.mov")
    entry = build_payload(parsed, [offloaded], "2024-01-01T10:00:00Z")["delivery_links"][0]
    assert (entry["raw_url"], entry["original_filename"]) == ("https://www.dropbox.com/s/a/x\ufffd?dl=0", "x\ufffd.mov")


def test_the_email_id_is_still_computed_from_the_email_as_parsed():
    # Cleaning is for the body only: the identity (and so the webhook-id) of an email does not change.
    parsed = parse_message(UTF7_BODY)
    payload = payload_of(UTF7_BODY)
    assert payload["event_id"] == "msg_" + payload["microsoft_graph_email_id"]
    assert payload["message_id"] == parsed.message_id


@pytest.mark.parametrize("text, cleaned", [
    ("plain é€😀", "plain é€😀"),
    ("a\ud83db", "a\ufffdb"),
    ("a\ud83d\ude00b", "a\U0001f600b"),
    ("\udc80\udcff", "\ufffd\ufffd"),
    ("x\ude00\ud83d", "x\ufffd\ufffd"),
    ("", ""),
], ids=["clean", "lone-high", "pair", "escapes", "reversed-pair", "empty"])
def test_replace_lone_surrogates(text: str, cleaned: str):
    assert payload_module.replace_lone_surrogates(text) == cleaned
    cleaned.encode("utf-8")
