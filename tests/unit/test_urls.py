"""``email_processing.urls.check_url``: the one check for every URL fetched or emitted, by the WHATWG reading."""

from __future__ import annotations

import pytest

from email_processing.urls import REFUSAL_REASONS, CheckedUrl, RefusedUrl, check_url, url_readings

WETRANSFER = ("wetransfer.com", "we.tl")


@pytest.mark.parametrize(("url", "href"), [
    ("https://we.tl/t-AAAA", "https://we.tl/t-AAAA"),
    ("HTTPS://WE.TL:443/t-AAAA", "https://we.tl/t-AAAA"),
    ("https://acme.wetransfer.com/downloads/a/../b?x=1#f", "https://acme.wetransfer.com/downloads/b?x=1#f"),
    ("https://we.tl./t-AAAA", "https://we.tl./t-AAAA"),
    ("https://we.tl/t-a\ud800b", "https://we.tl/t-a%EF%BF%BDb"),  # a lone surrogate reads as U+FFFD, as in JS
    ("https://we.tl/\nt-AAAA", "https://we.tl/t-AAAA"),
])
def test_an_allowed_url_comes_back_in_canonical_form(url, href):
    checked = check_url(url, WETRANSFER)
    assert isinstance(checked, CheckedUrl)
    assert checked.href == href


@pytest.mark.parametrize(("url", "reason", "host"), [
    ("http://we.tl/t-AAAA", "scheme", "we.tl"),
    ("ftp://we.tl/t-AAAA", "scheme", "we.tl"),
    ("https://u:p@we.tl/t-AAAA", "userinfo", "we.tl"),
    ("https://@we.tl/t-AAAA", "userinfo", "we.tl"),
    ("https://we.tl:8443/t-AAAA", "port", "we.tl"),
    ("https://we.tl:80/t-AAAA", "port", "we.tl"),
    ("https://attacker.example\\@we.tl/t-AAAA", "host", "attacker.example"),
    ("https://attacker.example\\.we.tl/t-AAAA", "host", "attacker.example"),
    ("https://we.tl\\@attacker.example/t-AAAA", "host", "we.tl"),      # Python reads attacker.example
    ("https:/\\we.tl/t-AAAA", "host", "we.tl"),                          # Python reads no host at all
    ("https://we%2Etl/t-AAAA", "host", "we.tl"),                         # Python reads "we%2etl"
    ("https://\uff37\uff25.\uff34\uff2c/t-AAAA", "host", "we.tl"),       # full-width letters
    ("https://attacker.example;.we.tl/t-AAAA", "host", "-"),             # not a host name; ";" not logged
    ("https://evil.example/we.tl/t-AAAA", "host", "evil.example"),
    ("https://127.0.0.1/t-AAAA", "host", "127.0.0.1"),
    ("https://[::1]/t-AAAA", "host", "[::1]"),
    ("https://attacker.example%2F.we.tl/t-AAAA", "unparsable", "attacker.example%2F.we.tl"),
    ("https://we.tl:99999/t-AAAA", "unparsable", "we.tl"),
    ("https://[::1/t-AAAA", "unparsable", "-"),
    ("not a url", "unparsable", "-"),
])
def test_a_refusal_names_its_reason_and_the_host_a_receiver_would_contact(url, reason, host):
    assert check_url(url, WETRANSFER) == RefusedUrl(reason, host)


def test_the_reasons_are_the_counter_labels_of_the_issue():
    assert REFUSAL_REASONS == ("scheme", "userinfo", "port", "host", "unparsable")


def test_a_refusal_never_carries_more_than_a_host():
    refused = check_url("https://attacker.example\\@we.tl/t-SECRET?token=SECRET", WETRANSFER)
    assert isinstance(refused, RefusedUrl) and "SECRET" not in repr(refused)
    # a host Python reads with spaces or separators in it is not written to a log as it is
    assert check_url("https://a b.we.tl/t-AAAA", WETRANSFER) == RefusedUrl("unparsable", "-")


def test_both_readings_are_offered_to_decide_what_a_url_claims_to_be():
    readings = url_readings("https://attacker.example\\@we.tl/t-AAAA")
    assert [(r.host, r.path) for r in readings] == [("attacker.example", "/@we.tl/t-AAAA"), ("we.tl", "/t-AAAA")]
    assert url_readings("https://[::1/x") == []
