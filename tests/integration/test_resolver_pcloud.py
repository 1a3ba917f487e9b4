"""The pCloud resolver against a fake of pCloud's public-link API over real HTTPS (a trustme CA): a file link's
name, size, direct URL and expiry, a folder's file list (capped), every documented result code, failures,
look-alike download hosts, and no code or download path in logs."""

from __future__ import annotations

import logging
import time

import pytest

from config import ProviderConfig, ProviderEndpoint
from email_processing.links import DeliveryLink
from email_processing.resolution import ResolutionStatus
from harness.file_hosts.pcloud import FakePCloud, PublicLink, file_metadata, folder_metadata
from services.resolvers import RESOLVERS, provider_http
from services.resolvers.base import ResolverError
from services.resolvers.pcloud import RESOLVER

CODE = "XZtTpwVZnMvzSRIY2vhs6zCQgfHtI8Oya3YV"
LINK = f"https://u.pcloud.link/publink/show?code={CODE}"


@pytest.fixture
def pcloud():
    fake = FakePCloud(tls=True).start()
    yield fake
    fake.stop()


def _resolve(pcloud: FakePCloud, url: str = LINK, max_files: int = 100):
    config = ProviderConfig("pcloud", endpoint=ProviderEndpoint(pcloud.url, ca_file=pcloud.ca_file),
                            timeout_seconds=5, max_files=max_files)
    return RESOLVER.resolve(DeliveryLink("pcloud", url, url), provider_http(config, time.monotonic() + 10), config)


def test_the_pcloud_resolver_is_registered():
    assert RESOLVERS["pcloud"] is RESOLVER


def test_a_file_link_resolves_to_its_download_url_name_size_and_expiry(pcloud):
    pcloud.add(CODE, PublicLink(file_metadata("Mix master v3.wav", 88_200_044), lifetime=3600))

    before = time.time()
    resolution = _resolve(pcloud)

    assert resolution.status is ResolutionStatus.OK
    assert [(f.name, f.size_bytes) for f in resolution.files] == [("Mix master v3.wav", 88_200_044)]
    [(_, path)] = pcloud.issued
    assert resolution.direct_url == f"https://p-lux3.pcloud.com{path}" == resolution.files[0].download_url
    assert resolution.expires_at is not None and before + 3590 <= resolution.expires_at <= before + 3610
    assert [r.path for r in pcloud.requests] == ["/showpublink", "/getpublinkdownload"]


def test_a_folder_link_lists_its_files_recursively_without_asking_for_download_links(pcloud):
    pcloud.add(CODE, PublicLink(folder_metadata("Shoot", [
        file_metadata("a.jpg", 10, 1), folder_metadata("raw", [file_metadata("b.cr3", 20, 2)], 3),
        file_metadata("c.jpg", 30, 4)])))

    resolution = _resolve(pcloud)

    assert resolution.status is ResolutionStatus.OK
    assert [(f.name, f.size_bytes, f.download_url) for f in resolution.files] == \
        [("a.jpg", 10, None), ("b.cr3", 20, None), ("c.jpg", 30, None)]
    assert resolution.file_count == 3 and resolution.size_bytes == 60 and resolution.direct_url is None
    assert [r.path for r in pcloud.requests] == ["/showpublink"]


def test_a_folder_lists_at_most_max_files_and_keeps_the_true_count(pcloud):
    pcloud.add(CODE, PublicLink(folder_metadata("Many", [file_metadata(f"{i}.txt", 1, i) for i in range(1, 8)])))

    resolution = _resolve(pcloud, max_files=3)

    assert [f.name for f in resolution.files] == ["1.txt", "2.txt", "3.txt"]
    assert resolution.file_count == 7 and resolution.size_bytes == 7


def test_a_file_inside_a_folder_link_is_downloaded_by_its_fileid(pcloud):
    pcloud.add(CODE, PublicLink(folder_metadata("Shoot", [file_metadata("a.jpg", 10, 1),
                                                          file_metadata("b.jpg", 20, 2)])))

    resolution = _resolve(pcloud, f"https://u.pcloud.link/file/2?code={CODE}")

    assert [(f.name, f.size_bytes) for f in resolution.files] == [("b.jpg", 20)]
    assert pcloud.requests[-1].query == {"code": CODE, "fileid": "2"}


@pytest.mark.parametrize("result, status", [(7001, ResolutionStatus.NOT_FOUND), (7002, ResolutionStatus.NOT_FOUND),
                                            (7004, ResolutionStatus.EXPIRED),
                                            (7005, ResolutionStatus.LIMIT_REACHED),
                                            (7006, ResolutionStatus.LIMIT_REACHED)])
def test_every_documented_result_code_maps_to_its_status(pcloud, result, status):
    pcloud.add(CODE, PublicLink(file_metadata("a.bin", 1), result=result))

    assert _resolve(pcloud).status is status


def test_a_limit_reached_only_when_asking_for_the_download_is_limit_reached(pcloud):
    pcloud.add(CODE, PublicLink(file_metadata("a.bin", 1), download_result=7006))

    assert _resolve(pcloud).status is ResolutionStatus.LIMIT_REACHED


def test_an_unknown_code_is_not_found(pcloud):
    assert _resolve(pcloud).status is ResolutionStatus.NOT_FOUND


@pytest.mark.parametrize("result, reason", [(4000, "rate_limited"), (5002, "provider_error"),
                                            (1234, "invalid_answer")])
def test_transient_and_unknown_result_codes_are_resolver_errors(pcloud, result, reason):
    pcloud.add(CODE, PublicLink(file_metadata("a.bin", 1), result=result))

    with pytest.raises(ResolverError) as caught:
        _resolve(pcloud)

    assert caught.value.reason == reason


def test_a_429_is_rate_limited_with_its_retry_after(pcloud):
    pcloud.add(CODE, PublicLink(file_metadata("a.bin", 1)))
    pcloud.fail_next(1, 429, retry_after=60)

    with pytest.raises(ResolverError) as caught:
        _resolve(pcloud)

    assert caught.value.reason == "rate_limited" and caught.value.retry_after == 60


def test_a_5xx_is_a_resolver_error(pcloud):
    pcloud.add(CODE, PublicLink(file_metadata("a.bin", 1)))
    pcloud.fail_next(1, 503)

    with pytest.raises(ResolverError) as caught:
        _resolve(pcloud)

    assert caught.value.reason == "http_503"


@pytest.mark.parametrize("hosts", [("p-lux3.pcloud.com.evil.example",), ("pcloud-com.example",),
                                   ("evil.example/p-lux3.pcloud.com",), ("p-lux3.pcloud.com:8443",)])
def test_a_download_host_outside_pcloud_is_refused(pcloud, hosts):
    pcloud.add(CODE, PublicLink(file_metadata("a.bin", 1), hosts=hosts))

    with pytest.raises(ResolverError) as caught:
        _resolve(pcloud)

    assert caught.value.reason == "refused_host"


def test_a_link_without_a_code_is_unsupported_without_a_request(pcloud):
    assert _resolve(pcloud, "https://u.pcloud.link/publink/show").status is ResolutionStatus.UNSUPPORTED
    assert pcloud.requests == []


def test_no_code_or_download_path_reaches_a_log_line(pcloud, caplog):
    caplog.set_level(logging.DEBUG)
    pcloud.add(CODE, PublicLink(file_metadata("a.bin", 1)))
    pcloud.add("EvIlCoDe123", PublicLink(file_metadata("b.bin", 1), hosts=("evil.example",)))
    _resolve(pcloud)
    with pytest.raises(ResolverError):
        _resolve(pcloud, "https://u.pcloud.link/publink/show?code=EvIlCoDe123")

    # urllib3 logs request lines at DEBUG: log_setup holds it at WARNING, so only the service's own loggers count
    text = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("urllib3"))
    assert "pcloud" in text
    for secret in (CODE, "EvIlCoDe123", *(path.split("/")[1] for _, path in pcloud.issued)):
        assert secret not in text
