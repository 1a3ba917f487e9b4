"""The Box resolver against a fake share host over real HTTP: a shared link's /shared/static/ form asked with HEAD,
its redirect to the download host followed, the file read from headers; every status, failures, look-alike hosts,
and no shared name in logs."""

from __future__ import annotations

import logging
import time

import pytest

from config import ProviderConfig, ProviderEndpoint
from email_processing.links import DeliveryLink
from email_processing.resolution import ResolutionStatus
from harness.file_hosts.share_host import Download, FakeShareHost, Page, Redirect
from services.resolvers import RESOLVERS, provider_http
from services.resolvers.base import ResolverError
from services.resolvers.box import RESOLVER

NAME = "kwio6b4ovt1264rnfbyqo1"
LINK = f"https://app.box.com/s/{NAME}"


@pytest.fixture
def host():
    fake = FakeShareHost().start()
    yield fake
    fake.stop()


def _resolve(host: FakeShareHost, url: str = LINK):
    config = ProviderConfig("box", endpoint=ProviderEndpoint(host.url, allow_insecure=True), timeout_seconds=5)
    return RESOLVER.resolve(DeliveryLink("box", url, url), provider_http(config, time.monotonic() + 10), config)


def _chain(host: FakeShareHost, answer: Download | Page | Redirect) -> None:
    host.route(f"/shared/static/{NAME}", Redirect(f"{host.url}/d/1/b1!DlToKeN/download"))
    host.route("/d/1/b1!DlToKeN/download", answer)


def test_the_box_resolver_is_registered():
    assert RESOLVERS["box"] is RESOLVER


def test_a_shared_link_resolves_to_its_static_form_with_name_and_size(host):
    _chain(host, Download("Contract signed.pdf", 98_304))

    resolution = _resolve(host)

    assert resolution.status is ResolutionStatus.OK
    assert [(f.name, f.size_bytes) for f in resolution.files] == [("Contract signed.pdf", 98_304)]
    assert resolution.direct_url == f"{host.url}/shared/static/{NAME}"
    assert [(r.method, r.path) for r in host.requests] == \
        [("HEAD", f"/shared/static/{NAME}"), ("HEAD", "/d/1/b1!DlToKeN/download")]


@pytest.mark.parametrize("url", ["https://acme.app.box.com/v/quarterly-report",
                                 f"https://app.box.com/s/{NAME}/file/123456"])
def test_vanity_links_and_files_inside_shared_folders_are_unsupported_without_a_request(host, url):
    assert _resolve(host, url).status is ResolutionStatus.UNSUPPORTED
    assert host.requests == []


def test_a_removed_share_is_not_found(host):
    assert _resolve(host).status is ResolutionStatus.NOT_FOUND


def test_a_link_for_the_company_only_is_an_error_and_the_sign_in_is_not_fetched(host):
    host.route(f"/shared/static/{NAME}", Redirect(f"{host.url}/login?redirect_url=%2Fs%2F{NAME}"))

    assert _resolve(host).status is ResolutionStatus.ERROR
    assert len(host.requests) == 1


def test_a_password_page_or_a_folder_is_unsupported(host):
    host.route(f"/shared/static/{NAME}", Page(200, "<html>This shared file or folder is password protected</html>"))

    assert _resolve(host).status is ResolutionStatus.UNSUPPORTED


def test_a_429_is_rate_limited_with_its_retry_after(host):
    host.fail_next(1, 429, retry_after=5)

    with pytest.raises(ResolverError) as caught:
        _resolve(host)

    assert caught.value.reason == "rate_limited" and caught.value.retry_after == 5


def test_a_5xx_is_a_resolver_error(host):
    host.fail_next(1, 504)

    with pytest.raises(ResolverError) as caught:
        _resolve(host)

    assert caught.value.reason == "http_504"


@pytest.mark.parametrize("target", ["https://public.boxcloud.com.evil.example/d/1/x/download",
                                    "https://boxcloud-com.example/d/1/x/download",
                                    "http://public.boxcloud.com/d/1/x/download"])
def test_a_redirect_to_a_look_alike_host_is_refused(host, target):
    host.route(f"/shared/static/{NAME}", Redirect(target))

    with pytest.raises(ResolverError) as caught:
        _resolve(host)

    assert caught.value.reason == "refused_host"


def test_no_shared_name_or_download_token_reaches_a_log_line(host, caplog):
    caplog.set_level(logging.DEBUG)
    _chain(host, Download("a.pdf", 5))
    _resolve(host)
    host.route(f"/shared/static/{NAME}", Redirect("https://evil.example/d/1/b1!DlToKeN/download"))
    with pytest.raises(ResolverError):
        _resolve(host)

    # urllib3 logs request lines at DEBUG: log_setup holds it at WARNING, so only the service's own loggers count
    text = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("urllib3"))
    assert "box" in text
    for secret in (NAME, "DlToKeN"):
        assert secret not in text
