"""R2 offload end to end: IMAP → orchestrator → the real Worker on Miniflare → webhook with working r2_urls
(issue 7)."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from harness.mail import make_email
from harness.pipeline import service_env

pytestmark = [pytest.mark.imap, pytest.mark.slow]


def source_bytes(path: str) -> bytes:
    """Deterministic content per path, a few hundred KB, so a wrong or truncated copy is noticed."""
    seed = hashlib.sha256(path.encode()).digest()
    return seed * (300_000 // len(seed))


class _Source(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server API
        body = source_bytes(self.path.split("?")[0])
        name = self.path.split("?")[0].rsplit("/", 1)[-1]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Disposition", f'attachment; filename="{name}"')
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def dropbox_source():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Source)
    thread = threading.Thread(target=server.serve_forever, name="dropbox-source", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.mark.timeout(120)
def test_an_email_with_two_dropbox_links_yields_a_webhook_whose_r2_urls_serve_the_source_bytes(
        imap_account, webhook_receiver, pipeline_factory, worker_on_miniflare, dropbox_source):
    # Given the real Worker on Miniflare, with Dropbox's hosts answered by a local source server
    worker = worker_on_miniflare(dropbox_source)
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
