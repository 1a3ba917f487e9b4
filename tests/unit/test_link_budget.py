"""The work link extraction does per email is bounded whatever the email holds (issue 16 defect 2).

A candidate naming no provider domain and no redirect wrapper is dropped without a parse; each distinct candidate is
checked once; at most MAX_CANDIDATES_CHECKED are checked, the rest counted as unchecked, and the payload then says
``delivery_links_truncated``. The pre-filter never drops a link the full check would emit (property test).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from email_processing import links as links_module
from email_processing.links import MAX_CANDIDATES_CHECKED, extract_links
from email_processing.orchestrator import NullOffloader, process_email
from email_processing.parsing import parse_message
from tests.unit.test_links_whatwg_property import generated_urls, mutated_urls

LINK = "https://we.tl/t-REALREALRE"


@pytest.fixture
def full_checks(monkeypatch) -> list[str]:
    """Every URL that reaches the full check (``_link_for``), in order."""
    calls: list[str] = []
    real = links_module._link_for

    def counting(url: str):
        calls.append(url)
        return real(url)

    monkeypatch.setattr(links_module, "_link_for", counting)
    return calls


def test_candidates_naming_no_provider_are_dropped_without_a_full_check(full_checks):
    text = " ".join(f"https://news{n}.example/article/{n}" for n in range(5_000)) + f" {LINK}"

    extracted = extract_links(text, [])

    assert [link.raw_url for link in extracted.links] == [LINK]
    assert full_checks == [LINK]


def test_a_redirect_wrapper_still_reaches_the_full_check(full_checks):
    wrapped = "https://www.google.com/url?q=https%3A%2F%2Fwe.tl%2Ft-WRAPPEDWRA&sa=D"

    extracted = extract_links(f"see {wrapped} now", [])

    assert [link.raw_url for link in extracted.links] == ["https://we.tl/t-WRAPPEDWRA"]


def test_the_same_candidate_repeated_is_checked_once(full_checks):
    extracted = extract_links(f"{LINK} " * 10_000, [LINK] * 100)

    assert [link.raw_url for link in extracted.links] == [LINK]
    assert full_checks == [LINK]


def test_refused_candidates_below_the_budget_do_not_hide_the_link_after_them():
    refused = " ".join(f"https://u{n}@we.tl/t-{n:010d}" for n in range(MAX_CANDIDATES_CHECKED - 1))

    extracted = extract_links(f"{refused} {LINK}", [])

    assert [link.raw_url for link in extracted.links] == [LINK]
    assert extracted.unchecked == 0
    assert len(extracted.refused) == MAX_CANDIDATES_CHECKED - 1


def test_past_the_budget_the_rest_is_counted_not_checked(full_checks):
    refused = [f"https://u{n}@we.tl/t-{n:010d}" for n in range(MAX_CANDIDATES_CHECKED + 500)]

    extracted = extract_links(" ".join(refused + [LINK]), [])

    assert extracted.links == []
    assert len(full_checks) == MAX_CANDIDATES_CHECKED
    assert extracted.unchecked == 501  # the 500 refused candidates and the link past the budget


def test_an_email_past_the_budget_says_its_links_are_truncated_and_is_logged_once(caplog):
    body = " ".join(f"https://we.tl/t-{n:010d}" for n in range(MAX_CANDIDATES_CHECKED + 10)).encode()
    raw = (b"From: a@example.com\r\nSubject: many\r\nMessage-ID: <many@example.com>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/plain\r\n\r\n" + body + b"\r\n")

    with caplog.at_level("WARNING"):
        result = process_email(parse_message(raw), received_at="2025-06-03T08:00:00Z", sender_allowlist=(),
                               allow_without_links=False, offloader=NullOffloader())

    assert result.payload["delivery_links_truncated"] is True
    assert len(result.links) == 50
    assert result.links_truncated == (MAX_CANDIDATES_CHECKED - 50) + 10
    lines = [r.getMessage() for r in caplog.records if "left unchecked" in r.getMessage()]
    assert len(lines) == 1 and "unchecked=10" in lines[0] and "we.tl" not in lines[0]


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(url=st.one_of(mutated_urls(), generated_urls()))
def test_the_pre_filter_never_drops_a_candidate_the_full_check_would_emit(url):
    link, _ = links_module._classify(url)
    if isinstance(link, links_module.DeliveryLink):
        assert links_module._may_deliver(url), url
