"""Property (issue 16, defect 1): whatever URL an email carries, every link the extractor emits is, for a WHATWG
parser (``ada-url``, the standard browsers and Node implement), an https URL without userinfo, on the default port,
on a host its provider owns, written in that parser's canonical form. The URLs are provider links mutated where the
host is decided (backslashes, ``@``, percent-encoded and full-width delimiters, ports, schemes) and authorities
generated from the same pieces, put in an email as text, as an href and behind the two redirect wrappers."""

from __future__ import annotations

from html import escape
from urllib.parse import quote, urlsplit

from ada_url import URL
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from email_processing.html_text import html_to_text_and_hrefs
from email_processing.links import PROVIDERS, extract_delivery_links, host_matches

EXAMPLES = 200
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

DELIVERIES = [
    ("www.dropbox.com", "/scl/fi/aaaaaaaaaaaaaaaa/a.zip?rlkey=bbbbbbbbbbbb&dl=0"),
    ("dropbox.com", "/s/aaaaaaaaaaaaaaa/x.mov"),
    ("dl.dropbox.com", "/s/aaaaaaaaaaaaaaa/x.mov"),
    ("fromsmash.com", "/AAAAAAAAAA-dt"),
    ("acme.fromsmash.com", "/slug"),
    ("www.swisstransfer.com", "/d/00000000-0000-4000-8000-000000000000"),
    ("swisstransfer.infomaniak.com", "/dl/0190"),
    ("wetransfer.com", "/downloads/0000/1111/abcdef"),
    ("we.tl", "/t-AAAAAAAAAA"),
]
# What moves a host between parsers: delimiters raw, percent-encoded, full-width and as HTML entities, other hosts,
# ports, dots of other scripts, characters that are not in host names.
PIECES = [
    "\\", "%5C", "%5c", "&#92;", "&bsol;", "\uff3c", "/", "%2F", "\uff0f", "@", "%40", "\uff20", ":", "%3A",
    "?", "%3F", "#", "%23", ".", "%2E", "\u3002", "\uff0e", "\t", "\n", "%00", "%20", ";", "!", "[", "]", "_",
    "attacker.example", "127.0.0.1", "[::1]", "0x7f.1", "xn--", "user:pw@", ":8443", ":443", ":80", "HTTP",
    "https://", "\u00f6", "\u0131", "\u212a",
]
PIECE = st.sampled_from(PIECES) | st.text(alphabet="".join(p for p in PIECES if len(p) == 1), min_size=1, max_size=3)
# Mostly https, as the links that matter arrive; the other spellings a parser may or may not take for a scheme.
SCHEME = st.sampled_from(["https"] * 6 + ["HTTPS", "hTtPs", "http", "ftp", "https:", "https:/"])
# Around the provider's host: another host before or after it, joined by whatever may end a host for one parser.
OTHER_HOST = st.sampled_from(["attacker.example", "127.0.0.1", "evil", "[::1]", "we.tl", "www.dropbox.com"])
JOINER = st.sampled_from(["\\", "\\@", "%5C", "%5C@", "&#92;", "&#92;@", "@", ".", "/", "%2F", "%2F@", "#", "?",
                          "\uff3c", "\uff0f", "\uff20", "\u3002", "\uff0e", ";", ":443@", ":8443\\", "%40"])


@st.composite
def mutated_urls(draw) -> str:
    """A provider link with up to three pieces inserted into its authority (between ``://`` and the path)."""
    host, path = draw(st.sampled_from(DELIVERIES))
    authority = host
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        # the edges of the host most often: that is where one parser's host ends and another's goes on
        at = draw(st.sampled_from([0, len(authority)]) | st.integers(min_value=0, max_value=len(authority)))
        authority = authority[:at] + draw(PIECE) + authority[at:]
    return f"{draw(SCHEME)}://{authority}{path}"


@st.composite
def generated_urls(draw) -> str:
    """``scheme://[userinfo@][other host + joiner]host[joiner + other host][:port]<separator>path``."""
    host, path = draw(st.sampled_from(DELIVERIES))
    before = draw(st.sampled_from(["", ""]) | st.builds(lambda h, j: h + j, OTHER_HOST, JOINER))
    after = draw(st.sampled_from(["", ""]) | st.builds(lambda j, h: j + h, JOINER, OTHER_HOST))
    userinfo = draw(st.sampled_from(["", "", "", "u@", "u:p@", "@", ":@"]))
    port = draw(st.sampled_from(["", "", "", ":443", ":8443", ":0", ":", ":0443"]))
    separator = draw(st.sampled_from(["", "", "", "\\", "%5C", "/."]))
    return f"{draw(SCHEME)}://{userinfo}{before}{host}{after}{port}{separator}{path}"


def carried(url: str, shape: str) -> tuple[str, list[str], str]:
    """``(text, hrefs, html source)`` of an email carrying ``url`` in ``shape``."""
    if shape == "google":
        url = f"https://www.google.com/url?q={quote(url, safe=':/@')}&source=gmail"
    elif shape == "safelinks":
        url = f"https://eur02.safelinks.protection.outlook.com/?url={quote(url, safe='')}&reserved=0"
    if shape == "text":
        return f"Your files: {url} (expires in 7 days)", [], ""
    document = f'<html><body><p>Your files</p><a href="{escape(url)}">Download</a></body></html>'
    text, hrefs = html_to_text_and_hrefs(document)
    return text, hrefs, document


def assert_a_receiver_reads_an_allow_listed_https_link(provider_name: str, url: str) -> None:
    provider = next(p for p in PROVIDERS if p.name == provider_name)
    parsed = URL(url)  # raises ValueError when a WHATWG parser cannot read it
    assert parsed.href == url, "not the canonical serialisation"
    assert parsed.protocol == "https:"
    assert parsed.username == "" and parsed.password == ""
    assert parsed.port == ""
    assert any(host_matches(parsed.hostname, rule.domain) for rule in provider.rules), parsed.hostname
    # and Python's own reading of the emitted link names the same host
    assert (urlsplit(url).hostname or "") == parsed.hostname


@PROPERTY
@given(url=st.one_of(mutated_urls(), generated_urls()),
       shape=st.sampled_from(["text", "href", "google", "safelinks"]))
def test_every_emitted_link_has_an_allow_listed_host_for_a_whatwg_parser(url, shape):
    text, hrefs, source = carried(url, shape)
    for link in extract_delivery_links(text, hrefs, html_source=source):
        assert_a_receiver_reads_an_allow_listed_https_link(link.provider, link.raw_url)
        assert_a_receiver_reads_an_allow_listed_https_link(link.provider, link.direct_url)


@PROPERTY
@given(hosts=st.lists(st.sampled_from(DELIVERIES), min_size=1, max_size=3),
       shape=st.sampled_from(["text", "href", "google", "safelinks"]))
def test_unmutated_provider_links_are_still_emitted_in_every_shape(hosts, shape):
    # The property above holds trivially for an extractor that emits nothing: plain links must still come out.
    for host, path in hosts:
        text, hrefs, source = carried(f"https://{host}{path}", shape)
        found = [link.raw_url for link in extract_delivery_links(text, hrefs, html_source=source)]
        assert found == [f"https://{host}{path}"]
