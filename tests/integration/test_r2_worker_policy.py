"""The service's offloader against the real Worker on Miniflare (issue 16): one object per link whatever junk its
query carries, the byte cap, and policy refusals that are the link's outcome, never a reason to open the circuit."""

from __future__ import annotations

import hashlib
import logging

import pytest
import requests

from config import R2Config
from email_processing.links import DeliveryLink
from services.r2_offload import R2Offloader
from tests.fixtures.file_host import FileHost, HostedFile

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

FILE_BYTES = hashlib.sha256(b"policy").digest() * 10_000  # 320 KB
FILE_PATH = "/scl/fi/k3yform/cut.mov"


@pytest.fixture
def dropbox(file_host: FileHost) -> FileHost:
    file_host.serve(FILE_PATH, HostedFile(FILE_BYTES, "video/quicktime"))
    return file_host


def offloader_for(worker, **overrides) -> R2Offloader:
    # No reuse store: what is proven here is the Worker's own keying, not the service's reuse records.
    r2 = R2Config(fetch_enabled=True, fetch_endpoint=worker.url, allow_insecure=True, fetch_token=worker.token,
                  public_base_url=worker.public_base_url, fetch_timeout_seconds=20.0, **overrides)
    return R2Offloader(r2, copy_store=None)


def link(query: str) -> DeliveryLink:
    url = f"https://www.dropbox.com{FILE_PATH}?{query}"
    return DeliveryLink("dropbox", url, url)


def test_links_differing_only_by_junk_parameters_share_one_copy_fetched_once(worker_on_miniflare, dropbox):
    worker = worker_on_miniflare(dropbox.url)
    offloader = offloader_for(worker)
    try:
        # Given the same Dropbox link three times, twice with junk parameters, in three emails
        results = [offloader.offload_links(f"e{n}", [link(query)])[0]
                   for n, query in enumerate(("rlkey=K1&dl=1", "rlkey=K1&dl=1&a=1", "a=2&rlkey=K1&utm_source=x&dl=1"))]
        # and the same path with another rlkey (another link)
        other = offloader.offload_links("e9", [link("rlkey=K2&dl=1")])[0]
    finally:
        offloader.close()

    # Then the three share one object, fetched from the source once; the other rlkey has its own
    urls = {result.r2_url for result in results}
    assert len(urls) == 1 and None not in urls, results
    assert other.r2_url and other.r2_url not in urls
    assert len(dropbox.requested) == 2, dropbox.requested
    assert worker.log().count("R2_FETCH: reused key=") == 2
    assert requests.get(other.r2_url, timeout=10).content == FILE_BYTES


def test_a_file_over_the_byte_cap_keeps_its_source_url_and_refusals_never_open_the_circuit(
        worker_on_miniflare, dropbox, caplog):
    worker = worker_on_miniflare(dropbox.url)
    offloader = offloader_for(worker, max_bytes=len(FILE_BYTES) - 1, circuit_failures=2)
    links = [link(f"rlkey=big{n}&dl=1") for n in range(5)]
    try:
        with caplog.at_level(logging.WARNING):
            results = [offloader.offload_links(f"e{n}", [item])[0] for n, item in enumerate(links)]
    finally:
        offloader.close()

    assert [result.r2_url for result in results] == [None] * 5
    assert [result.direct_url for result in results] == [item.direct_url for item in links]
    fallbacks = [r.getMessage() for r in caplog.records if "fallback to source URL" in r.getMessage()]
    assert len(fallbacks) == 5 and all("reason=policy_too_large" in line for line in fallbacks), fallbacks
    assert not any("circuit open" in r.getMessage() for r in caplog.records)
    assert offloader.breaker.allow()
    assert len(dropbox.requested) == 5, "every link reached the Worker, none was skipped by an open circuit"
    assert "rlkey=big" not in "\n".join(fallbacks), "links are capabilities: never logged"
