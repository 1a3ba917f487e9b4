"""The real Worker on Miniflare, driven from Python the way the service drives it (harness/miniflare.py)."""

from __future__ import annotations

import hashlib
import os

import pytest
import requests

from tests.fixtures.file_host import FileHost, HostedFile

SOURCE_BYTES = hashlib.sha256(b"seed").digest() * 40_000  # 1.28 MB, not all one byte
SHARE_PATH = "/scl/fi/k3y9abc/Brand%20Assets.zip"
DOWNLOAD_PATH = "/cd/0/get/AbC123/file"


@pytest.fixture
def dropbox_source(file_host: FileHost) -> FileHost:
    """Plays Dropbox: the share URL redirects to dropboxusercontent.com, which answers with the file."""
    file_host.redirect(SHARE_PATH, f"https://uc4f1.dl.dropboxusercontent.com{DOWNLOAD_PATH}?dl=1")
    file_host.serve(DOWNLOAD_PATH, HostedFile(SOURCE_BYTES, "application/zip", disposition=(
        "attachment; filename=\"Brand Assets.zip\"; filename*=UTF-8''Brand%20Assets%20%C3%A9t%C3%A9.zip")))
    return file_host


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
    worker = worker_on_miniflare(dropbox_source.url)

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
    assert dropbox_source.requested == [("www.dropbox.com", SHARE_PATH),
                                        ("uc4f1.dl.dropboxusercontent.com", DOWNLOAD_PATH)]
    assert "R2_FETCH: stored key=dropbox/1a2b3c4d/5e6f7a8b/Brand%20Assets.zip" in worker.log()


def test_the_worker_refuses_a_wrong_token_and_a_foreign_host(worker_on_miniflare, dropbox_source):
    worker = worker_on_miniflare(dropbox_source.url)

    wrong_token = requests.post(worker.url, json=_job(), headers={"X-R2-FETCH-TOKEN": "nope"}, timeout=10)
    foreign = requests.post(worker.url, json=_job(source_url=f"https://dropbox.com.evil.example{SHARE_PATH}"),
                            headers={"X-R2-FETCH-TOKEN": worker.token}, timeout=10)

    assert wrong_token.status_code == 401
    assert wrong_token.json()["success"] is False
    assert foreign.status_code == 403
    assert (foreign.json()["error"], foreign.json()["reason"]) == ("policy", "host")
    assert "not allowed" in foreign.json()["detail"]
    assert dropbox_source.requested == []
    assert worker.token not in worker.log()


def test_stopping_the_worker_leaves_no_process_nor_temp_dir(worker_on_miniflare, dropbox_source):
    worker = worker_on_miniflare(dropbox_source.url)
    assert requests.post(worker.url, json=_job(), headers={"X-R2-FETCH-TOKEN": worker.token},
                         timeout=20).status_code == 200

    worker.stop()

    assert worker.proc.returncode == 0, worker.log()
    assert not os.path.exists(worker.tmpdir)
    with pytest.raises(requests.ConnectionError):
        requests.get(worker.url, timeout=2)
