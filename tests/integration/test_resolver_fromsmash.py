"""Smash's resolver against a local fake of its regional transfer preview API over real https (a trustme CA)
through ``provider_http``: files, sizes, expiry and signed URLs page by page; every refusal; 429/5xx/slow answers;
look-alike download hosts refused; the files cap; the region template of ``SMASH_API_BASE``; no key or signed URL
in a log line."""

from __future__ import annotations

import logging
import time

import pytest

from config import ProviderConfig, ProviderEndpoint
from email_processing.links import DeliveryLink
from email_processing.resolution import ResolutionStatus
from harness.file_hosts.fromsmash import FakeSmashTransfer, SmashFake
from services.resolvers import RESOLVERS, ResolverError, provider_http
from services.resolvers.fromsmash import api_base, region_of
from settings import Settings

pytestmark = pytest.mark.timeout(30)

API_KEY = "smash-test-key"


@pytest.fixture(scope="module")
def smash():
    fake = SmashFake(tls=True, api_key=API_KEY, page_size=3).start()
    yield fake
    fake.stop()


def _config(fake: SmashFake, **kwargs) -> ProviderConfig:
    return ProviderConfig("fromsmash", endpoint=ProviderEndpoint(fake.origin, ca_file=fake.ca_file),
                          api_key=kwargs.pop("api_key", API_KEY), timeout_seconds=kwargs.pop("timeout_seconds", 5.0),
                          **kwargs)


def _resolve(fake: SmashFake, transfer: FakeSmashTransfer, **kwargs):
    config = _config(fake, **kwargs)
    link = DeliveryLink("fromsmash", transfer.url, transfer.url)
    resolver = RESOLVERS["fromsmash"]
    assert resolver.handles(link)
    return resolver.resolve(link, provider_http(config, time.monotonic() + 10), config)


def test_it_lists_the_files_sizes_expiry_and_signed_urls_over_every_page(smash):
    transfer = smash.add_transfer({f"shot{i}.jpg": b"j" * (10 + i) for i in range(5)})

    resolution = _resolve(smash, transfer)

    assert resolution.status is ResolutionStatus.OK
    assert [(f.name, f.size_bytes) for f in resolution.files] == [(f"shot{i}.jpg", 10 + i) for i in range(5)]
    assert resolution.file_count == 5 and resolution.total_bytes == 60
    assert resolution.expires_at == pytest.approx(int(transfer.expires_at), abs=1)
    assert all(f.download_url.startswith(f"https://download.eu-west-3.fromsmash.co/{transfer.transfer_id}/")
               for f in resolution.files)
    calls = [r for r in smash.requests if transfer.transfer_id in r.path]
    assert [(r.path.rsplit("/", 2)[-2:], r.query.get("start")) for r in calls] == [
        ([transfer.transfer_id, "preview"], None), (["files", "preview"], None), (["files", "preview"], "3")]
    assert all(r.headers["Authorization"] == f"Bearer {API_KEY}" and r.query["version"] == "07-2022"
               for r in calls)


@pytest.mark.parametrize("kwargs, status", [
    ({"expires_in": -60}, ResolutionStatus.EXPIRED),
    ({"status": "Expired"}, ResolutionStatus.EXPIRED),
    ({"password": True}, ResolutionStatus.PASSWORD_REQUIRED),
], ids=["past_end_date", "expired_status", "password_required"])
def test_each_state_of_a_transfer_is_its_own_status(smash, kwargs, status):
    transfer = smash.add_transfer({"x": b"x"}, **kwargs)

    resolution = _resolve(smash, transfer)

    assert resolution.status is status and resolution.files == ()


def test_an_unknown_transfer_is_not_found(smash):
    transfer = FakeSmashTransfer("AAAAAAAAAA-ct", {}, time.time())

    assert _resolve(smash, transfer).status is ResolutionStatus.NOT_FOUND


def test_a_rejected_api_key_is_a_resolver_error_not_a_status_of_the_link(smash):
    transfer = smash.add_transfer({"x": b"x"})

    with pytest.raises(ResolverError) as raised:
        _resolve(smash, transfer, api_key="wrong")

    assert raised.value.reason == "http_401"


def test_a_429_is_rate_limited_with_its_retry_after(smash):
    transfer = smash.add_transfer({"x": b"x"})
    smash.fail_next(1, 429, retry_after=9)

    with pytest.raises(ResolverError) as raised:
        _resolve(smash, transfer)

    assert raised.value.reason == "rate_limited" and raised.value.retry_after == 9.0


def test_a_5xx_is_a_resolver_error(smash):
    transfer = smash.add_transfer({"x": b"x"})
    smash.fail_next(1, 500)

    with pytest.raises(ResolverError) as raised:
        _resolve(smash, transfer)

    assert raised.value.reason == "http_500"


def test_a_slow_answer_is_a_timeout(smash):
    transfer = smash.add_transfer({"x": b"x"})
    smash.fail_next(1, 200, delay=1.5)

    with pytest.raises(ResolverError) as raised:
        _resolve(smash, transfer, timeout_seconds=0.5)

    assert raised.value.reason == "timeout"


@pytest.mark.parametrize("host", ["download.eu-west-3.fromsmash.co.evil.example", "fromsmash.co.evil.example",
                                  "download.fromsmash.cc"])
def test_a_signed_url_outside_fromsmash_is_refused(smash, host):
    transfer = smash.add_transfer({"x": b"x"}, download_host=host)

    with pytest.raises(ResolverError) as raised:
        _resolve(smash, transfer)

    assert raised.value.reason == "refused_host"


def test_it_stops_paging_once_max_files_are_listed_and_keeps_the_true_count(smash):
    transfer = smash.add_transfer({f"f{i}": b"x" for i in range(10)})

    resolution = _resolve(smash, transfer, max_files=2)

    assert [f.name for f in resolution.files] == ["f0", "f1"]
    assert resolution.file_count == 10
    assert len([r for r in smash.requests if r.path.endswith(f"{transfer.transfer_id}/files/preview")]) == 1


def test_no_api_key_transfer_id_or_signed_url_reaches_a_log_line(smash, caplog):
    ok = smash.add_transfer({"x": b"x"})
    locked = smash.add_transfer({"x": b"x"}, password=True)
    lookalike = smash.add_transfer({"x": b"x"}, download_host="fromsmash.co.evil.example")
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="services")

    resolution = _resolve(smash, ok)
    _resolve(smash, locked)
    with pytest.raises(ResolverError):
        _resolve(smash, lookalike)

    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "evil.example" in logged
    for secret in [API_KEY, ok.transfer_id, locked.transfer_id, lookalike.transfer_id,
                   resolution.files[0].download_url.split("=", 1)[1]]:
        assert secret not in logged


def test_the_default_base_is_smash_s_regional_api_host_named_by_the_transfer_id():
    config = ProviderConfig.from_settings(Settings.from_env({"SMASH_API_KEY": "k"}), "fromsmash")

    assert config.endpoint.base_url == "https://transfer.{region}.fromsmash.co"
    assert region_of("p2smVdWg8U-ct") == "eu-west-3" and region_of("HRAmtRiUKf-dt") == "eu-central-1"
    assert api_base(config, "eu-west-3") == "https://transfer.eu-west-3.fromsmash.co"


def test_a_custom_slug_is_left_to_smash_s_link_service():
    resolver = RESOLVERS["fromsmash"]
    slug = DeliveryLink("fromsmash", "https://fromsmash.com/demo-lebureaudugame",
                        "https://fromsmash.com/demo-lebureaudugame")
    config = ProviderConfig("fromsmash", endpoint=ProviderEndpoint("https://transfer.{region}.fromsmash.co"),
                            api_key="k")

    assert resolver.resolve(slug, provider_http(config, time.monotonic() + 1), config).status \
        is ResolutionStatus.UNSUPPORTED
