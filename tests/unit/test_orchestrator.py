"""process_email: sender filter, no-link skip, R2 offload only when sending, payload always."""

from __future__ import annotations

import pytest

from email_processing import orchestrator
from email_processing.links import DeliveryLink
from email_processing.orchestrator import (
    NullOffloader,
    OffloadedLink,
    ProcessResult,
    process_email,
    sender_allowed,
)
from email_processing.parsing import parse_message

WITH_LINK = (b"From: Jane <Jane@Example.com>\r\nSubject: files\r\nMessage-ID: <m1@example.com>\r\n\r\n"
             b"https://www.dropbox.com/scl/fo/aaaa/bbbb?rlkey=cccc&dl=0\r\n")
WITHOUT_LINK = b"From: jane@example.com\r\nSubject: hi\r\nMessage-ID: <m2@example.com>\r\n\r\nno links\r\n"


class RecordingOffloader:
    def __init__(self, result=None, error: Exception | None = None):
        self.calls: list[tuple[str, list[DeliveryLink]]] = []
        self.result, self.error = result, error

    def offload_links(self, email_id, links):
        self.calls.append((email_id, links))
        if self.error:
            raise self.error
        if self.result is not None:
            return self.result
        return [OffloadedLink(link.provider, link.raw_url, link.direct_url, "https://r2.example/" + link.provider,
                              "f.zip")
                for link in links]


def run(raw: bytes, offloader, allowlist=(), allow_without_links=False, **options) -> ProcessResult:
    return process_email(parse_message(raw), received_at="2025-06-03T08:00:00Z", sender_allowlist=allowlist,
                         allow_without_links=allow_without_links, offloader=offloader, **options)


@pytest.mark.parametrize("sender, allowlist, allowed", [
    ("jane@example.com", (), True),
    ("jane@example.com", ("jane@example.com",), True),
    ("jane@example.com", ("JANE@EXAMPLE.COM ",), True),
    ("jane@example.com", ("@example.com",), True),
    ("jane@sub.example.com", ("@example.com",), False),
    ("jane@example.com.evil", ("@example.com",), False),
    ("bob@example.org", ("jane@example.com", "@example.net"), False),
    ("", ("jane@example.com",), False),
])
def test_sender_allowlist(sender, allowlist, allowed):
    assert sender_allowed(sender, allowlist) is allowed


def test_an_allowed_email_with_links_is_sent_with_its_r2_copies():
    offloader = RecordingOffloader()
    result = run(WITH_LINK, offloader, allowlist=("@example.com",))
    assert (result.decision, result.reason) == ("send", None)
    assert len(offloader.calls) == 1 and offloader.calls[0][0] == result.email_id
    assert result.payload["delivery_links"][0]["r2_url"] == "https://r2.example/dropbox"
    assert result.payload["delivery_links"][0]["direct_url"] == "https://www.dropbox.com/scl/fo/aaaa/bbbb?rlkey=cccc&dl=1"
    assert result.event_id == "msg_" + result.email_id == result.payload["event_id"]


def test_a_sender_outside_the_allowlist_is_skipped_first_without_offload():
    offloader = RecordingOffloader()
    result = run(WITH_LINK, offloader, allowlist=("boss@example.org",), extract_when_skipped=True)
    assert (result.decision, result.reason) == ("skip", "sender_not_allowed")
    assert offloader.calls == []
    assert result.payload["delivery_links"][0]["r2_url"] is None  # payload still built (dry run prints it)


def test_a_sender_outside_the_allowlist_is_skipped_before_any_link_is_extracted(monkeypatch):
    # Given an email from a sender the poller does not act on
    extractions: list[str] = []

    def recording_extractor(text, hrefs, html_source=""):
        extractions.append(text)
        return [], ()

    monkeypatch.setattr(orchestrator, "extract_links", recording_extractor)
    offloader = RecordingOffloader()
    # When the poller's path decides it
    result = run(WITH_LINK, offloader, allowlist=("boss@example.org",))
    # Then it is skipped for its sender without its links being looked for
    assert (result.decision, result.reason) == ("skip", "sender_not_allowed")
    assert extractions == [] and offloader.calls == []
    assert result.links == () and result.payload["delivery_links"] == []
    assert "dropbox.com/scl/fo/aaaa" in result.payload["email_content"]  # the body is still there


def test_the_dry_run_still_extracts_the_links_of_an_email_skipped_for_its_sender():
    result = run(WITH_LINK, NullOffloader(), allowlist=("boss@example.org",), extract_when_skipped=True)
    assert result.reason == "sender_not_allowed"
    assert [link["provider"] for link in result.payload["delivery_links"]] == ["dropbox"]


def test_an_allowed_sender_s_links_are_extracted_whatever_extract_when_skipped_says():
    for extract_when_skipped in (False, True):
        result = run(WITH_LINK, NullOffloader(), allowlist=("@example.com",), extract_when_skipped=extract_when_skipped)
        assert (result.decision, len(result.links)) == ("send", 1)


def test_no_links_is_a_skip_unless_allowed():
    offloader = RecordingOffloader()
    assert (run(WITHOUT_LINK, offloader).decision, run(WITHOUT_LINK, offloader).reason) == ("skip", "no_delivery_links")
    result = run(WITHOUT_LINK, offloader, allow_without_links=True)
    assert (result.decision, result.reason, result.payload["delivery_links"]) == ("send", None, [])
    assert offloader.calls == []


def test_an_offloader_that_raises_never_stops_the_email():
    result = run(WITH_LINK, RecordingOffloader(error=RuntimeError("boom")))
    assert result.decision == "send"
    assert result.payload["delivery_links"][0]["r2_url"] is None


def test_an_offloader_returning_the_wrong_number_of_links_falls_back_to_source_urls():
    result = run(WITH_LINK, RecordingOffloader(result=[]))
    assert [link.r2_url for link in result.links] == [None]


def test_null_offloader_keeps_source_urls():
    result = run(WITH_LINK, NullOffloader())
    assert result.links == (OffloadedLink("dropbox", "https://www.dropbox.com/scl/fo/aaaa/bbbb?rlkey=cccc&dl=0",
                                          "https://www.dropbox.com/scl/fo/aaaa/bbbb?rlkey=cccc&dl=1", None, None),)
