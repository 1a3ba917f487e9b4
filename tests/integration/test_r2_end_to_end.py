"""R2 offload end to end: IMAP → orchestrator → the real Worker on Miniflare → webhook with working r2_urls
(issue 7)."""

from __future__ import annotations

import hashlib

import pytest
import requests

from harness.mail import make_email
from harness.pipeline import service_env
from tests.fixtures.file_host import HostedFile

pytestmark = [pytest.mark.imap, pytest.mark.slow]


def source_bytes(path: str) -> bytes:
    """Deterministic content per path, a few hundred KB, so a wrong or truncated copy is noticed."""
    seed = hashlib.sha256(path.encode()).digest()
    return seed * (300_000 // len(seed))


@pytest.mark.timeout(120)
def test_an_email_with_two_dropbox_links_yields_a_webhook_whose_r2_urls_serve_the_source_bytes(
        imap_account, webhook_receiver, pipeline_factory, worker_on_miniflare, file_host):
    # Given the real Worker on Miniflare, with Dropbox's hosts answered by a local file host
    for path in ("/scl/fi/aaa111/first_cut.mov", "/scl/fi/bbb222/poster.png"):
        name = path.rsplit("/", 1)[-1]
        file_host.serve(path, HostedFile(source_bytes(path), disposition=f'attachment; filename="{name}"'))
    worker = worker_on_miniflare(file_host.url)
    env = service_env(imap_account, webhook_receiver, R2_FETCH_ENABLED="true", R2_FETCH_ENDPOINT=worker.url,
                      R2_ALLOW_INSECURE="true",
                      R2_FETCH_TOKEN=worker.token, R2_BUCKET_NAME="render-signal-test",
                      R2_PUBLIC_BASE_URL=worker.public_base_url, R2_FETCH_TIMEOUT_SECONDS="20")
    pipeline = pipeline_factory(env)
    links = ["https://www.dropbox.com/scl/fi/aaa111/first_cut.mov?rlkey=k1&dl=0",
             "https://www.dropbox.com/scl/fi/bbb222/poster.png?rlkey=k2&dl=0"]
    # When an email carrying both links arrives
    imap_account.server.append(imap_account.user, make_email(links=links))
    # Then the webhook carries an r2_url per link that serves exactly the source's bytes
    body = webhook_receiver.wait_for(1, timeout=60)[0]["json"]
    entries = body["delivery_links"]
    assert [entry["raw_url"] for entry in entries] == links
    for entry, name in zip(entries, ("first_cut.mov", "poster.png"), strict=True):
        assert entry["r2_url"], entry
        assert entry["original_filename"] == name
        copy = requests.get(entry["r2_url"], timeout=10)
        assert copy.status_code == 200
        assert copy.content == source_bytes(entry["raw_url"].split("?")[0].replace("https://www.dropbox.com", ""))
    assert pipeline.store.counters()["r2_success"] == 2
