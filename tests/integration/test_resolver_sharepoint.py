"""The SharePoint resolver against a fake share host over real HTTP: a sharing link's download=1 form asked with
HEAD, its redirect to download.aspx followed, the file read from headers; every status, failures, look-alike hosts,
and no link in logs."""

from __future__ import annotations

import logging
import time
from urllib.parse import parse_qsl, urlsplit

import pytest

from config import ProviderConfig, ProviderEndpoint
from email_processing.links import DeliveryLink
from email_processing.resolution import ResolutionStatus
from harness.file_hosts.share_host import Download, FakeShareHost, Page, Redirect
from services.resolvers import RESOLVERS, provider_http
from services.resolvers.base import ResolverError
from services.resolvers.sharepoint import RESOLVER

SHARE_PATH = "/:b:/g/personal/ana_contoso_com/EZx9kLmNoPqRsTuVwXyZ012Bq4"
LINK = f"https://contoso-my.sharepoint.com{SHARE_PATH}?e=Ab12Cd"


@pytest.fixture
def host():
    fake = FakeShareHost().start()
    yield fake
    fake.stop()


def _resolve(host: FakeShareHost, url: str = LINK):
    config = ProviderConfig("sharepoint", endpoint=ProviderEndpoint(host.url, allow_insecure=True),
                            timeout_seconds=5)
    return RESOLVER.resolve(DeliveryLink("sharepoint", url, url), provider_http(config, time.monotonic() + 10),
                            config)


def _chain(host: FakeShareHost, answer: Download | Page | Redirect) -> None:
    host.route(SHARE_PATH, Redirect(f"{host.url}/personal/ana_contoso_com/_layouts/15/download.aspx"
                                    "?UniqueId=7c1f&Translate=false&tempauth=TeMpAuTh&ApiVersion=2.0"))
    host.route("/personal/ana_contoso_com/_layouts/15/download.aspx", answer)


def test_the_sharepoint_resolver_is_registered():
    assert RESOLVERS["sharepoint"] is RESOLVER


def test_a_sharing_link_resolves_to_its_download_form_with_name_and_size(host):
    _chain(host, Download("Site survey 2026.pdf", 2_400_118))

    resolution = _resolve(host)

    assert resolution.status is ResolutionStatus.OK
    assert [(f.name, f.size_bytes) for f in resolution.files] == [("Site survey 2026.pdf", 2_400_118)]
    assert parse_qsl(urlsplit(resolution.direct_url or "").query) == [("e", "Ab12Cd"), ("download", "1")]
    assert [(r.method, r.path) for r in host.requests] == \
        [("HEAD", SHARE_PATH), ("HEAD", "/personal/ana_contoso_com/_layouts/15/download.aspx")]
    assert host.requests[0].query == {"e": "Ab12Cd", "download": "1"}


def test_a_folder_link_is_unsupported_without_a_request(host):
    folder = "https://contoso.sharepoint.com/:f:/s/Projects/EsCYEdnX-1lElxqXjdoSG2wB?e=kNrp5D"

    assert _resolve(host, folder).status is ResolutionStatus.UNSUPPORTED
    assert host.requests == []


def test_a_removed_file_is_not_found(host):
    assert _resolve(host).status is ResolutionStatus.NOT_FOUND


@pytest.mark.parametrize("sign_in", ["https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/authorize",
                                     "/_forms/default.aspx?ReturnUrl=%2f_layouts%2f15%2fdownload.aspx"])
def test_a_link_for_the_organisation_only_is_an_error_and_the_sign_in_is_not_fetched(host, sign_in):
    host.route(SHARE_PATH, Redirect(sign_in if sign_in.startswith("https") else f"{host.url}{sign_in}"))

    assert _resolve(host).status is ResolutionStatus.ERROR
    assert len(host.requests) == 1


def test_a_password_prompt_page_is_unsupported(host):
    _chain(host, Page(200, "<html><body>Enter the password to open this link</body></html>"))

    assert _resolve(host).status is ResolutionStatus.UNSUPPORTED


def test_an_access_denied_answer_is_an_error(host):
    _chain(host, Page(403))

    assert _resolve(host).status is ResolutionStatus.ERROR


def test_a_429_is_rate_limited_with_its_retry_after(host):
    _chain(host, Download("a.pdf", 5))
    host.fail_next(2, 429, retry_after=120)

    with pytest.raises(ResolverError) as caught:
        _resolve(host)

    assert caught.value.reason == "rate_limited" and caught.value.retry_after == 120


def test_a_5xx_is_a_resolver_error(host):
    _chain(host, Download("a.pdf", 5))
    host.fail_next(1, 503)

    with pytest.raises(ResolverError) as caught:
        _resolve(host)

    assert caught.value.reason == "http_503"


@pytest.mark.parametrize("target", ["https://contoso.sharepoint.com.evil.example/_layouts/15/download.aspx",
                                    "https://sharepoint.com-files.example/download.aspx",
                                    "http://contoso.sharepoint.com/_layouts/15/download.aspx"])
def test_a_redirect_to_a_look_alike_host_is_refused(host, target):
    host.route(SHARE_PATH, Redirect(target))

    with pytest.raises(ResolverError) as caught:
        _resolve(host)

    assert caught.value.reason == "refused_host"


def test_no_link_or_tempauth_reaches_a_log_line(host, caplog):
    caplog.set_level(logging.DEBUG)
    _chain(host, Download("a.pdf", 5))
    _resolve(host)
    host.route(SHARE_PATH, Redirect("https://evil.example/download.aspx?tempauth=TeMpAuTh"))
    with pytest.raises(ResolverError):
        _resolve(host)

    # urllib3 logs request lines at DEBUG: log_setup holds it at WARNING, so only the service's own loggers count
    text = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("urllib3"))
    assert "sharepoint" in text
    for secret in ("TeMpAuTh", "EZx9kLmNoPqRsTuVwXyZ012Bq4", "Ab12Cd", "ana_contoso_com"):
        assert secret not in text
