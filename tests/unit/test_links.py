"""Delivery-link extraction: providers, host checks, unescaping, punctuation, unwrapping, Dropbox direct form."""

from __future__ import annotations

import pytest

from email_processing.links import (
    PROVIDERS,
    DeliveryLink,
    dropbox_direct_url,
    extract_delivery_links,
    host_matches,
    is_allowed_provider_url,
    is_dropbox_folder,
)

FI = "https://www.dropbox.com/scl/fi/aaaaaaaaaaaaaaaaaaaaa/a.zip?rlkey=bbbbbbbbbbbbbbbbbbbbbbbbb&st=cccccccc&dl=0"


@pytest.mark.parametrize("url, provider", [
    ("https://www.dropbox.com/s/aaaaaaaaaaaaaaa/x.mov?dl=0", "dropbox"),
    ("https://dropbox.com/s/aaaaaaaaaaaaaaa/x.mov", "dropbox"),
    ("https://dl.dropbox.com/s/aaaaaaaaaaaaaaa/x.mov?dl=0", "dropbox"),
    (FI, "dropbox"),
    ("https://www.dropbox.com/scl/fo/aaaaaaaaaaaaaaaaaaaaa/AAAA?rlkey=b&dl=0", "dropbox"),
    ("https://www.dropbox.com/request/AAAAAAAAAAAAAAAAAAAA", "dropbox"),
    ("https://fromsmash.com/AAAAAAAAAA-dt", "fromsmash"),
    ("https://acme.fromsmash.com/slug", "fromsmash"),
    ("https://www.swisstransfer.com/d/00000000-0000-4000-8000-000000000000", "swisstransfer"),
    ("https://swisstransfer.infomaniak.com/dl/01900000-0000-7000-8000-000000000000", "swisstransfer"),
    ("https://dl-abcdefgh.swisstransfer.com/api/download/0000/1111", "swisstransfer"),
    ("https://wetransfer.com/downloads/0000/1111/abcdef", "wetransfer"),
    ("https://acme.wetransfer.com/downloads/0000/abcdef", "wetransfer"),
    ("https://we.tl/t-AAAAAAAAAA", "wetransfer"),
    ("HTTPS://WE.TL/t-AAAAAAAAAA", "wetransfer"),
])
def test_it_recognises_each_provider_link(url, provider):
    assert is_allowed_provider_url(url) == provider


@pytest.mark.parametrize("url", [
    "https://dropbox.com.evil.example/s/aaaaaaaaaaaaaaa/x.zip",
    "https://evildropbox.com/s/aaaaaaaaaaaaaaa/x.zip",
    "https://www.dropbox.com@evil.example/s/aaaaaaaaaaaaaaa/x.zip",
    "https://www.dropbox.com/home",
    "https://www.dropbox.com/scl/fi/zzz/logo.png?rlkey=y&raw=1",  # a logo in the notification
    "https://www.dropbox.com/s/xxxxxxxxxxxxxxx/avatar.JPG?raw=1",
    "https://fromsmash.com/pricing",
    "https://fromsmash.com/",
    "https://eu.api.fromsmash.com/v1/transfer",
    "https://www.swisstransfer.com/d/0000?delete=ffff",
    "https://www.swisstransfer.com/en-gb/",
    "https://wetransfer.com/",
    "https://wetransfer.com/downloads",
    "https://we.tl/",
    "http://email.wetransfer.com/wf/click?upn=AAAA",
    "ftp://we.tl/t-AAAAAAAAAA",
    "https://[::1/s/x",
    "not a url",
])
def test_it_refuses_look_alikes_and_non_deliveries(url):
    assert is_allowed_provider_url(url) is None


def test_host_matching_is_exact_or_subdomain_never_substring():
    assert host_matches("dropbox.com", "dropbox.com")
    assert host_matches("www.Dropbox.com.", "dropbox.com")
    assert not host_matches("dropbox.com.evil.example", "dropbox.com")
    assert not host_matches("mydropbox.com", "dropbox.com")


def test_links_come_from_hrefs_first_then_text_each_once_in_order():
    text = "text first? https://fromsmash.com/BBBBBBBBBB-dt and again https://we.tl/t-AAAAAAAAAA"
    hrefs = ["https://we.tl/t-AAAAAAAAAA", "mailto:x@example.com", "/relative", "https://we.tl/t-AAAAAAAAAA"]
    links = extract_delivery_links(text, hrefs)
    assert [link.raw_url for link in links] == ["https://we.tl/t-AAAAAAAAAA", "https://fromsmash.com/BBBBBBBBBB-dt"]


def test_entities_are_unescaped_and_trailing_punctuation_is_not_part_of_the_url():
    text = f"(See {FI.replace('&', '&amp;')}). \"https://we.tl/t-AAAAAAAAAA\", <https://fromsmash.com/CCCCCCCCCC-dt>."
    assert [link.raw_url for link in extract_delivery_links(text, [])] == [
        FI, "https://we.tl/t-AAAAAAAAAA", "https://fromsmash.com/CCCCCCCCCC-dt"]


def test_a_closing_paren_inside_the_path_is_kept():
    url = "https://www.dropbox.com/s/aaaaaaaaaaaaaaa/take(1).mov"
    assert extract_delivery_links(f"file: {url}", [])[0].raw_url == url
    assert extract_delivery_links(f"(file: {url})", [])[0].raw_url == url


def test_outlook_safelinks_and_google_redirects_are_unwrapped():
    safe = ("https://eur02.safelinks.protection.outlook.com/?url=https%3A%2F%2Fwe.tl%2Ft-AAAAAAAAAA"
            "&data=05%7C02&reserved=0")
    google = "https://www.google.com/url?q=https://fromsmash.com/DDDDDDDDDD-dt&source=gmail&usg=AOv"
    links = extract_delivery_links(google, [safe])
    assert [(link.provider, link.raw_url) for link in links] == [
        ("wetransfer", "https://we.tl/t-AAAAAAAAAA"), ("fromsmash", "https://fromsmash.com/DDDDDDDDDD-dt")]


def test_a_redirect_to_a_foreign_host_is_not_a_link():
    assert extract_delivery_links("https://www.google.com/url?q=https://evil.example/s/x", []) == []


def test_dropbox_direct_form_sets_dl_1_keeps_rlkey_and_orders_parameters_stably():
    a = "https://www.dropbox.com/scl/fo/ddd/h?dl=0&rlkey=eee&st=fff"
    b = "https://dropbox.com/scl/fo/ddd/h?st=fff&rlkey=eee"
    assert dropbox_direct_url(a) == dropbox_direct_url(b) == "https://www.dropbox.com/scl/fo/ddd/h?rlkey=eee&st=fff&dl=1"
    assert dropbox_direct_url("https://www.dropbox.com/s/aaa/x.mov?raw=1&dl=0") == "https://www.dropbox.com/s/aaa/x.mov?dl=1"


def test_non_dropbox_direct_url_equals_raw_url():
    (link,) = extract_delivery_links("https://we.tl/t-AAAAAAAAAA", [])
    assert link == DeliveryLink("wetransfer", "https://we.tl/t-AAAAAAAAAA", "https://we.tl/t-AAAAAAAAAA")


def test_dropbox_folder_detection_for_the_adaptive_timeout():
    assert is_dropbox_folder("https://www.dropbox.com/scl/fo/aaa/bbb?rlkey=c&dl=1")
    assert not is_dropbox_folder(FI)
    assert not is_dropbox_folder("https://dropbox.com.evil.example/scl/fo/aaa")


def test_the_registry_names_the_ten_providers_the_first_four_in_their_old_order():
    assert [p.name for p in PROVIDERS] == ["dropbox", "fromsmash", "swisstransfer", "wetransfer", "gdrive", "onedrive",
                                           "sharepoint", "box", "pcloud", "mega"]


def test_hrefs_with_line_breaks_from_broken_wrapping_still_match():
    from email_processing.html_text import html_to_text_and_hrefs

    _, hrefs = html_to_text_and_hrefs('<a href="https://we.tl/\nt-AAAAAAAAAA">x</a>')
    assert [link.raw_url for link in extract_delivery_links("", hrefs)] == ["https://we.tl/t-AAAAAAAAAA"]
