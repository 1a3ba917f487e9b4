"""Resolution and R2 copies end to end (issue 19): IMAP → resolution against a local fake of the provider's API →
the real Worker on Miniflare (its outbound requests to the provider's download host answered by the same fake) →
a webhook whose r2_urls serve the exact bytes.

- A SwissTransfer link holding three files becomes a webhook listing the three files, with their sizes and the
  transfer's expiry, each file with its own r2_url serving its bytes.
- A Google Drive file link becomes a webhook whose r2_url serves the file, named as Drive names it.
- A WeTransfer transfer of one file becomes an R2 copy of that file; one of several files becomes an R2 copy of the
  transfer's zip (the only form WeTransfer offers for all of them).
- A Smash transfer listed over two pages becomes one R2 copy per file.
- A pCloud file link becomes an R2 copy of the file its download link names (OneDrive, SharePoint and Box copies:
  tests/integration/test_share_links_r2_copy.py).
"""

from __future__ import annotations

import hashlib
import io
import time
import zipfile

import pytest
import requests

from harness.file_hosts.fromsmash import SmashFake
from harness.file_hosts.gdrive import DriveFile, FakeGoogleDrive
from harness.file_hosts.pcloud import FakePCloud, PublicLink, file_metadata
from harness.file_hosts.swisstransfer import SwissTransferFake
from harness.file_hosts.wetransfer import WeTransferFake
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
def wetransfer():
    fake = WeTransferFake(tls=False).start()
    yield fake
    fake.stop()


@pytest.fixture
def smash():
    fake = SmashFake(tls=False, api_key="smash-e2e-key", page_size=3).start()
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


def test_wetransfer_transfers_become_an_r2_copy_of_the_file_or_of_the_transfers_zip(
        imap_account, webhook_receiver, pipeline_factory, worker_on_miniflare, wetransfer):
    # Given a one-file and a two-file transfer at a fake of WeTransfer's web API, whose direct host the Worker reaches
    single = wetransfer.add_transfer({"master.wav": content("master.wav", 120_000)})
    several = wetransfer.add_transfer({"a.jpg": content("a.jpg", 40_000), "b.jpg": content("b.jpg", 30_000)},
                                      recipient=True)
    worker = worker_on_miniflare(wetransfer.origin)
    env = r2_env(imap_account, webhook_receiver, worker, RESOLVE_WETRANSFER="true",
                 WETRANSFER_API_BASE=wetransfer.api_base, WETRANSFER_ALLOW_INSECURE="true")
    pipeline_factory(env)
    # When an email with both links arrives
    imap_account.server.append(imap_account.user, make_email(links=[single.landing_url, several.landing_url]))
    body = webhook_receiver.wait_for(1, timeout=60)[0]["json"]
    first, second = body["delivery_links"]
    # Then the one file is copied as itself, listed with its own r2_url
    assert first["resolution"] == "ok" and first["raw_url"] == single.landing_url
    assert first["files"][0]["r2_url"] == first["r2_url"] and first["r2_url"]
    assert requests.get(first["r2_url"], timeout=10).content == single.files["master.wav"]
    # and the two files are listed (sizes, no per-file copy) with the transfer's zip copied as the link's r2_url
    assert second["resolution"] == "ok" and second["file_count"] == 2
    assert [(item["name"], item["size_bytes"], item["r2_url"]) for item in second["files"]] == [
        ("a.jpg", 40_000, None), ("b.jpg", 30_000, None)]
    archive = zipfile.ZipFile(io.BytesIO(requests.get(second["r2_url"], timeout=10).content))
    assert {name: archive.read(name) for name in archive.namelist()} == several.files
    # the landing pages themselves never went to the Worker: every fetch the fake served was a direct link
    assert all(not entry.path.startswith("/downloads/") for entry in wetransfer.requests)


def test_a_smash_transfer_listed_over_two_pages_becomes_one_r2_copy_per_file(
        imap_account, webhook_receiver, pipeline_factory, worker_on_miniflare, smash):
    # Given four files at a fake of Smash's API (three per page), signed URLs on its download host
    files = {f"take{i}.mov": content(f"take{i}.mov", 60_000 + i) for i in range(4)}
    transfer = smash.add_transfer(files)
    worker = worker_on_miniflare(smash.origin)
    env = r2_env(imap_account, webhook_receiver, worker, SMASH_API_KEY="smash-e2e-key", SMASH_API_BASE=smash.origin,
                 SMASH_ALLOW_INSECURE="true")
    pipeline_factory(env)
    imap_account.server.append(imap_account.user, make_email(links=[transfer.url]))
    body = webhook_receiver.wait_for(1, timeout=60)[0]["json"]
    [entry] = body["delivery_links"]
    assert entry["resolution"] == "ok" and entry["file_count"] == 4
    for item in entry["files"]:
        assert item["r2_url"], item
        assert requests.get(item["r2_url"], timeout=10).content == files[item["name"]]
    assert "X-Amz-Signature" not in str(body)


def test_a_pcloud_file_link_becomes_an_r2_copy_of_its_file(imap_account, webhook_receiver, pipeline_factory,
                                                           worker_on_miniflare):
    # Given a public link at a fake of pCloud's API, whose download host (p-lux3.pcloud.com) the Worker reaches
    pcloud = FakePCloud(tls=False).start()
    try:
        code = "XZtTpwVZnMvzSRIY2vhs6zCQgfHtI8Oya3YV"
        pcloud.add(code, PublicLink(file_metadata("Mix master v3.wav", 75_000), lifetime=3600))
        worker = worker_on_miniflare(pcloud.url)
        pipeline_factory(r2_env(imap_account, webhook_receiver, worker, PCLOUD_API_BASE=pcloud.url,
                                PCLOUD_ALLOW_INSECURE="true"))
        link = f"https://u.pcloud.link/publink/show?code={code}"
        imap_account.server.append(imap_account.user, make_email(links=[link]))
        body = webhook_receiver.wait_for(1, timeout=60)[0]["json"]
    finally:
        pcloud.stop()
    [entry] = body["delivery_links"]
    assert entry["resolution"] == "ok" and entry["files"][0]["name"] == "Mix master v3.wav"
    assert entry["r2_url"] and entry["files"][0]["r2_url"] == entry["r2_url"]
    assert entry["expires_at"] is not None and pcloud.url not in str(body)
    copy = requests.get(entry["r2_url"], timeout=10)
    assert copy.status_code == 200 and copy.content == b"\0" * 75_000
