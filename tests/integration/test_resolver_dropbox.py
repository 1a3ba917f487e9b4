"""The Dropbox resolver against a fake of www.dropbox.com over real HTTP: notification /l/scl/ links become their
share link's dl=1 form; other /l/ links are never requested; redirect targets are read, not fetched; look-alike
hosts are refused; failures raise; no token reaches a log line."""

from __future__ import annotations

import logging
import time

import pytest

from config import ProviderConfig, ProviderEndpoint
from email_processing.links import DeliveryLink
from email_processing.resolution import ResolutionStatus
from harness.file_hosts.dropbox import FakeDropbox
from services.resolvers import RESOLVERS, provider_http
from services.resolvers.base import ResolverError
from services.resolvers.dropbox import RESOLVER

TOKEN = "AADuPxPlBl0wYjXkOdWgf0Hk1nTm2QqRsTuVwXy"
TRACKING = f"https://www.dropbox.com/l/scl/{TOKEN}"


@pytest.fixture
def dropbox():
    fake = FakeDropbox().start()
    yield fake
    fake.stop()


def _resolve(dropbox: FakeDropbox, url: str = TRACKING, *, follow: bool = True):
    config = ProviderConfig("dropbox", endpoint=ProviderEndpoint(dropbox.url, allow_insecure=True),
                            resolve_tracking_links=follow, timeout_seconds=5)
    link = DeliveryLink("dropbox", url, url)
    return RESOLVER.resolve(link, provider_http(config, time.monotonic() + 10), config)


def test_the_dropbox_resolver_is_registered_for_tracking_links_only():
    assert RESOLVERS["dropbox"] is RESOLVER
    assert RESOLVER.handles(DeliveryLink("dropbox", TRACKING, TRACKING))
    share = "https://www.dropbox.com/scl/fi/abc123/report.pdf?rlkey=k1&dl=0"
    assert not RESOLVER.handles(DeliveryLink("dropbox", share, share))


def test_a_share_notification_link_becomes_the_share_links_direct_form(dropbox):
    dropbox.track(f"/l/scl/{TOKEN}", f"{dropbox.url}/scl/fi/h7cs9d1kq2/Site%20plan.pdf?rlkey=r1x&st=s2y&dl=0")

    resolution = _resolve(dropbox)

    assert resolution.status is ResolutionStatus.OK
    assert resolution.direct_url == "https://www.dropbox.com/scl/fi/h7cs9d1kq2/Site%20plan.pdf?rlkey=r1x&st=s2y&dl=1"
    assert [(f.name, f.size_bytes, f.download_url) for f in resolution.files] == \
        [("Site plan.pdf", None, resolution.direct_url)]
    assert [(r.method, r.path) for r in dropbox.requests] == [("HEAD", f"/l/scl/{TOKEN}")]
    assert dropbox.pages_fetched == []   # the share page itself is not fetched


def test_a_legacy_share_and_a_folder_share_are_ok_and_a_folder_lists_no_file(dropbox):
    dropbox.track(f"/l/scl/{TOKEN}", f"{dropbox.url}/s/abcdef123/notes.txt?dl=0")
    dropbox.track("/l/scl/AAFoLdErToKeN1234567", f"{dropbox.url}/scl/fo/f0ld3r/h4sh?rlkey=rk&dl=0")

    legacy = _resolve(dropbox)
    folder = _resolve(dropbox, "https://www.dropbox.com/l/scl/AAFoLdErToKeN1234567")

    assert legacy.direct_url == "https://www.dropbox.com/s/abcdef123/notes.txt?dl=1"
    assert [f.name for f in legacy.files] == ["notes.txt"]
    assert folder.status is ResolutionStatus.OK and folder.files == ()
    assert folder.direct_url == "https://www.dropbox.com/scl/fo/f0ld3r/h4sh?rlkey=rk&dl=1"


def test_a_chain_of_share_tracking_links_is_followed_hop_by_hop(dropbox):
    dropbox.track(f"/l/scl/{TOKEN}", f"{dropbox.url}/l/scl/AASeCoNdHoP12345678")
    dropbox.track("/l/scl/AASeCoNdHoP12345678", f"{dropbox.url}/scl/fi/x1/a.zip?rlkey=k&dl=0")

    assert [f.name for f in _resolve(dropbox).files] == ["a.zip"]
    assert len(dropbox.requests) == 2


@pytest.mark.parametrize("target", ["/account/unsubscribe?email_type=shares&token=t0k", "/login?cont=x",
                                    "/account/settings", "/help/files-folders"])
def test_a_tracking_link_leading_elsewhere_is_unsupported_and_its_target_never_fetched(dropbox, target):
    dropbox.track(f"/l/scl/{TOKEN}", f"{dropbox.url}{target}")

    assert _resolve(dropbox).status is ResolutionStatus.UNSUPPORTED
    assert dropbox.pages_fetched == []
    assert len(dropbox.requests) == 1


@pytest.mark.parametrize("url", ["https://www.dropbox.com/l/AABWjooGQaWoHtoVAS-WNXojMuESi-3AWkk",
                                 "https://www.dropbox.com/l/AAD-jqnfHjlJUO9hMoWdydqe3u594O5FMiE/forgot_finish"])
def test_other_tracking_links_are_unsupported_without_a_request(dropbox, url):
    dropbox.track("/l/AABWjooGQaWoHtoVAS-WNXojMuESi-3AWkk", f"{dropbox.url}/account/unsubscribe")

    assert _resolve(dropbox, url).status is ResolutionStatus.UNSUPPORTED
    assert dropbox.requests == []


def test_tracking_links_are_left_alone_when_resolve_dropbox_tracking_links_is_off(dropbox):
    dropbox.track(f"/l/scl/{TOKEN}", f"{dropbox.url}/scl/fi/x1/a.zip?rlkey=k&dl=0")

    assert _resolve(dropbox, follow=False).status is ResolutionStatus.NONE
    assert dropbox.requests == []


def test_an_unknown_or_gone_tracking_link_is_not_found(dropbox):
    dropbox.track("/l/scl/AAGoNeToKeN123456789", 410)

    assert _resolve(dropbox).status is ResolutionStatus.NOT_FOUND
    assert _resolve(dropbox, "https://www.dropbox.com/l/scl/AAGoNeToKeN123456789").status is \
        ResolutionStatus.NOT_FOUND


def test_a_page_instead_of_a_redirect_is_unsupported(dropbox):
    dropbox.track(f"/l/scl/{TOKEN}", 200)

    assert _resolve(dropbox).status is ResolutionStatus.UNSUPPORTED


def test_a_429_is_rate_limited_with_its_retry_after(dropbox):
    dropbox.fail_next(1, 429, retry_after=7)

    with pytest.raises(ResolverError) as caught:
        _resolve(dropbox)

    assert caught.value.reason == "rate_limited" and caught.value.retry_after == 7


def test_a_5xx_is_a_resolver_error(dropbox):
    dropbox.fail_next(1, 502)

    with pytest.raises(ResolverError) as caught:
        _resolve(dropbox)

    assert caught.value.reason == "http_502"


@pytest.mark.parametrize("target", ["https://www.dropbox.com.evil.example/scl/fi/x1/a.zip?rlkey=k&dl=0",
                                    "https://dropbox.com-share.example/s/abc/a.zip",
                                    "http://www.dropbox.com/scl/fi/x1/a.zip?rlkey=k&dl=0",
                                    "https://evil.example/l/scl/AASeCoNdHoP12345678"])
def test_a_redirect_to_a_look_alike_host_is_refused_at_every_hop(dropbox, target):
    dropbox.track(f"/l/scl/{TOKEN}", f"{dropbox.url}/l/scl/AASeCoNdHoP12345678")
    dropbox.track("/l/scl/AASeCoNdHoP12345678", target)

    with pytest.raises(ResolverError) as caught:
        _resolve(dropbox)

    assert caught.value.reason == "refused_host"
    assert len(dropbox.requests) == 2


def test_no_token_or_share_link_reaches_a_log_line(dropbox, caplog):
    caplog.set_level(logging.DEBUG)
    dropbox.track(f"/l/scl/{TOKEN}", f"{dropbox.url}/scl/fi/h7cs9d1kq2/a.pdf?rlkey=SeCrEtRlKeY&dl=0")
    dropbox.track("/l/scl/AAElSeWhErE123456789", f"{dropbox.url}/account/unsubscribe?token=UnSuBtOkEn")
    dropbox.track("/l/scl/AAEvIlHoSt1234567890", "https://evil.example/scl/fi/q/a.pdf?rlkey=EvIlKeY")

    _resolve(dropbox)
    _resolve(dropbox, "https://www.dropbox.com/l/scl/AAElSeWhErE123456789")
    with pytest.raises(ResolverError):
        _resolve(dropbox, "https://www.dropbox.com/l/scl/AAEvIlHoSt1234567890")

    # urllib3 logs request lines at DEBUG: log_setup holds it at WARNING, so only the service's own loggers count
    text = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("urllib3"))
    assert "dropbox" in text
    for secret in (TOKEN, "AAElSeWhErE", "AAEvIlHoSt", "SeCrEtRlKeY", "UnSuBtOkEn", "EvIlKeY", "h7cs9d1kq2"):
        assert secret not in text
