"""Private buckets: r2_url becomes a presigned GET made with boto3, proven against a local S3 server (moto)."""

from __future__ import annotations

import dataclasses
import logging
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from config import R2Config
from email_processing.orchestrator import OffloadedLink
from services.r2_offload import R2Offloader, build_offloader, build_presigner
from services.r2_presign import S3Presigner
from settings import Settings
from tests.integration.test_r2_resilience import (
    TOKEN,
    Answer,
    FakeWorker,
    MemoryCopyStore,
    dropbox_file,
    fallback_messages,
)

BUCKET = "deliveries"
CONTENT = b"%PDF-1.7 render-signal test bytes \x00\x01\x02" * 64


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3(s3_endpoint):
    # Set up the bucket the way the Worker's binding would have it: a plain boto3 client, as for R2.
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="auto", aws_access_key_id="test-key",
                          aws_secret_access_key="test-secret",
                          config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
    client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "auto"})
    yield client


def private_bucket_settings(s3_endpoint: str, worker_url: str = "https://worker.example/", **env: str) -> Settings:
    base = {"R2_FETCH_ENABLED": "true", "R2_FETCH_ENDPOINT": worker_url, "R2_FETCH_TOKEN": TOKEN,
            "R2_BUCKET_NAME": BUCKET, "R2_ACCESS_KEY_ID": "test-key", "R2_SECRET_ACCESS_KEY": "test-secret",
            "R2_S3_ENDPOINT_URL": s3_endpoint, "R2_PRESIGN_TTL_SECONDS": "900",
            "R2_ALLOW_INSECURE": "true", "R2_S3_ALLOW_INSECURE": "true",  # local Worker and S3 server
            "R2_FETCH_TIMEOUT_SECONDS": "2"}
    base.update(env)
    return Settings.from_env(base)


def test_a_presigned_url_serves_the_object_bytes(s3, s3_endpoint):
    # Given an object in the private bucket
    s3.put_object(Bucket=BUCKET, Key="dropbox/0a1b2c3d/4e5f6071/report.pdf", Body=CONTENT)
    settings = private_bucket_settings(s3_endpoint)
    assert settings.presign_enabled
    # When it is presigned
    url = build_presigner(R2Config.from_settings(settings)).presign("dropbox/0a1b2c3d/4e5f6071/report.pdf", "https://unused.example/x")
    # Then the URL is path-style on the S3 endpoint, SigV4, valid for R2_PRESIGN_TTL_SECONDS, and serves the bytes
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == s3_endpoint
    assert parts.path == f"/{BUCKET}/dropbox/0a1b2c3d/4e5f6071/report.pdf"
    query = parse_qs(parts.query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and query["X-Amz-Expires"] == ["900"]
    assert "/auto/s3/aws4_request" in query["X-Amz-Credential"][0]
    response = requests.get(url, timeout=10)
    assert response.status_code == 200 and response.content == CONTENT


def test_an_offloaded_link_of_a_private_bucket_carries_a_presigned_url(s3, s3_endpoint, caplog):
    caplog.set_level(logging.INFO, logger="services.r2_offload")

    # Given a Worker that stores the source bytes under the requested key and answers with a non-public URL
    def store_and_answer(request: dict) -> Answer:
        key = request["body"]["object_key"]
        s3.put_object(Bucket=BUCKET, Key=key, Body=CONTENT)
        return Answer(body=(b'{"success": true, "r2_url": "https://bucket.invalid/' + key.encode() +
                            b'", "object_key": "' + key.encode() + b'", "original_filename": "Project Files.zip"}'))

    worker = FakeWorker(store_and_answer)
    store = MemoryCopyStore()
    try:
        offloader = build_offloader(R2Config.from_settings(private_bucket_settings(s3_endpoint, worker.url)), store)
        link = dropbox_file()
        # When the email's link is offloaded (twice: the second time from the reuse record)
        [first] = offloader.offload_links("email-private", [link])
        [second] = offloader.offload_links("email-private-2", [link])
    finally:
        worker.stop()
    # Then r2_url is a presigned URL that serves the source bytes, the source URLs are kept beside it
    assert first.raw_url == link.raw_url and first.direct_url == link.direct_url
    assert first.original_filename == "Project Files.zip"
    assert first.r2_url.startswith(s3_endpoint) and "X-Amz-Signature=" in first.r2_url
    assert requests.get(first.r2_url, timeout=10).content == CONTENT
    # and the reuse record keeps the stable object URL, never a presigned one (those expire); reuse presigns anew
    [record] = store.records.values()
    assert record["r2_url"].startswith("https://bucket.invalid/") and "X-Amz" not in str(record)
    assert worker.request_count == 1
    assert second.r2_url.startswith(s3_endpoint) and requests.get(second.r2_url, timeout=10).content == CONTENT
    assert "test-secret" not in caplog.text


def test_presigning_failure_falls_back_to_the_source_url(s3_endpoint, caplog):
    # Given a private bucket whose S3 endpoint boto3 refuses (presigning cannot work)
    worker = FakeWorker(lambda request: Answer(
        body=b'{"success": true, "r2_url": "https://bucket.invalid/k", "object_key": "k"}'))
    try:
        settings = dataclasses.replace(private_bucket_settings(s3_endpoint, worker.url),
                                       r2_s3_endpoint_url="https://bad endpoint")
        offloader = R2Offloader(R2Config.from_settings(settings), MemoryCopyStore())
        link = dropbox_file()
        # When
        result = offloader.offload_links("email-nopresign", [link])
    finally:
        worker.stop()
    # Then the link keeps its source URLs, logged as reason=presign_failed
    assert result == [OffloadedLink("dropbox", link.raw_url, link.direct_url, None, None)]
    [message] = fallback_messages(caplog)
    assert "reason=presign_failed" in message and "email_id=email-nopresign" in message


def test_a_public_bucket_keeps_the_workers_url(s3_endpoint):
    # Given a public base URL (presigning off even with credentials)
    settings = private_bucket_settings(s3_endpoint, R2_PUBLIC_BASE_URL="https://files.example")
    # Then the presigner is the null one, which leaves r2_url alone
    assert not settings.presign_enabled
    presigner = build_presigner(R2Config.from_settings(settings))
    assert not isinstance(presigner, S3Presigner)
    assert presigner.presign("k", "https://files.example/k") == "https://files.example/k"


def test_a_private_bucket_worker_answering_a_null_r2_url_gets_a_presigned_url(s3, s3_endpoint):
    # Given the real Worker's answer for a private bucket (no R2_PUBLIC_BASE_URL): success, r2_url null, object_key
    def store_and_answer_null(request: dict) -> Answer:
        key = request["body"]["object_key"]
        s3.put_object(Bucket=BUCKET, Key=key, Body=CONTENT)
        return Answer(body=(b'{"success": true, "r2_url": null, "object_key": "' + key.encode() +
                            b'", "original_filename": "cut.mov"}'))

    worker = FakeWorker(store_and_answer_null)
    store = MemoryCopyStore()
    try:
        offloader = build_offloader(R2Config.from_settings(private_bucket_settings(s3_endpoint, worker.url)), store)
        link = dropbox_file()
        [first] = offloader.offload_links("email-null-1", [link])
        [second] = offloader.offload_links("email-null-2", [link])
    finally:
        worker.stop()
    # Then the link carries a presigned URL serving the bytes, also when reused, and the Worker was called once
    for result in (first, second):
        assert result.r2_url.startswith(s3_endpoint) and "X-Amz-Signature=" in result.r2_url
        assert requests.get(result.r2_url, timeout=10).content == CONTENT
    assert worker.request_count == 1


def test_a_null_r2_url_without_presigning_falls_back_to_the_source(caplog):
    worker = FakeWorker(lambda request: Answer(body=b'{"success": true, "r2_url": null, "object_key": "k/x"}'))
    try:
        settings = Settings.from_env({"R2_FETCH_ENABLED": "true", "R2_FETCH_ENDPOINT": worker.url,
                                      "R2_ALLOW_INSECURE": "true", "R2_FETCH_TOKEN": TOKEN,
                                      "R2_FETCH_TIMEOUT_SECONDS": "2"})
        offloader = build_offloader(R2Config.from_settings(settings), MemoryCopyStore())
        [result] = offloader.offload_links("email-null-3", [dropbox_file()])
    finally:
        worker.stop()
    assert result.r2_url is None
    assert any("reason=missing_r2_url" in message for message in fallback_messages(caplog))
