"""WeTransfer's resolver against a local fake of its (undocumented) web download API over real https (a trustme
CA) through ``provider_http``: files, expiry and the direct link; every refusal; 429/5xx/slow answers; we.tl-style
short links followed hop by hop with each hop host-checked (the fake plays the short link's origin, which
``ProviderHttp`` accepts as the configured base URL's); look-alike hosts refused; the files cap; no capability in a
log line."""

from __future__ import annotations

import logging
import time

import pytest

from config import ProviderConfig, ProviderEndpoint
from email_processing.links import DeliveryLink
from email_processing.resolution import ResolutionStatus
from harness.file_hosts.wetransfer import FakeWeTransfer, WeTransferFake
from services.resolvers import RESOLVERS, ResolverError, provider_http
from services.resolvers.wetransfer import follow_short_link, resolve_transfer

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def wetransfer():
    fake = WeTransferFake(tls=True).start()
    yield fake
    fake.stop()


def _config(fake: WeTransferFake, **kwargs) -> ProviderConfig:
    return ProviderConfig("wetransfer", endpoint=ProviderEndpoint(fake.api_base, ca_file=fake.ca_file),
                          timeout_seconds=kwargs.pop("timeout_seconds", 5.0), **kwargs)


def _http(config: ProviderConfig):
    return provider_http(config, time.monotonic() + 10)


def _resolve(fake: WeTransferFake, transfer: FakeWeTransfer, *, url: str | None = None, **kwargs):
    config = _config(fake, **kwargs)
    url = url or transfer.landing_url
    link = DeliveryLink("wetransfer", url, url)
    resolver = RESOLVERS["wetransfer"]
    assert resolver.handles(link)
    return resolver.resolve(link, _http(config), config)


def test_a_one_file_transfer_resolves_to_the_file_with_its_direct_link(wetransfer):
    transfer = wetransfer.add_transfer({"cut.mov": b"M" * 1234})

    resolution = _resolve(wetransfer, transfer)

    assert resolution.status is ResolutionStatus.OK
    assert [(f.name, f.size_bytes) for f in resolution.files] == [("cut.mov", 1234)]
    assert resolution.files[0].download_url.startswith(f"https://download.wetransfer.com/eu2/{transfer.transfer_id}/")
    assert resolution.expires_at == pytest.approx(int(transfer.expires_at), abs=1)
    prepare, download = wetransfer.requests[-2:]
    assert prepare.method == "POST" and prepare.path.endswith(f"/{transfer.transfer_id}/prepare-download")
    assert prepare.json == {"security_hash": transfer.security_hash}
    assert download.json == {"security_hash": transfer.security_hash, "intent": "entire_transfer"}


def test_a_multi_file_transfer_lists_its_files_and_gives_the_zip_as_direct_url(wetransfer):
    transfer = wetransfer.add_transfer({"a.jpg": b"a" * 5, "b.jpg": b"b" * 7}, recipient=True)

    resolution = _resolve(wetransfer, transfer)

    assert [(f.name, f.size_bytes, f.download_url) for f in resolution.files] == [("a.jpg", 5, None),
                                                                                 ("b.jpg", 7, None)]
    assert resolution.direct_url.startswith("https://download.wetransfer.com/eu2/")
    assert wetransfer.requests[-1].json["recipient_id"] == transfer.recipient_id


@pytest.mark.parametrize("kwargs, status", [
    ({"state": "expired"}, ResolutionStatus.EXPIRED),
    ({"state": "deleted"}, ResolutionStatus.EXPIRED),
    ({"password": True}, ResolutionStatus.PASSWORD_REQUIRED),
    ({"state": "processing"}, ResolutionStatus.ERROR),
], ids=["expired", "deleted", "password_required", "not_ready"])
def test_each_state_of_a_transfer_is_its_own_status(wetransfer, kwargs, status):
    transfer = wetransfer.add_transfer({"x": b"x"}, **kwargs)

    resolution = _resolve(wetransfer, transfer)

    assert resolution.status is status and resolution.files == ()


def test_an_unknown_transfer_or_a_wrong_security_hash_is_not_found(wetransfer):
    transfer = wetransfer.add_transfer({"x": b"x"})
    wrong_hash = transfer.landing_url.replace(transfer.security_hash, "0badc0")
    unknown = f"https://wetransfer.com/downloads/{'0' * 46}/abc123"

    assert _resolve(wetransfer, transfer, url=wrong_hash).status is ResolutionStatus.NOT_FOUND
    assert _resolve(wetransfer, transfer, url=unknown).status is ResolutionStatus.NOT_FOUND


def test_a_429_is_rate_limited_with_its_retry_after(wetransfer):
    transfer = wetransfer.add_transfer({"x": b"x"})
    wetransfer.fail_next(1, 429, retry_after=17)

    with pytest.raises(ResolverError) as raised:
        _resolve(wetransfer, transfer)

    assert raised.value.reason == "rate_limited" and raised.value.retry_after == 17.0


def test_a_5xx_is_a_resolver_error(wetransfer):
    transfer = wetransfer.add_transfer({"x": b"x"})
    wetransfer.fail_next(1, 503)

    with pytest.raises(ResolverError) as raised:
        _resolve(wetransfer, transfer)

    assert raised.value.reason == "http_503"


def test_a_slow_answer_is_a_timeout(wetransfer):
    transfer = wetransfer.add_transfer({"x": b"x"})
    wetransfer.fail_next(1, 200, delay=1.5)

    with pytest.raises(ResolverError) as raised:
        _resolve(wetransfer, transfer, timeout_seconds=0.5)

    assert raised.value.reason == "timeout"


@pytest.mark.parametrize("hops", [1, 3])
def test_a_short_link_is_followed_hop_by_hop_to_its_transfer(wetransfer, hops):
    transfer = wetransfer.add_transfer({"x.pdf": b"pdf"})
    short = wetransfer.add_short_link(transfer.landing_url, hops=hops)
    config = _config(wetransfer)
    http = _http(config)
    before = len(wetransfer.requests)

    ref = follow_short_link(http, short)

    assert (ref.transfer_id, ref.security_hash) == (transfer.transfer_id, transfer.security_hash)
    assert len(wetransfer.requests) - before == hops  # the landing page itself is never fetched
    assert resolve_transfer(http, config, ref).status is ResolutionStatus.OK


def test_a_short_link_answering_404_is_not_found(wetransfer):
    http = _http(_config(wetransfer))

    assert follow_short_link(http, f"{wetransfer.origin}/t-unknown") is None


@pytest.mark.parametrize("target", ["https://wetransfer.com.evil.example/downloads/{id}/{hash}",
                                    "https://evil.example/downloads/{id}/{hash}",
                                    "http://wetransfer.com/downloads/{id}/{hash}",
                                    "https://wetransfer.com:8443/downloads/{id}/{hash}"])
def test_a_short_link_redirecting_off_wetransfer_is_refused(wetransfer, target):
    transfer = wetransfer.add_transfer({"x": b"x"})
    short = wetransfer.add_short_link(target.format(id=transfer.transfer_id, hash=transfer.security_hash), hops=2)

    with pytest.raises(ResolverError) as raised:
        follow_short_link(_http(_config(wetransfer)), short)

    assert raised.value.reason == "refused_host"


def test_a_direct_link_on_a_look_alike_host_is_refused(wetransfer):
    transfer = wetransfer.add_transfer({"x": b"x"}, direct_host="download.wetransfer.com.evil.example")

    with pytest.raises(ResolverError) as raised:
        _resolve(wetransfer, transfer)

    assert raised.value.reason == "refused_host"


def test_it_lists_at_most_max_files_and_keeps_the_true_count(wetransfer):
    transfer = wetransfer.add_transfer({f"f{i}": b"x" * i for i in range(1, 6)})

    resolution = _resolve(wetransfer, transfer, max_files=2)

    assert [f.name for f in resolution.files] == ["f1", "f2"]
    assert resolution.file_count == 5 and resolution.total_bytes == 15


def test_no_transfer_id_hash_or_direct_link_reaches_a_log_line(wetransfer, caplog):
    ok = wetransfer.add_transfer({"x": b"x"})
    gone = wetransfer.add_transfer({"x": b"x"})
    lookalike = wetransfer.add_transfer({"x": b"x"}, direct_host="download.wetransfer.com.evil.example")
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="services")

    resolution = _resolve(wetransfer, ok)
    assert _resolve(wetransfer, gone, url=gone.landing_url.replace(gone.security_hash, "0badc0")).status \
        is ResolutionStatus.NOT_FOUND
    with pytest.raises(ResolverError):
        _resolve(wetransfer, lookalike)

    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "evil.example" in logged
    secrets_ = [resolution.files[0].download_url.rsplit("/", 1)[1]]
    for transfer in (ok, gone, lookalike):
        secrets_ += [transfer.transfer_id, transfer.security_hash]
    for secret in secrets_:
        assert secret not in logged


def test_it_handles_landing_pages_and_short_links_only():
    resolver = RESOLVERS["wetransfer"]
    for url in ["https://wetransfer.com/downloads/0123456789abcdef0123/abc123",
                "https://we.tl/t-AbCdEf1234"]:
        assert resolver.handles(DeliveryLink("wetransfer", url, url))
    for url in ["https://wetransfer.com/", "https://download.wetransfer.com/eu2/x/y"]:
        assert not resolver.handles(DeliveryLink("wetransfer", url, url))
