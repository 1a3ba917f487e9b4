"""Refused delivery links (issue 16, defect 1): the extractor returns them beside the links, ingest counts them as
``links_refused{reason}`` and logs one line per email with providers and hosts, never a URL."""

from __future__ import annotations

import logging
from html import escape

import pytest

from background.ingest import Ingest, IngestPolicy
from email_processing.html_text import html_to_text_and_hrefs
from email_processing.links import RefusedLink, extract_links
from email_processing.orchestrator import NullOffloader
from email_processing.parsing import parse_message
from routes.operator import render_metrics
from services.state_store_sqlite import SqliteStateStore

SECRET = "t-SECRETSECRET"


def extracted_from_html(*urls: str):
    document = "".join(f'<a href="{escape(url)}">x</a>' for url in urls)
    text, hrefs = html_to_text_and_hrefs(document)
    return extract_links(text, hrefs, html_source=document)


@pytest.mark.parametrize(("url", "refusal"), [
    (f"https://attacker.example\\@we.tl/{SECRET}", RefusedLink("host", "wetransfer", "attacker.example")),
    (f"https://attacker.example\\.we.tl/{SECRET}", RefusedLink("host", "wetransfer", "attacker.example")),
    (f"https://www.google.com/url?q=https://attacker.example%5C@we.tl/{SECRET}",
     RefusedLink("host", "wetransfer", "attacker.example")),
    (f"http://we.tl/{SECRET}", RefusedLink("scheme", "wetransfer", "we.tl")),
    (f"https://user:pw@we.tl/{SECRET}", RefusedLink("userinfo", "wetransfer", "we.tl")),
    (f"https://we.tl:8443/{SECRET}", RefusedLink("port", "wetransfer", "we.tl")),
    ("https://attacker.example%2F.dropbox.com/s/abc/x.zip", RefusedLink("unparsable", "dropbox",
                                                                         "attacker.example%2F.dropbox.com")),
])
def test_a_refused_candidate_is_returned_with_its_reason_provider_and_host(url, refusal):
    extracted = extracted_from_html(url)
    assert extracted.links == []
    assert extracted.refused == (refusal,)


def test_the_same_refused_link_in_href_text_and_source_is_one_refusal():
    url = f"http://we.tl/{SECRET}"
    document = f'<p>{url}</p><a href="{url}">{url}</a><!-- {url} -->'
    text, hrefs = html_to_text_and_hrefs(document)
    assert extract_links(text + "\n" + url, hrefs, html_source=document).refused == (
        RefusedLink("scheme", "wetransfer", "we.tl"),)


def test_urls_that_are_no_provider_delivery_are_not_refusals():
    # Only what claims to be a delivery link is counted: other hosts, provider pages, logos are simply not links.
    extracted = extracted_from_html("http://example.com/x", "https://wetransfer.com/", "http://wetransfer.com/about",
                                    "http://www.dropbox.com/s/x/logo.png?raw=1", "http://email.wetransfer.com/wf/o")
    assert (extracted.links, extracted.refused, extracted.unchecked) == ([], (), 0)


def test_a_good_link_beside_a_refused_one_is_still_emitted():
    extracted = extracted_from_html(f"http://we.tl/{SECRET}", "https://we.tl/t-AAAAAAAAAA")
    assert [link.raw_url for link in extracted.links] == ["https://we.tl/t-AAAAAAAAAA"]
    assert [r.reason for r in extracted.refused] == ["scheme"]


# --- counted and logged by ingest -----------------------------------------------------------------------------

EMAIL = (b"From: WeTransfer <noreply@wetransfer.com>\r\nTo: inbox@example.com\r\nSubject: Files\r\n"
         b"Date: Tue, 03 Jun 2025 10:00:00 +0200\r\nMessage-ID: <refused-1@example.com>\r\n"
         b"Content-Type: text/html; charset=utf-8\r\n\r\n"
         b'<a href="https://attacker.example\\@we.tl/' + SECRET.encode() + b'">Get</a>'
         b'<a href="https://attacker.example\\@wetransfer.com/downloads/SECRET/SECRET">Get</a>'
         b'<a href="http://we.tl/' + SECRET.encode() + b'">Get</a>'
         b'<a href="https://we.tl/t-AAAAAAAAAA">Get</a>\r\n')


@pytest.fixture
def store(tmp_path):
    state = SqliteStateStore(str(tmp_path / "state.sqlite3"), retention_seconds=3600)
    yield state
    state.close()


def test_ingest_counts_refused_links_by_reason_and_logs_one_line_without_urls(store, caplog):
    # Given an email with three refused links and a good one
    ingest = Ingest(store, IngestPolicy.saved_email((), False), ("default",), offloader_factory=NullOffloader)
    # When it is ingested
    with caplog.at_level(logging.INFO):
        ingested = ingest.ingest(parse_message(EMAIL), received_at="2025-06-03T08:00:00Z")
    # Then the good link is sent, the refusals are counted by reason and mailbox
    assert ingested.outcome == "queued"
    assert [link["raw_url"] for link in ingested.items[0].payload["delivery_links"]] == ["https://we.tl/t-AAAAAAAAAA"]
    refused = {tuple(sorted(labels.items())): value for name, labels, value in store.counter_series()
               if name == "links_refused"}
    assert refused == {(("mailbox", "default"), ("reason", "host")): 2,
                       (("mailbox", "default"), ("reason", "scheme")): 1}
    # and one SECURITY line names providers and hosts, never a link
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("SECURITY: refused")]
    assert lines == ["SECURITY: refused 3 delivery link(s) mailbox=default uid=0 event_id="
                     f"{ingested.result.event_id}: wetransfer host=attacker.example reason=host; "
                     "wetransfer host=attacker.example reason=host; wetransfer host=we.tl reason=scheme"]
    assert not any("SECRET" in r.getMessage() for r in caplog.records)


def test_an_email_without_refusals_counts_and_logs_nothing_about_them(store, caplog):
    ingest = Ingest(store, IngestPolicy.saved_email((), False), ("default",), offloader_factory=NullOffloader)
    clean = EMAIL.split(b"\r\n\r\n")[0] + b'\r\n\r\n<a href="https://we.tl/t-AAAAAAAAAA">Get</a>\r\n'
    with caplog.at_level(logging.INFO):
        ingest.ingest(parse_message(clean), received_at="2025-06-03T08:00:00Z")
    assert [name for name, _, _ in store.counter_series() if name == "links_refused"] == []
    assert not [r for r in caplog.records if r.getMessage().startswith("SECURITY:")]


def test_metrics_show_links_refused_total_by_reason():
    body, _ = render_metrics({"counter_series": [
        {"name": "links_refused", "labels": {"mailbox": "default", "reason": "host"}, "value": 2},
        {"name": "links_refused", "labels": {"mailbox": "default", "reason": "port"}, "value": 1}]})
    text = body.decode()
    assert "# TYPE render_signal_links_refused_total counter" in text
    assert 'render_signal_links_refused_total{mailbox="default",reason="host"} 2.0' in text
    assert 'render_signal_links_refused_total{mailbox="default",reason="port"} 1.0' in text


def test_api_status_lists_links_refused_by_reason_from_the_start():
    from routes.status_view import _counters_section

    assert _counters_section({})["links_refused"] == {}
    assert _counters_section({"links_refused": {"host": 2}})["links_refused"] == {"host": 2}
