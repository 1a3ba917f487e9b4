"""Sender authentication (issue 16): an allow-listed From address counts only when the receiving server's
Authentication-Results header (RFC 8601) vouches for its domain: ``dmarc=pass`` for that domain, or ``dkim=pass``
with a ``header.d`` aligned (relaxed, by the Public Suffix List) to it.

The header samples are shaped like what Gmail (``mx.google.com``), Microsoft 365 (no authserv-id) and Rspamd behind
Postfix/Dovecot (the MX host name) write.
"""

from __future__ import annotations

import pytest

from config import SenderAuth
from email_processing.orchestrator import NullOffloader, process_email
from email_processing.parsing import parse_message
from email_processing.sender import (
    authenticate_sender,
    domains_aligned,
    organizational_domain,
    parse_authentication_results,
)

GMAIL = ("mx.google.com;\r\n"
         "       dkim=pass header.i=@trusted.example header.s=s1 header.b=AbCdEf12;\r\n"
         "       spf=pass (google.com: domain of boss@trusted.example designates 192.0.2.10 as permitted sender)"
         " smtp.mailfrom=boss@trusted.example;\r\n"
         "       dmarc=pass (p=REJECT sp=REJECT dis=NONE) header.from=trusted.example")
MICROSOFT = ("spf=pass (sender IP is 192.0.2.10) smtp.mailfrom=trusted.example; dkim=pass (signature was verified)"
             " header.d=trusted.example;dmarc=pass action=none header.from=trusted.example;compauth=pass reason=100")
RSPAMD = ("mail.example.org;\r\n"
          "\tdkim=pass header.d=trusted.example header.s=dkim header.b=Zm9vYmFy;\r\n"
          "\tdmarc=pass (policy=reject) header.from=trusted.example;\r\n"
          '\tspf=pass (mail.example.org: domain of "boss@trusted.example" designates 192.0.2.10 as permitted sender)'
          " smtp.mailfrom=boss@trusted.example")
FAILED = ("mx.google.com; dkim=fail header.d=trusted.example; spf=fail smtp.mailfrom=trusted.example;"
          " dmarc=fail header.from=trusted.example")
LINK = b"https://www.dropbox.com/scl/fi/aaaa/f.zip?rlkey=bbbb&dl=0"


def email(*auth_results: str, sender: str = "Boss <boss@trusted.example>", extra: str = "") -> bytes:
    head = "".join(f"Authentication-Results: {value}\r\n" for value in auth_results)
    head += extra + f"From: {sender}\r\nSubject: files\r\nMessage-ID: <m1@example.com>\r\n\r\n"
    return head.encode("utf-8") + LINK + b"\r\n"


def decide(raw: bytes, auth: SenderAuth | None, allowlist: tuple[str, ...] = ("@trusted.example",)):
    return process_email(parse_message(raw), received_at="2025-06-03T08:00:00Z", sender_allowlist=allowlist,
                         allow_without_links=False, offloader=NullOffloader(), sender_auth=auth)


# --- RFC 8601 parsing ---------------------------------------------------------------------------------------------

def test_a_gmail_header_is_read_with_its_authserv_id_and_every_result():
    header = parse_authentication_results(GMAIL)
    assert header is not None and header.authserv_id == "mx.google.com"
    assert [(r.method, r.result) for r in header.results] == [("dkim", "pass"), ("spf", "pass"), ("dmarc", "pass")]
    assert header.results[0].get("header.i") == "@trusted.example"
    assert header.results[2].get("header.from") == "trusted.example"


def test_a_microsoft_365_header_has_no_authserv_id():
    header = parse_authentication_results(MICROSOFT)
    assert header is not None and header.authserv_id is None
    assert [(r.method, r.result) for r in header.results] == [
        ("spf", "pass"), ("dkim", "pass"), ("dmarc", "pass"), ("compauth", "pass")]
    assert header.results[1].get("header.d") == "trusted.example"


def test_an_rspamd_header_names_the_mx_and_keeps_quotes_inside_comments_out_of_the_values():
    header = parse_authentication_results(RSPAMD)
    assert header is not None and header.authserv_id == "mail.example.org"
    assert [(r.method, r.result) for r in header.results] == [("dkim", "pass"), ("dmarc", "pass"), ("spf", "pass")]
    assert header.results[2].get("smtp.mailfrom") == "boss@trusted.example"


def test_a_version_a_no_result_header_and_case_are_understood():
    header = parse_authentication_results("MX.Example.ORG 1; DKIM=Pass Header.D=Trusted.Example")
    assert header is not None and header.authserv_id == "mx.example.org"
    assert (header.results[0].method, header.results[0].result, header.results[0].get("header.d")) == \
        ("dkim", "pass", "trusted.example")
    none = parse_authentication_results("mx.example.org; none")
    assert none is not None and none.results == ()


def test_results_written_inside_comments_or_quoted_strings_are_not_results():
    header = parse_authentication_results(
        'mx.example.org; dkim=fail (dmarc=pass header.d=trusted.example; dkim=pass) header.d=evil.example;'
        ' spf=fail reason="dkim=pass header.d=trusted.example; dmarc=pass" smtp.mailfrom=evil.example')
    assert header is not None
    assert [(r.method, r.result) for r in header.results] == [("dkim", "fail"), ("spf", "fail")]
    assert header.results[0].get("header.d") == "evil.example"
    assert header.results[1].get("reason") == "dkim=pass header.d=trusted.example; dmarc=pass"


@pytest.mark.parametrize("value", ["", ";", "; dkim=pass header.d=trusted.example", "mx.example.org; (unclosed",
                                   'mx.example.org; dkim=pass reason="unclosed'])
def test_a_malformed_header_is_no_header(value):
    assert parse_authentication_results(value) is None


# --- which header is trusted --------------------------------------------------------------------------------------

def test_an_allow_listed_sender_passes_on_gmails_dmarc_pass():
    assert decide(email(GMAIL), SenderAuth("mx.google.com")).decision == "send"


def test_an_allow_listed_sender_passes_on_the_topmost_microsoft_365_header():
    assert decide(email(MICROSOFT), SenderAuth("topmost")).decision == "send"


def test_an_allow_listed_sender_passes_on_rspamds_header_named_by_the_mx():
    assert decide(email(RSPAMD), SenderAuth("mail.example.org")).decision == "send"


def test_without_any_authentication_results_an_allow_listed_sender_is_not_authenticated():
    result = decide(email(), SenderAuth("mx.google.com"))
    assert (result.decision, result.reason) == ("skip", "sender_not_authenticated")
    assert decide(email(), SenderAuth("topmost")).reason == "sender_not_authenticated"


def test_a_spoofed_header_below_the_receiving_servers_one_is_ignored():
    # The receiving server adds its header on top; whatever the sender wrote sits below it.
    forged = GMAIL
    assert decide(email(FAILED, forged), SenderAuth("mx.google.com")).reason == "sender_not_authenticated"
    assert decide(email(MICROSOFT.replace("pass", "fail"), MICROSOFT), SenderAuth("topmost")).reason \
        == "sender_not_authenticated"


def test_a_header_from_another_authserv_id_is_not_trusted():
    assert decide(email(RSPAMD), SenderAuth("mx.google.com")).reason == "sender_not_authenticated"
    # ... even above the trusted server's own (failing) header
    assert decide(email(RSPAMD, FAILED), SenderAuth("mx.google.com")).reason == "sender_not_authenticated"


def test_the_authserv_id_matches_whatever_its_case():
    assert decide(email(GMAIL.replace("mx.google.com;", "MX.Google.COM;", 1)), SenderAuth("mx.google.com")).decision \
        == "send"


def test_arc_authentication_results_are_not_authentication_results():
    raw = f"ARC-Authentication-Results: i=1; {GMAIL}\r\n".encode() + email(FAILED)
    assert decide(raw, SenderAuth("mx.google.com")).reason == "sender_not_authenticated"
    assert decide(raw, SenderAuth("topmost")).reason == "sender_not_authenticated"


# --- what counts as authenticated ---------------------------------------------------------------------------------

@pytest.mark.parametrize("results, sender, authenticated", [
    ("dmarc=pass header.from=trusted.example", "boss@trusted.example", True),
    ("dmarc=pass header.from=Trusted.Example.", "boss@trusted.example", True),
    # DMARC judged another From domain than the one this service read: no
    ("dmarc=pass header.from=evil.example", "boss@trusted.example", False),
    ("dmarc=pass", "boss@trusted.example", False),
    ("dmarc=fail header.from=trusted.example", "boss@trusted.example", False),
    ("dmarc=bestguesspass header.from=trusted.example", "boss@trusted.example", False),
    ("dkim=pass header.d=trusted.example", "boss@trusted.example", True),
    ("dkim=pass header.d=mail.trusted.example", "boss@trusted.example", True),
    ("dkim=pass header.d=trusted.example", "boss@eu.trusted.example", True),
    ("dkim=pass header.d=evil.example", "boss@trusted.example", False),
    ("dkim=pass header.d=trusted.example.evil.example", "boss@trusted.example", False),
    ("dkim=fail header.d=trusted.example", "boss@trusted.example", False),
    ("dkim=neutral header.d=trusted.example", "boss@trusted.example", False),
    # Gmail names the signer with header.i only: that is not a header.d
    ("dkim=pass header.i=@trusted.example", "boss@trusted.example", False),
    ("dkim=fail header.d=trusted.example; dkim=pass header.d=trusted.example", "boss@trusted.example", True),
    ("spf=pass smtp.mailfrom=trusted.example", "boss@trusted.example", False),
    ("dkim=pass header.d=mail.example.co.uk", "a@example.co.uk", True),
    ("dkim=pass header.d=co.uk", "a@example.co.uk", False),
    ("dkim=pass header.d=other.co.uk", "a@example.co.uk", False),
    ("dkim=pass header.d=example.co.uk", "a@mail.example.co.uk", True),
    # private suffixes of the list count too: two github.io sites are two organisations
    ("dkim=pass header.d=evil.github.io", "boss@victim.github.io", False),
    ("dkim=pass header.d=victim.github.io", "boss@victim.github.io", True),
])
def test_dmarc_pass_for_the_from_domain_or_an_aligned_dkim_pass_authenticates(results, sender, authenticated):
    verdict = authenticate_sender(sender, [f"mx.example.org; {results}"], SenderAuth("mx.example.org"))
    assert verdict.authenticated is authenticated, verdict.why


def test_the_verdict_says_why_a_sender_is_not_authenticated():
    auth = SenderAuth("mx.example.org")
    assert authenticate_sender("boss@trusted.example", [], auth).why == \
        "no Authentication-Results header from mx.example.org"
    assert authenticate_sender("boss@trusted.example", ["mx.example.org; dkim=pass header.d=evil.example"], auth).why \
        == "no dmarc=pass for trusted.example and no dkim=pass aligned with it"
    assert authenticate_sender("boss@trusted.example", ["mx.example.org; dmarc=pass header.from=trusted.example"],
                               auth).why == "dmarc=pass for trusted.example"
    assert authenticate_sender("b@trusted.example", [], SenderAuth("topmost")).why == "no Authentication-Results header"


def test_the_organizational_domain_comes_from_the_bundled_public_suffix_list():
    assert organizational_domain("mail.example.co.uk") == "example.co.uk"
    assert organizational_domain("co.uk") is None
    assert organizational_domain("a.b.victim.github.io") == "victim.github.io"
    assert organizational_domain("mail.trusted.example") == "trusted.example"  # an unknown TLD counts as a suffix
    assert organizational_domain("b\u00fccher.example") == "xn--bcher-kva.example"
    assert domains_aligned("MAIL.Example.co.uk.", "example.co.uk")
    assert not domains_aligned("co.uk", "co.uk.")  # a public suffix is nobody's organisation


# --- its place in the decision ------------------------------------------------------------------------------------

def test_authentication_is_asked_only_of_an_allow_listed_unambiguous_sender():
    auth = SenderAuth("mx.google.com")
    assert decide(email(GMAIL, sender="boss@trusted.example <attacker@evil.example>"), auth).reason \
        == "sender_ambiguous"
    assert decide(email(GMAIL, sender="stranger@elsewhere.example"), auth).reason == "sender_not_allowed"
    assert decide(email(FAILED), auth).reason == "sender_not_authenticated"
    assert decide(email(FAILED), None).decision == "send"  # no sender authentication configured
