"""Issue 16, defect 1: the provider allow-list is decided the way receivers read a URL (WHATWG), not by
``urllib.parse``. A backslash ends the host for browsers, Node and ``requests``, so
``https://attacker.example\\@wetransfer.com/...`` is a link to attacker.example, in whatever shape it arrives; only
https links without userinfo, on the default port, on a host the provider owns are emitted, in the WHATWG parser's
canonical serialisation."""

from __future__ import annotations

import json
import logging
from html import escape
from urllib.parse import quote

import pytest
from ada_url import URL

from email_processing.html_text import html_to_text_and_hrefs
from email_processing.links import DeliveryLink, extract_delivery_links, is_allowed_provider_url
from harness.contract import WebhookContractError, validate_webhook_body
from services.r2_offload import is_allow_listed
from tests.unit.test_r2_offload_unit import FakeSession, make_offloader, success_body
from tests.unit.test_webhook_payload_schema import example as schema_example

# One delivery URL per provider domain, as (provider, host, path and query).
DELIVERIES = [
    ("dropbox", "www.dropbox.com", "/scl/fi/aaaaaaaaaaaaaaaa/a.zip?rlkey=bbbbbbbbbbbb&dl=0"),
    ("dropbox", "dropbox.com", "/s/aaaaaaaaaaaaaaa/x.mov"),
    ("fromsmash", "fromsmash.com", "/AAAAAAAAAA-dt"),
    ("swisstransfer", "www.swisstransfer.com", "/d/00000000-0000-4000-8000-000000000000"),
    ("swisstransfer", "swisstransfer.infomaniak.com", "/dl/01900000-0000-7000-8000-000000000000"),
    ("wetransfer", "wetransfer.com", "/downloads/0000/1111/abcdef"),
    ("wetransfer", "we.tl", "/t-AAAAAAAAAA"),
]
IDS = [f"{provider}-{host}" for provider, host, _ in DELIVERIES]


def links_in_html(document: str) -> list[str]:
    text, hrefs = html_to_text_and_hrefs(document)
    return [url for link in extract_delivery_links(text, hrefs, html_source=document)
            for url in (link.raw_url, link.direct_url)]


def links_in_text(text: str) -> list[str]:
    return [url for link in extract_delivery_links(text, []) for url in (link.raw_url, link.direct_url)]


# --- the backslash: the host ends there for every receiver -------------------------------------------------------

@pytest.mark.parametrize(("provider", "host", "path"), DELIVERIES, ids=IDS)
def test_a_backslash_userinfo_trick_in_an_href_is_not_a_delivery_link(provider, host, path):
    url = f"https://attacker.example\\@{host}{path}"
    assert links_in_html(f'<p>Your files</p><a href="{escape(url)}">Download</a>') == []


@pytest.mark.parametrize(("provider", "host", "path"), DELIVERIES, ids=IDS)
@pytest.mark.parametrize("backslash", ["\\", "&#92;", "&#x5c;", "&bsol;", "&#0092;"])
def test_a_backslash_userinfo_trick_in_text_is_not_a_delivery_link(provider, host, path, backslash):
    # A raw backslash ends a URL in running text; an entity that decodes to one must not slip through either.
    assert links_in_text(f"Download: https://attacker.example{backslash}@{host}{path} today") == []


@pytest.mark.parametrize(("provider", "host", "path"), DELIVERIES, ids=IDS)
def test_a_backslash_userinfo_trick_behind_a_google_redirect_is_not_a_delivery_link(provider, host, path):
    target = f"https://attacker.example%5C@{host}{path.replace('&', '%26')}"
    wrapper = f"https://www.google.com/url?q={target}&source=gmail&usg=AOv"
    assert links_in_text(wrapper) == []
    assert links_in_html(f'<a href="{escape(wrapper)}">x</a>') == []


@pytest.mark.parametrize(("provider", "host", "path"), DELIVERIES, ids=IDS)
def test_a_backslash_userinfo_trick_behind_outlook_safelinks_is_not_a_delivery_link(provider, host, path):
    target = quote(f"https://attacker.example\\@{host}{path}", safe="")  # the backslash arrives as %5C
    assert "%5C" in target
    wrapper = f"https://eur02.safelinks.protection.outlook.com/?url={target}&data=05%7C02&reserved=0"
    assert links_in_html(f'<a href="{escape(wrapper)}">x</a>') == []
    assert links_in_text(wrapper) == []


@pytest.mark.parametrize(("provider", "host", "path"), DELIVERIES, ids=IDS)
@pytest.mark.parametrize("backslash", ["\\", "&#92;"])
def test_a_backslash_subdomain_trick_is_not_a_delivery_link(provider, host, path, backslash):
    # Python reads the host "attacker.example\.<provider host>", a subdomain of the provider; a receiver reads
    # attacker.example, with the provider's host in the path.
    url = f"https://attacker.example{backslash}.{host}{path}"
    href = url.replace("&", "&amp;").replace("&amp;#92;", "&#92;")
    assert links_in_html(f'<a href="{href}">x</a>') == []
    assert links_in_text(f"see {url} now") == []


@pytest.mark.parametrize(("provider", "host", "path"), DELIVERIES, ids=IDS)
def test_a_backslash_after_the_provider_host_is_refused_too(provider, host, path):
    # Python reads host attacker.example here, a browser the provider's host with "@attacker.example" in the path:
    # the two readings disagree, so the link is ambiguous and refused.
    url = f"https://{host}\\@attacker.example{path}"
    assert links_in_html(f'<a href="{escape(url)}">x</a>') == []


# --- scheme, userinfo, port --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("provider", "host", "path"), DELIVERIES, ids=IDS)
def test_http_links_are_not_emitted(provider, host, path):
    url = f"http://{host}{path}"
    assert links_in_text(f"see {url} now") == []
    assert links_in_html(f'<a href="{escape(url)}">x</a>') == []


@pytest.mark.parametrize(("provider", "host", "path"), DELIVERIES, ids=IDS)
@pytest.mark.parametrize("port", [":8443", ":80", ":444", ":0443x", ":99999"])
def test_links_with_an_explicit_port_other_than_443_are_not_emitted(provider, host, path, port):
    url = f"https://{host}{port}{path}"
    assert links_in_text(f"see {url} now") == []
    assert links_in_html(f'<a href="{escape(url)}">x</a>') == []


@pytest.mark.parametrize(("provider", "host", "path"), DELIVERIES, ids=IDS)
def test_an_explicit_port_443_is_accepted_and_dropped_from_the_emitted_link(provider, host, path):
    (link,) = extract_delivery_links(f"see https://{host}:443{path} now", [])
    assert link.provider == provider
    assert link.raw_url == f"https://{host}{path}"
    assert ":443" not in link.direct_url


@pytest.mark.parametrize(("provider", "host", "path"), DELIVERIES, ids=IDS)
@pytest.mark.parametrize("userinfo", ["user:secret@", "user@", ":@", "@", "attacker.example@",
                                      "attacker.example%5C@", "attacker.example%40x@"])
def test_links_with_userinfo_are_not_emitted(provider, host, path, userinfo):
    url = f"https://{userinfo}{host}{path}"
    assert links_in_text(f"see {url} now") == []
    assert links_in_html(f'<a href="{escape(url)}">x</a>') == []


# --- hosts that decode into something else ------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    # percent-encoded delimiters: Python sees a subdomain of the provider, WHATWG refuses the host
    "https://attacker.example%2F.dropbox.com/s/aaaaaaaaaaaaaaa/x.zip",
    "https://attacker.example%5C.we.tl/t-AAAAAAAAAA",
    "https://attacker.example%3F.wetransfer.com/downloads/0000/1111/abcdef",
    "https://attacker.example%40.fromsmash.com/AAAAAAAAAA-dt",
    "https://attacker.example%23.swisstransfer.com/d/0000",
    "https://attacker.example%00.we.tl/t-AAAAAAAAAA",
    # a percent-encoded or full-width spelling of the provider's host: Python and WHATWG read different hosts
    "https://dropbox%2Ecom/s/aaaaaaaaaaaaaaa/x.zip",
    "https://we%2etl/t-AAAAAAAAAA",
    "https://we\u3002tl/t-AAAAAAAAAA",
    "https://\uff37\uff25.\uff34\uff2c/t-AAAAAAAAAA",
    "https://attacker.example\uff0f.dropbox.com/s/aaaaaaaaaaaaaaa/x.zip",
    "https://attacker.example\uff3c@we.tl/t-AAAAAAAAAA",
    # look-alikes that IDNA keeps distinct, and hosts that are not names
    "https://xn--dropbox-9ya.com/s/aaaaaaaaaaaaaaa/x.zip",
    "https://dropb\u00f6x.com/s/aaaaaaaaaaaaaaa/x.zip",
    "https://attacker.example;.we.tl/t-AAAAAAAAAA",
    "https://attacker.example!.we.tl/t-AAAAAAAAAA",
    "https://[::1]/s/aaaaaaaaaaaaaaa/x.zip",
    "https://0x7f.1/s/aaaaaaaaaaaaaaa/x.zip",
])
def test_host_spelling_tricks_are_not_emitted(url):
    assert links_in_text(f"see {url} now") == []
    assert links_in_html(f'<a href="{escape(url)}">x</a>') == []
    assert is_allowed_provider_url(url) is None


# --- what is emitted is the WHATWG parser's canonical serialisation ----------------------------------------------

@pytest.mark.parametrize(("written", "canonical"), [
    ("HTTPS://WE.TL/t-AAAAAAAAAA", "https://we.tl/t-AAAAAAAAAA"),
    ("https://WeTransfer.com:443/downloads/0000/1111/abcdef", "https://wetransfer.com/downloads/0000/1111/abcdef"),
    ("https://wetransfer.com/downloads/x/../0000/1111/abcdef", "https://wetransfer.com/downloads/0000/1111/abcdef"),
    ("https://www.swisstransfer.com/d/0000/./1111", "https://www.swisstransfer.com/d/0000/1111"),
    ("https://www.dropbox.com/s/aaaaaaaaaaaaaaa/R\u00e9sum\u00e9 final.pdf",
     "https://www.dropbox.com/s/aaaaaaaaaaaaaaa/R%C3%A9sum%C3%A9%20final.pdf"),
    ("https://www.dropbox.com/s/aaaaaaaaaaaaaaa/x`{y}.pdf", "https://www.dropbox.com/s/aaaaaaaaaaaaaaa/x%60%7By%7D.pdf"),
])
def test_the_emitted_link_is_the_canonical_serialisation(written, canonical):
    (link,) = extract_delivery_links("", [written])
    assert link.raw_url == canonical
    assert URL(link.raw_url).href == link.raw_url
    assert URL(link.direct_url).href == link.direct_url


def test_the_dropbox_direct_form_is_built_from_the_canonical_link():
    (link,) = extract_delivery_links("", ["HTTPS://WWW.DROPBOX.COM:443/scl/fi/aaa/R\u00e9sum\u00e9.pdf?rlkey=b&dl=0"])
    assert link.raw_url == "https://www.dropbox.com/scl/fi/aaa/R%C3%A9sum%C3%A9.pdf?rlkey=b&dl=0"
    assert link.direct_url == "https://www.dropbox.com/scl/fi/aaa/R%C3%A9sum%C3%A9.pdf?rlkey=b&dl=1"


def test_a_plain_provider_link_is_emitted_unchanged():
    url = "https://www.dropbox.com/scl/fi/aaaaaaaaaaaaaaaa/a.zip?rlkey=bbbbbbbbbbbb&st=cccccccc&dl=0"
    (link,) = extract_delivery_links(f"see {url}", [])
    assert (link.raw_url, link.direct_url) == (url, url.replace("dl=0", "dl=1"))


# --- the R2 offload's own check is the same check ----------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "https://attacker.example\\@www.dropbox.com/s/x/a.pdf?dl=1",
    "https://attacker.example\\@dl.dropboxusercontent.com/s/x/a.pdf",
    "https://attacker.example\\.dropbox.com/s/x/a.pdf?dl=1",
    "https://attacker.example\\.dl.dropboxusercontent.com/s/x/a.pdf",
    "https://www.dropbox.com:8443/s/x/a.pdf?dl=1",
    "https://www.dropbox.com:80/s/x/a.pdf?dl=1",
    "https://attacker.example%2F.dropbox.com/s/x/a.pdf?dl=1",
    "https://@www.dropbox.com/s/x/a.pdf?dl=1",
    "https://dropbox%2Ecom/s/x/a.pdf?dl=1",
])
def test_the_r2_allow_list_refuses_what_a_receiver_would_fetch_elsewhere(url):
    assert not is_allow_listed("dropbox", url)


def test_the_r2_allow_list_accepts_the_default_port_written_out():
    assert is_allow_listed("dropbox", "https://www.dropbox.com:443/s/x/a.pdf?dl=1")


def test_the_r2_offload_refuses_a_backslash_host_naming_the_host_the_worker_would_fetch(caplog):
    url = "https://attacker.example\\.dropbox.com/s/SECRET/a.pdf?dl=1"
    session = FakeSession(body=success_body())
    with caplog.at_level(logging.INFO):
        [result] = make_offloader(session).offload_links("e1", [DeliveryLink("dropbox", url, url)])
    assert session.calls == [] and result.r2_url is None
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("SECURITY:")]
    assert "host=attacker.example " in line and "SECRET" not in line


def test_the_r2_offload_sends_the_worker_the_checked_canonical_url():
    url = "https://WWW.DROPBOX.COM:443/s/aaa/R\u00e9sum\u00e9.pdf?dl=1"
    session = FakeSession(body=success_body())
    [result] = make_offloader(session).offload_links("e1", [DeliveryLink("dropbox", url, url)])
    assert result.r2_url is not None
    [call] = session.calls
    assert json.loads(call["data"])["source_url"] == "https://www.dropbox.com/s/aaa/R%C3%A9sum%C3%A9.pdf?dl=1"


# --- the webhook contract says so ----------------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["raw_url", "direct_url"])
@pytest.mark.parametrize("url", [
    "https://attacker.example\\@we.tl/t-Zx81KdP2qa",
    "https://attacker.example\\.we.tl/t-Zx81KdP2qa",
    "http://we.tl/t-Zx81KdP2qa",
    "https://we.tl:8443/t-Zx81KdP2qa",
    "https://we.tl:443/t-Zx81KdP2qa",
    "https://u:p@we.tl/t-Zx81KdP2qa",
    "HTTPS://WE.TL/t-Zx81KdP2qa",
    "https://we.tl/t-Zx81 KdP2qa",
    "https://we.tl",
])
def test_the_schema_refuses_a_link_that_is_not_in_checked_canonical_form(field, url):
    body = schema_example()
    body["delivery_links"][1][field] = url
    with pytest.raises(WebhookContractError) as refused:
        validate_webhook_body(body)
    assert refused.value.path == f"/delivery_links/1/{field}"


def test_the_example_payload_carries_canonical_links():
    for link in schema_example()["delivery_links"]:
        assert URL(link["raw_url"]).href == link["raw_url"] and URL(link["direct_url"]).href == link["direct_url"]
