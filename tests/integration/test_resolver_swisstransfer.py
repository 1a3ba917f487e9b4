"""SwissTransfer's resolver against a local fake of its link API, over real https (a trustme CA) through
``provider_http``: every status the link API can produce, 429/5xx/slow answers, look-alike download hosts refused,
the files cap, and no capability in a log line."""

from __future__ import annotations

import logging
import time

import pytest

from config import ProviderConfig, ProviderEndpoint
from email_processing.links import DeliveryLink
from email_processing.resolution import ResolutionStatus
from harness.file_hosts.swisstransfer import SwissTransferFake
from services.resolvers import RESOLVERS, ResolverError, provider_http

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def swisstransfer():
    fake = SwissTransferFake(tls=True).start()
    yield fake
    fake.stop()


def _config(fake: SwissTransferFake, **kwargs) -> ProviderConfig:
    return ProviderConfig("swisstransfer", endpoint=ProviderEndpoint(fake.api_base, ca_file=fake.ca_file),
                          timeout_seconds=kwargs.pop("timeout_seconds", 5.0), **kwargs)


def _resolve(fake: SwissTransferFake, link_uuid: str, *, path: str = "d", **kwargs):
    config = _config(fake, **kwargs)
    link = DeliveryLink("swisstransfer", f"https://www.swisstransfer.com/{path}/{link_uuid}",
                        f"https://www.swisstransfer.com/{path}/{link_uuid}")
    resolver = RESOLVERS["swisstransfer"]
    assert resolver.handles(link)
    return resolver.resolve(link, provider_http(config, time.monotonic() + 10), config)


def test_it_lists_the_files_sizes_expiry_and_download_urls_of_a_transfer(swisstransfer):
    transfer = swisstransfer.add_transfer({"a.pdf": b"A" * 10, "b.mov": b"B" * 2000, "c.txt": b"C"})

    resolution = _resolve(swisstransfer, transfer.link_uuid)

    assert resolution.status is ResolutionStatus.OK
    assert [(f.name, f.size_bytes) for f in resolution.files] == [("a.pdf", 10), ("b.mov", 2000), ("c.txt", 1)]
    assert resolution.total_bytes == 2011 and resolution.file_count == 3
    assert resolution.expires_at == pytest.approx(int(transfer.expires_at), abs=1)
    assert [f.download_url for f in resolution.files] == [
        f"https://dl-j5769qrh.swisstransfer.com/api/download/{transfer.link_uuid}/{item.uuid}"
        for item in transfer.files]
    assert swisstransfer.requests[-1].path == f"/api/links/{transfer.link_uuid}"


def test_a_dl_share_link_resolves_like_a_d_link(swisstransfer):
    transfer = swisstransfer.add_transfer({"one.zip": b"1234"})

    assert _resolve(swisstransfer, transfer.link_uuid, path="dl").status is ResolutionStatus.OK


@pytest.mark.parametrize("make, status", [
    (lambda fake: "0b5f3c36-6d2e-4d3f-9a43-000000000000", ResolutionStatus.NOT_FOUND),
    (lambda fake: fake.add_transfer({"x": b"x"}, refusal="expired").link_uuid, ResolutionStatus.EXPIRED),
    (lambda fake: fake.add_transfer({"x": b"x"}, expires_in=-60).link_uuid, ResolutionStatus.EXPIRED),
    (lambda fake: fake.add_transfer({"x": b"x"}, password=True).link_uuid, ResolutionStatus.PASSWORD_REQUIRED),
    (lambda fake: fake.add_transfer({"x": b"x"}, credit=0).link_uuid, ResolutionStatus.LIMIT_REACHED),
    (lambda fake: fake.add_transfer({"x": b"x"}, refusal="wait_virus_check").link_uuid, ResolutionStatus.ERROR),
], ids=["not_found", "expired_refusal", "expired_date", "password_required", "limit_reached", "virus_check"])
def test_each_refusal_of_the_link_api_is_its_own_status(swisstransfer, make, status):
    resolution = _resolve(swisstransfer, make(swisstransfer))

    assert resolution.status is status
    assert resolution.files == ()


def test_a_429_is_rate_limited_with_the_retry_after_it_names(swisstransfer):
    transfer = swisstransfer.add_transfer({"x": b"x"})
    swisstransfer.fail_next(1, 429, retry_after=42)

    with pytest.raises(ResolverError) as raised:
        _resolve(swisstransfer, transfer.link_uuid)

    assert raised.value.reason == "rate_limited" and raised.value.retry_after == 42.0


def test_a_5xx_is_a_resolver_error(swisstransfer):
    transfer = swisstransfer.add_transfer({"x": b"x"})
    swisstransfer.fail_next(1, 502)

    with pytest.raises(ResolverError) as raised:
        _resolve(swisstransfer, transfer.link_uuid)

    assert raised.value.reason == "http_502"


def test_a_slow_answer_is_a_timeout(swisstransfer):
    transfer = swisstransfer.add_transfer({"x": b"x"})
    swisstransfer.fail_next(1, 200, delay=1.5)

    with pytest.raises(ResolverError) as raised:
        _resolve(swisstransfer, transfer.link_uuid, timeout_seconds=0.5)

    assert raised.value.reason == "timeout"


@pytest.mark.parametrize("host", ["dl-1.swisstransfer.com.evil.example", "dl-1.swisstransfer.co",
                                  "swisstransfer.com@evil.example", "dl-1.swisstransfer.com:8443"])
def test_a_download_host_outside_swisstransfer_is_refused(swisstransfer, host):
    transfer = swisstransfer.add_transfer({"x": b"x"}, download_host=host)

    with pytest.raises(ResolverError) as raised:
        _resolve(swisstransfer, transfer.link_uuid)

    assert raised.value.reason == "refused_host"


def test_it_lists_at_most_max_files_and_keeps_the_true_count(swisstransfer):
    transfer = swisstransfer.add_transfer({f"f{i}.bin": b"x" * i for i in range(1, 8)})

    resolution = _resolve(swisstransfer, transfer.link_uuid, max_files=3)

    assert [f.name for f in resolution.files] == ["f1.bin", "f2.bin", "f3.bin"]
    assert resolution.file_count == 7 and resolution.total_bytes == 28  # the true total, all files


def test_no_link_uuid_or_download_url_reaches_a_log_line(swisstransfer, caplog):
    transfer = swisstransfer.add_transfer({"x": b"x"})
    expired = swisstransfer.add_transfer({"x": b"x"}, refusal="expired")
    lookalike = swisstransfer.add_transfer({"x": b"x"}, download_host="dl-1.swisstransfer.com.evil.example")
    # every level of ours; urllib3 stays at INFO as log_setup keeps it (WARNING): it logs request paths at DEBUG
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="services")

    _resolve(swisstransfer, transfer.link_uuid)
    _resolve(swisstransfer, expired.link_uuid)
    with pytest.raises(ResolverError):
        _resolve(swisstransfer, lookalike.link_uuid)

    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "evil.example" in logged  # the refusal is logged, by host
    for secret in [transfer.link_uuid, expired.link_uuid, lookalike.link_uuid,
                   *(f.uuid for t in (transfer, expired, lookalike) for f in t.files)]:
        assert secret not in logged


def test_it_leaves_direct_file_urls_and_other_providers_alone():
    resolver = RESOLVERS["swisstransfer"]
    direct = "https://www.swisstransfer.com/api/download/0b5f3c36-6d2e-4d3f-9a43-000000000000"

    assert not resolver.handles(DeliveryLink("swisstransfer", direct, direct))
    assert not resolver.handles(DeliveryLink("wetransfer", "https://www.swisstransfer.com/d/0b5f3c36-6d2e",
                                             "https://www.swisstransfer.com/d/0b5f3c36-6d2e"))
