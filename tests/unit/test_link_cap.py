"""The cap on delivery links per email (issue 16 defect 7): ``MAX_LINKS_PER_EMAIL`` (default 50) links are kept, the
first in document order, before the R2 offload; the payload says ``delivery_links_truncated``, the result counts
what was dropped, one log line gives the counts (never a URL: links are capabilities)."""

from __future__ import annotations

import logging

import pytest

from background.ingest import Ingest, IngestPolicy
from config import DEFAULT_MAX_LINKS_PER_EMAIL, MailboxConfig, PasswordCredentials, ServiceConfig
from email_processing.links import DeliveryLink
from email_processing.orchestrator import NullOffloader, OffloadedLink, process_email
from email_processing.parsing import parse_message
from harness.contract import validate_webhook_body
from services.state_store_sqlite import SqliteStateStore
from settings import ConfigError, Settings


def link(index: int) -> str:
    return f"https://we.tl/t-{index:010d}"


def email_with_links(count: int) -> bytes:
    lines = "\r\n".join(f"part {index}: {link(index)}" for index in range(count))
    return (b"From: Jane <jane@example.com>\r\nSubject: many files\r\nMessage-ID: <many@example.com>\r\n"
            b"Content-Type: text/plain\r\n\r\n" + lines.encode() + b"\r\n")


class CountingOffloader:
    def __init__(self) -> None:
        self.offered: list[int] = []

    def offload_links(self, email_id: str, links: list[DeliveryLink]) -> list[OffloadedLink]:
        self.offered.append(len(links))
        return [OffloadedLink(item.provider, item.raw_url, item.direct_url) for item in links]


def run(raw: bytes, offloader=None, **options):
    return process_email(parse_message(raw), received_at="2025-06-03T08:00:00Z", sender_allowlist=(),
                         allow_without_links=False, offloader=offloader or NullOffloader(), **options)


def test_the_default_cap_is_50():
    assert DEFAULT_MAX_LINKS_PER_EMAIL == 50
    assert Settings().max_links_per_email == 50
    assert MailboxConfig(id="default", server="s", user="u", credentials=PasswordCredentials("p")
                         ).max_links_per_email == 50


def test_the_first_links_in_document_order_are_kept_and_the_payload_says_it_was_truncated():
    # Given an email with 60 distinct links
    offloader = CountingOffloader()
    # When it is decided under the default cap
    result = run(email_with_links(60), offloader)
    # Then the first 50 are sent, the payload says more were found, the result counts the 10 dropped
    assert [item.raw_url for item in result.links] == [link(index) for index in range(50)]
    assert result.payload["delivery_links_truncated"] is True
    assert [entry["raw_url"] for entry in result.payload["delivery_links"]] == [link(index) for index in range(50)]
    assert result.links_truncated == 10
    validate_webhook_body(result.payload)


def test_the_cap_comes_before_the_r2_offload():
    offloader = CountingOffloader()
    result = run(email_with_links(10_000), offloader, max_links=3)
    assert offloader.offered == [3]  # one Worker call per kept link, not 10,000
    assert (len(result.links), result.links_truncated) == (3, 9_997)


@pytest.mark.parametrize("count", [0, 1, 50])
def test_an_email_within_the_cap_is_not_truncated(count: int):
    result = process_email(parse_message(email_with_links(count)), received_at="2025-06-03T08:00:00Z",
                           sender_allowlist=(), allow_without_links=True, offloader=NullOffloader())
    assert len(result.links) == count
    assert (result.payload["delivery_links_truncated"], result.links_truncated) == (False, 0)


def test_a_capped_email_is_logged_once_with_its_counts_and_no_url(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG, logger="email_processing.orchestrator")
    result = run(email_with_links(12), max_links=5)
    capped = [record for record in caplog.records if "capped" in record.getMessage()]
    assert len(capped) == 1
    message = capped[0].getMessage()
    assert capped[0].levelno == logging.WARNING
    assert "kept=5" in message and "found=12" in message and result.email_id in message
    assert all("we.tl" not in record.getMessage() and "http" not in record.getMessage() for record in caplog.records)


def test_an_uncapped_email_logs_no_cap_line(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG, logger="email_processing.orchestrator")
    run(email_with_links(5), max_links=5)
    assert not [record for record in caplog.records if "capped" in record.getMessage()]


def test_the_dry_run_payload_of_a_skipped_email_is_capped_too():
    result = process_email(parse_message(email_with_links(8)), received_at="2025-06-03T08:00:00Z",
                           sender_allowlist=("x@y.example",), allow_without_links=False, offloader=NullOffloader(),
                           extract_when_skipped=True, max_links=2)
    assert result.reason == "sender_not_allowed"
    assert (len(result.payload["delivery_links"]), result.payload["delivery_links_truncated"]) == (2, True)


# --- the setting -----------------------------------------------------------------------------------------------

MAILBOX_ENV = {"IMAP_SERVER": "imap.example", "EMAIL_ADDRESS": "me@example.com", "EMAIL_PASSWORD": "pw",
               "WEBHOOK_URL": "https://hook.example/x"}


def test_max_links_per_email_is_read_once_and_carried_on_the_mailbox():
    settings = Settings.from_env({**MAILBOX_ENV, "MAX_LINKS_PER_EMAIL": "7"})
    assert settings.max_links_per_email == 7
    [mailbox] = ServiceConfig.from_settings(settings).mailboxes
    assert mailbox.max_links_per_email == 7


@pytest.mark.parametrize("raw", ["0", "-1", "many", "1.5", "100001"])
def test_a_bad_max_links_per_email_fails_at_start_up(raw: str):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"MAX_LINKS_PER_EMAIL": raw})
    assert caught.value.variable == "MAX_LINKS_PER_EMAIL"


def test_the_poller_s_ingest_caps_links_at_its_mailbox_s_setting(tmp_path):
    # Given the ingest of a mailbox configured with MAX_LINKS_PER_EMAIL=4
    mailbox = MailboxConfig(id="default", server="s", user="u", credentials=PasswordCredentials("p"),
                            max_links_per_email=4)
    store = SqliteStateStore(str(tmp_path / "state.sqlite3"), retention_seconds=3600)
    offloader = CountingOffloader()
    ingest = Ingest(store, IngestPolicy.for_mailbox(mailbox), ("default",), offloader_factory=lambda: offloader)
    # When an email with 9 links is ingested
    ingested = ingest.ingest(parse_message(email_with_links(9)), received_at="2025-06-03T08:00:00Z")
    # Then 4 are offloaded and queued, and the queued body says the list was cut
    assert ingested.outcome == "queued" and offloader.offered == [4]
    assert ingested.result is not None and ingested.result.links_truncated == 5
    (item,) = ingested.items
    assert len(item.payload["delivery_links"]) == 4 and item.payload["delivery_links_truncated"] is True
