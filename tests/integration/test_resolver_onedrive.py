"""The OneDrive resolver against a fake share host over real HTTP: 1drv.ms short links followed hop by hop to
onedrive.live.com, the page turned into its /download form (never fetched as a page), the download's headers read;
every status, failures, look-alike hosts at every hop, and no token in logs."""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit

import pytest

from config import ProviderConfig, ProviderEndpoint
from email_processing.links import DeliveryLink
from email_processing.resolution import ResolutionStatus
from harness.file_hosts.share_host import Download, FakeShareHost, Page, Redirect
from services.resolvers import RESOLVERS, provider_http
from services.resolvers.base import ResolverError
from services.resolvers.onedrive import RESOLVER

SHORT = "https://1drv.ms/u/s!AkLmNoPqRsTuVwXyZ0123"
QUERY = "resid=4F2A9C1B7D3E!1234&authkey=!AbCdEfGh&ithint=file%2cpdf"


@pytest.fixture
def host():
    fake = FakeShareHost().start()
    yield fake
    fake.stop()


def _resolve(host: FakeShareHost, url: str = SHORT):
    config = ProviderConfig("onedrive", endpoint=ProviderEndpoint(host.url, allow_insecure=True), timeout_seconds=5)
    return RESOLVER.resolve(DeliveryLink("onedrive", url, url), provider_http(config, time.monotonic() + 10), config)


def _chain(host: FakeShareHost, download: Download | Page | Redirect) -> None:
    host.route("/u/s!AkLmNoPqRsTuVwXyZ0123", Redirect(f"{host.url}/redir?{QUERY}", 301))
    host.route("/download", Redirect(f"{host.url}/y4mFiLeS/Plan.pdf?download&psid=1"))
    host.route("/y4mFiLeS/Plan.pdf", download)


def test_the_onedrive_resolver_is_registered():
    assert RESOLVERS["onedrive"] is RESOLVER


def test_a_short_link_is_followed_to_its_download_form_and_the_file_read_from_headers(host):
    _chain(host, Download("Plan.pdf", 734003))

    resolution = _resolve(host)

    assert resolution.status is ResolutionStatus.OK
    assert [(f.name, f.size_bytes) for f in resolution.files] == [("Plan.pdf", 734003)]
    assert resolution.direct_url == f"{host.url}/download?{QUERY}"
    # the /redir page is turned into /download, never fetched; only HEADs, no body downloaded
    assert [(r.method, r.path) for r in host.requests] == \
        [("HEAD", "/u/s!AkLmNoPqRsTuVwXyZ0123"), ("HEAD", "/download"), ("HEAD", "/y4mFiLeS/Plan.pdf")]
    assert host.requests[1].query["resid"] == "4F2A9C1B7D3E!1234"


def test_a_long_onedrive_link_goes_straight_to_its_download_form(host):
    _chain(host, Download("Plan.pdf", 5))

    resolution = _resolve(host, "https://onedrive.live.com/?id=4F2A9C1B7D3E%211234&cid=4F2A9C1B7D3E&authkey=!Ab")

    assert resolution.status is ResolutionStatus.OK
    assert urlsplit(resolution.direct_url or "").query == "resid=4F2A9C1B7D3E%211234&cid=4F2A9C1B7D3E&authkey=!Ab"


def test_a_folder_short_link_is_unsupported_without_a_request(host):
    assert _resolve(host, "https://1drv.ms/f/s!AkLmNoPqRsTuVwXyZ0123").status is ResolutionStatus.UNSUPPORTED
    assert host.requests == []


def test_an_unknown_short_link_is_not_found(host):
    assert _resolve(host).status is ResolutionStatus.NOT_FOUND


def test_a_removed_file_is_not_found(host):
    _chain(host, Page(404))

    assert _resolve(host).status is ResolutionStatus.NOT_FOUND


@pytest.mark.parametrize("sign_in", ["https://login.live.com/login.srf?wa=wsignin1.0",
                                     "https://login.microsoftonline.com/common/oauth2/authorize"])
def test_a_share_behind_a_sign_in_is_an_error_and_the_sign_in_is_not_fetched(host, sign_in):
    _chain(host, Download("Plan.pdf", 5))
    host.route("/download", Redirect(sign_in))

    assert _resolve(host).status is ResolutionStatus.ERROR
    assert len(host.requests) == 2


def test_a_page_instead_of_a_file_is_unsupported(host):
    _chain(host, Page(200))

    assert _resolve(host).status is ResolutionStatus.UNSUPPORTED


def test_a_429_is_rate_limited_with_its_retry_after(host):
    _chain(host, Download("Plan.pdf", 5))
    host.fail_next(1, 429, retry_after=30)

    with pytest.raises(ResolverError) as caught:
        _resolve(host)

    assert caught.value.reason == "rate_limited" and caught.value.retry_after == 30


def test_a_5xx_is_a_resolver_error(host):
    _chain(host, Download("Plan.pdf", 5))
    host.fail_next(1, 500)

    with pytest.raises(ResolverError) as caught:
        _resolve(host)

    assert caught.value.reason == "http_500"


@pytest.mark.parametrize("hop", ["short", "download"])
@pytest.mark.parametrize("target", ["https://onedrive.live.com.evil.example/redir?resid=x",
                                    "https://evil.example/onedrive.live.com/download?resid=x",
                                    "http://onedrive.live.com/redir?resid=x"])
def test_a_redirect_to_a_look_alike_host_is_refused_at_every_hop(host, hop, target):
    _chain(host, Download("Plan.pdf", 5))
    host.route("/u/s!AkLmNoPqRsTuVwXyZ0123" if hop == "short" else "/download", Redirect(target))

    with pytest.raises(ResolverError) as caught:
        _resolve(host)

    assert caught.value.reason == "refused_host"


def test_no_authkey_or_download_url_reaches_a_log_line(host, caplog):
    caplog.set_level(logging.DEBUG)
    _chain(host, Download("Plan.pdf", 5))
    _resolve(host)
    host.route("/download", Redirect("https://evil.example/x?authkey=!AbCdEfGh"))
    with pytest.raises(ResolverError):
        _resolve(host)

    # urllib3 logs request lines at DEBUG: log_setup holds it at WARNING, so only the service's own loggers count
    text = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("urllib3"))
    assert "onedrive" in text
    for secret in ("AbCdEfGh", "4F2A9C1B7D3E", "AkLmNoPqRsTuVwXyZ0123", "y4mFiLeS"):
        assert secret not in text
