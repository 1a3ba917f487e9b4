"""Resolution and R2 copies end to end (issue 19): IMAP → resolution against a local fake of the provider's API →
the real Worker on Miniflare (its outbound requests to the provider's download host answered by the same fake) →
a webhook whose r2_urls serve the exact bytes.

- A SwissTransfer link holding three files becomes a webhook listing the three files, with their sizes and the
  transfer's expiry, each file with its own r2_url serving its bytes.
- A Google Drive file link becomes a webhook whose r2_url serves the file, named as Drive names it.
"""

from __future__ import annotations

import hashlib
import time

import pytest
import requests

from harness.file_hosts.gdrive import DriveFile, FakeGoogleDrive
from harness.file_hosts.swisstransfer import SwissTransferFake
from harness.mail import make_email
from harness.pipeline import service_env

pytestmark = [pytest.mark.imap, pytest.mark.slow, pytest.mark.timeout(120)]


def content(name: str, size: int = 200_000) -> bytes:
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def r2_env(imap_account, webhook_receiver, worker, **extra) -> dict:
    return service_env(imap_account, webhook_receiver, R2_FETCH_ENABLED="true", R2_FETCH_ENDPOINT=worker.url,
                       R2_ALLOW_INSECURE="true", R2_FETCH_TOKEN=worker.token, R2_BUCKET_NAME="render-signal-test",
                       R2_PUBLIC_BASE_URL=worker.public_base_url, R2_FETCH_TIMEOUT_SECONDS="20", **extra)


@pytest.fixture
def swisstransfer():
    fake = SwissTransferFake(tls=False).start()
    yield fake
    fake.stop()


@pytest.fixture
def drive():
    fake = FakeGoogleDrive(tls=False).start()
    yield fake
    fake.stop()


def test_a_swisstransfer_link_with_three_files_becomes_three_r2_copies_with_sizes_and_expiry(
        imap_account, webhook_receiver, pipeline_factory, worker_on_miniflare, swisstransfer):
    # Given a transfer of three files at a fake of SwissTransfer's API, whose download host the Worker reaches
    files = {name: content(name, size) for name, size in (("cut.mov", 300_000), ("poster.png", 50_000),
                                                          ("notes.txt", 1_000))}
    transfer = swisstransfer.add_transfer(files, expires_in=3 * 86400)
    worker = worker_on_miniflare(swisstransfer.origin)
    env = r2_env(imap_account, webhook_receiver, worker, SWISSTRANSFER_API_BASE=swisstransfer.api_base,
                 SWISSTRANSFER_ALLOW_INSECURE="true")
    pipeline_factory(env)
    link = f"https://www.swisstransfer.com/d/{transfer.link_uuid}"
    # When an email with the link arrives
    imap_account.server.append(imap_account.user, make_email(links=[link]))
    # Then the webhook lists the three files, each copied to R2 with exactly its bytes
    body = webhook_receiver.wait_for(1, timeout=60)[0]["json"]
    [entry] = body["delivery_links"]
    assert entry["raw_url"] == link and entry["resolution"] == "ok"
    assert entry["file_count"] == 3 and entry["size_bytes"] == sum(len(data) for data in files.values())
    expires = time.mktime(time.strptime(entry["expires_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert abs(expires - transfer.expires_at) < 5
    assert [item["name"] for item in entry["files"]] == list(files)
    for item in entry["files"]:
        assert item["size_bytes"] == len(files[item["name"]]) and item["r2_url"], item
        copy = requests.get(item["r2_url"], timeout=10)
        assert copy.status_code == 200 and copy.content == files[item["name"]]


def test_a_google_drive_file_link_becomes_an_r2_copy_named_as_drive_names_it(
        imap_account, webhook_receiver, pipeline_factory, worker_on_miniflare, drive):
    # Given a shared Drive file at a fake of Drive's download host, which the Worker reaches too
    drive.add("1AbCdEfGhIjKlMnOp", DriveFile("Final cut v3.mov", 250_000))
    worker = worker_on_miniflare(drive.url)
    env = r2_env(imap_account, webhook_receiver, worker, GDRIVE_DOWNLOAD_BASE=drive.url,
                 GDRIVE_ALLOW_INSECURE="true")
    pipeline_factory(env)
    link = "https://drive.google.com/file/d/1AbCdEfGhIjKlMnOp/view?usp=sharing"
    imap_account.server.append(imap_account.user, make_email(links=[link]))
    body = webhook_receiver.wait_for(1, timeout=60)[0]["json"]
    [entry] = body["delivery_links"]
    assert entry["resolution"] == "ok" and entry["size_bytes"] == 250_000
    assert entry["files"][0]["name"] == "Final cut v3.mov"
    assert entry["r2_url"] and entry["files"][0]["r2_url"] == entry["r2_url"]
    # the fake API's origin never reaches the receiver: the direct form stays Drive's own, stable one
    assert entry["direct_url"] == "https://drive.google.com/uc?id=1AbCdEfGhIjKlMnOp&export=download"
    assert drive.url not in str(entry) and entry["original_filename"] == "Final cut v3.mov"
    copy = requests.get(entry["r2_url"], timeout=10)
    assert copy.status_code == 200 and copy.content == b"\0" * 250_000
