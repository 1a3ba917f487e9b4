"""Property tests of the link extractor: a provider URL embedded anywhere is found once; nothing else is returned."""

from __future__ import annotations

from urllib.parse import urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st

from email_processing.html_text import html_to_text_and_hrefs
from email_processing.links import PROVIDERS, extract_delivery_links, host_matches

FAST = settings(max_examples=200, deadline=None)
TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=4, max_size=25)


@st.composite
def provider_urls(draw) -> str:
    token, other = draw(TOKEN), draw(TOKEN)
    return draw(st.sampled_from([
        f"https://www.dropbox.com/scl/fi/{token}/{other}.zip?rlkey={other}&dl=0",
        f"https://www.dropbox.com/scl/fo/{token}/{other}?rlkey={other}&st={token}&dl=0",
        f"https://www.dropbox.com/s/{token}/{other}.mov",
        f"https://www.dropbox.com/request/{token}",
        f"https://fromsmash.com/{token}-dt",
        f"https://www.swisstransfer.com/d/{token}",
        f"https://swisstransfer.infomaniak.com/dl/{token}",
        f"https://wetransfer.com/downloads/{token}/{other}/abcdef",
        f"https://we.tl/t-{token}",
    ]))


# Arbitrary prose: any characters, but the URL is separated from it by whitespace (as a person writes it).
PROSE = st.text(max_size=200)
SEPARATOR = st.sampled_from([" ", "\n", "\t", " (", "\n> "])
AFTER = st.sampled_from([" ", "\n", ". ", ", ", ") ", "! ", "\n\n"])


@FAST
@given(url=provider_urls(), before=PROSE, after=PROSE, left=SEPARATOR, right=AFTER)
def test_a_provider_url_in_arbitrary_text_is_found_exactly_once(url, before, after, left, right):
    text = f"{before}{left}{url}{right}{after}"
    found = [link.raw_url for link in extract_delivery_links(text, [])]
    assert found.count(url) == 1


@FAST
@given(url=provider_urls(), before=PROSE, after=PROSE, repeat=st.booleans())
def test_a_provider_url_in_arbitrary_html_is_found_exactly_once(url, before, after, repeat):
    from html import escape

    anchor = f'<a href="{escape(url)}">{escape(before)}</a>'
    anchors = anchor * (2 if repeat else 1)
    document = f"<html><body><p>{escape(before)}</p>{anchors}<p>{escape(after)}</p></body></html>"
    text, hrefs = html_to_text_and_hrefs(document)
    found = [link.raw_url for link in extract_delivery_links(text, hrefs)]
    assert found.count(url) == 1


@FAST
@given(text=st.text(max_size=400), hrefs=st.lists(st.text(max_size=120), max_size=5))
def test_nothing_outside_the_provider_domains_is_ever_returned_from_arbitrary_input(text, hrefs):
    for link in extract_delivery_links(text, hrefs):
        provider = next(p for p in PROVIDERS if p.name == link.provider)
        for url in (link.raw_url, link.direct_url):
            host = urlsplit(url).hostname or ""
            assert any(host_matches(host, rule.domain) for rule in provider.rules)


HOSTS = st.sampled_from(["dropbox.com.evil.example", "evil.example", "wetransfer.com.attacker.example",
                         "notfromsmash.com", "swisstransfer.co", "we.tl.example", "xn--dropbox-9ya.com"])


@FAST
@given(host=HOSTS, path=st.sampled_from(["/s/abc/x.zip", "/scl/fi/a/b.zip?rlkey=c", "/t-AAAA", "/d/0000",
                                         "/downloads/a/b/c", "/AAAAAAAAAA-dt"]),
       prose=PROSE)
def test_look_alike_hosts_with_provider_paths_are_never_returned(host, path, prose):
    url = f"https://{host}{path}"
    assert extract_delivery_links(f"{prose} {url} {prose}", [url]) == []
