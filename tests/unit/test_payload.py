"""The webhook payload: exact field names, email id, preview, content cap, received_at."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

from email_processing.orchestrator import OffloadedLink
from email_processing.parsing import ParsedEmail
from email_processing.payload import (
    CONTENT_CAP_BYTES,
    body_preview,
    build_payload,
    email_id_for,
    event_id_for,
    format_received_at,
    received_at_from_date_header,
)


def parsed(**changes) -> ParsedEmail:
    base = dict(message_id="ABC@Example.com", subject="Files", date_header="Tue, 03 Jun 2025 10:00:00 +0200",
                from_header="Jane <Jane@example.com>", sender_email="jane@example.com", text_plain="Hello\n\n there",
                html="", html_truncated=False, text_truncated=False, defects=(), body_head=b"Hello")
    base.update(changes)
    return ParsedEmail(**base)


def test_the_payload_has_exactly_the_documented_fields():
    link = OffloadedLink("dropbox", "https://www.dropbox.com/s/a/x?dl=0", "https://www.dropbox.com/s/a/x?dl=1",
                         "https://r2.example/x", "x.mov")
    payload = build_payload(parsed(), [link], "2025-06-03T08:00:00Z")
    assert list(payload) == ["microsoft_graph_email_id", "subject", "receivedDateTime", "sender_address",
                             "sender_email", "bodyPreview", "email_content", "email_content_truncated",
                             "delivery_links", "delivery_links_truncated", "message_id", "received_at", "event_id"]
    assert payload["delivery_links"] == [{"provider": "dropbox", "raw_url": link.raw_url, "direct_url": link.direct_url,
                                          "r2_url": "https://r2.example/x", "original_filename": "x.mov",
                                          "resolution": "none", "expires_at": None, "size_bytes": None,
                                          "file_count": None, "files": []}]
    assert payload["receivedDateTime"] == "Tue, 03 Jun 2025 10:00:00 +0200"
    assert payload["sender_address"] == "Jane <Jane@example.com>"
    assert payload["event_id"] == "msg_" + payload["microsoft_graph_email_id"]
    assert payload["bodyPreview"] == "Hello there"


def test_the_email_id_is_the_sha256_of_the_lower_cased_message_id():
    expected = hashlib.sha256(b"abc@example.com").hexdigest()[:32]
    assert email_id_for(parsed()) == expected
    assert email_id_for(parsed(message_id="abc@EXAMPLE.com", subject="other")) == expected
    assert event_id_for(expected) == "msg_" + expected


def test_without_message_id_the_id_comes_from_date_from_subject_and_body_head():
    a = email_id_for(parsed(message_id=None))
    assert len(a) == 32
    assert a == email_id_for(parsed(message_id=None))
    assert a != email_id_for(parsed(message_id=None, body_head=b"other"))
    assert a != email_id_for(parsed(message_id=None, subject="other"))


def test_content_is_plain_then_html_text_and_capped_at_one_mib():
    payload = build_payload(parsed(html="<p>From HTML</p>"), [], "2025-06-03T08:00:00Z")
    assert payload["email_content"] == "Hello\n\n there\n\nFrom HTML"
    big = build_payload(parsed(text_plain="€" * 400_000), [], "x")
    assert big["email_content_truncated"] is True
    assert len(big["email_content"].encode()) <= CONTENT_CAP_BYTES
    assert build_payload(parsed(html_truncated=True), [], "x")["email_content_truncated"] is True
    assert build_payload(parsed(), [], "x")["email_content_truncated"] is False


def test_body_preview_is_200_characters_with_whitespace_collapsed():
    assert body_preview("a \n\t b" + " " * 5000 + "c" * 300) == "a b " + "c" * 196
    assert body_preview("") == ""


def test_received_at_formats():
    assert format_received_at(datetime(2025, 6, 3, 10, 0, 5, tzinfo=timezone(timedelta(hours=2)))) \
        == "2025-06-03T08:00:05Z"
    assert format_received_at(datetime(2025, 6, 3, 10, 0, 5)) == "2025-06-03T10:00:05Z"
    assert received_at_from_date_header("Tue, 03 Jun 2025 10:00:00 +0200") == "2025-06-03T08:00:00Z"
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    for bad in (None, "", "Tue, 06 Jun 2017 27:39:33 +0600", "garbage"):
        assert received_at_from_date_header(bad, now=now) == "2030-01-01T00:00:00Z"


def test_received_at_pads_a_year_below_1000_to_four_digits():
    # A Date header may name year 500; the documented format (and the payload schema) is YYYY-MM-DDTHH:MM:SSZ.
    assert format_received_at(datetime(500, 1, 2, 3, 4, 5, tzinfo=timezone.utc)) == "0500-01-02T03:04:05Z"
    assert received_at_from_date_header("Mon, 01 Jan 0500 00:00:00 +0000") == "0500-01-01T00:00:00Z"
