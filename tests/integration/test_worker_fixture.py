"""The real Worker on Miniflare, driven from Python the way the service drives it (harness/miniflare.py)."""

from __future__ import annotations

import hashlib
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest
import requests

SOURCE_BYTES = hashlib.sha256(b"seed").digest() * 40_000  # 1.28 MB, not all one byte
SHARE_PATH = "/scl/fi/k3y9abc/Brand%20Assets.zip"
DOWNLOAD_PATH = "/cd/0/get/AbC123/file"


class _DropboxLike(BaseHTTPRequestHandler):
    """Plays Dropbox: the share URL redirects to dropboxusercontent.com, which answers with the file."""

    requested: list[tuple[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?")[0]
        self.requested.append((self.headers.get("X-Original-Host", ""), path))
        if path == SHARE_PATH:
            self.send_response(302)
            self.send_header("Location", f"https://uc4f1.dl.dropboxusercontent.com{DOWNLOAD_PATH}?dl=1")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == DOWNLOAD_PATH:
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(SOURCE_BYTES)))
            self.send_header("Content-Disposition", "attachment; filename=\"Brand Assets.zip\"; "
                             "filename*=UTF-8''Brand%20Assets%20%C3%A9t%C3%A9.zip")
            self.end_headers()
            self.wfile.write(SOURCE_BYTES)
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def dropbox_source() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    handler = type("Handler", (_DropboxLike,), {"requested": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="dropbox-source", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.requested
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _job(**overrides: str) -> dict:
    job = {
        "source_url": f"https://www.dropbox.com{SHARE_PATH}?rlkey=xyz&dl=1",
        "object_key": "dropbox/1a2b3c4d/5e6f7a8b/Brand%20Assets.zip",
        "bucket": "render-signal",
        "provider": "dropbox",
        "email_id": "a1b2c3",
    }
    job.update(overrides)
    return job


def test_the_worker_copies_a_dropbox_file_and_its_r2_url_serves_the_same_bytes(worker_on_miniflare, dropbox_source):
    # Given the Worker on Miniflare whose outbound requests reach a local server playing Dropbox
    origin, requested = dropbox_source
    worker = worker_on_miniflare(origin)

    # When the service's request is posted
    answer = requests.post(worker.url, json=_job(), headers={"X-R2-FETCH-TOKEN": worker.token}, timeout=20)

    # Then it succeeds with a public r2_url that serves the source bytes under the original name
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["success"] is True
    assert body["object_key"] == "dropbox/1a2b3c4d/5e6f7a8b/Brand%20Assets.zip"
    assert body["original_filename"] == "Brand Assets été.zip"
    assert body["r2_url"] == f"{worker.public_base_url}/dropbox/1a2b3c4d/5e6f7a8b/Brand%2520Assets.zip"
    stored = requests.get(body["r2_url"], timeout=10)
    assert stored.status_code == 200
    assert stored.content == SOURCE_BYTES
    assert stored.headers["Content-Type"] == "application/zip"
    assert "filename*=UTF-8''Brand%20Assets%20%C3%A9t%C3%A9.zip" in stored.headers["Content-Disposition"]
    # and the Worker asked for the real Dropbox hosts, in order (the share link, then the download host)
    assert requested == [("www.dropbox.com", SHARE_PATH), ("uc4f1.dl.dropboxusercontent.com", DOWNLOAD_PATH)]
    assert "R2_FETCH: stored key=dropbox/1a2b3c4d/5e6f7a8b/Brand%20Assets.zip" in worker.log()


def test_the_worker_refuses_a_wrong_token_and_a_foreign_host(worker_on_miniflare, dropbox_source):
    origin, requested = dropbox_source
    worker = worker_on_miniflare(origin)

    wrong_token = requests.post(worker.url, json=_job(), headers={"X-R2-FETCH-TOKEN": "nope"}, timeout=10)
    foreign = requests.post(worker.url, json=_job(source_url=f"https://dropbox.com.evil.example{SHARE_PATH}"),
                            headers={"X-R2-FETCH-TOKEN": worker.token}, timeout=10)

    assert wrong_token.status_code == 401
    assert wrong_token.json()["success"] is False
    assert foreign.status_code == 403
    assert (foreign.json()["error"], foreign.json()["reason"]) == ("policy", "host")
    assert "not allowed" in foreign.json()["detail"]
    assert requested == []
    assert worker.token not in worker.log()


def test_stopping_the_worker_leaves_no_process_nor_temp_dir(worker_on_miniflare, dropbox_source):
    origin, _ = dropbox_source
    worker = worker_on_miniflare(origin)
    assert requests.post(worker.url, json=_job(), headers={"X-R2-FETCH-TOKEN": worker.token},
                         timeout=20).status_code == 200

    worker.stop()

    assert worker.proc.returncode == 0, worker.log()
    assert not os.path.exists(worker.tmpdir)
    with pytest.raises(requests.ConnectionError):
        requests.get(worker.url, timeout=2)
