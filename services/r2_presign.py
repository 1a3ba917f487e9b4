"""Presigned GET URLs for the R2 objects of a private bucket, made with boto3 against R2's S3 endpoint.

boto3 is imported on the first presign only, never at module import: it costs tens of MB and only private buckets
need it. With a public bucket (or no S3 credentials) ``build_presigner`` gives the null presigner, which leaves the
Worker's ``r2_url`` as it is. boto3/botocore errors are translated into ``R2PresignError`` here and never leak out.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from config import R2Config


class R2PresignError(Exception):
    """No usable presigned URL came out; ``detail`` is safe to log (an exception type name, never a secret)."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"presign_failed: {detail}")
        self.detail = detail


class Presigner(Protocol):
    """What the offloader needs: whether presigning is on, and the URL to hand out for one object."""

    @property
    def enabled(self) -> bool: ...

    def presign(self, object_key: str, r2_url: str | None) -> str | None: ...


class NullPresigner:
    """Public bucket (or no S3 credentials): the Worker's ``r2_url`` is used as it is."""

    enabled = False

    def presign(self, object_key: str, r2_url: str | None) -> str | None:
        return r2_url


class S3Presigner:
    """Presigned GET URLs for objects of a private bucket, via boto3 against R2's S3 endpoint (created lazily)."""

    enabled = True

    def __init__(self, *, endpoint_url: str, access_key_id: str, secret_access_key: str, bucket: str,
                 ttl_seconds: int) -> None:
        self._endpoint_url = endpoint_url
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self.bucket = bucket
        self.ttl_seconds = int(ttl_seconds)
        self._client: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, r2: R2Config) -> "S3Presigner":
        endpoint, key_id, secret = r2.s3_endpoint, r2.access_key_id, r2.secret_access_key
        # presign_enabled implies the credentials and endpoint; Settings.validate refuses presigning without
        # R2_BUCKET_NAME (CONFIG: R2_BUCKET_NAME at start-up).
        assert endpoint and key_id and secret and r2.bucket_name, "presigning is not configured"
        return cls(endpoint_url=endpoint, access_key_id=key_id, secret_access_key=secret,
                   bucket=r2.bucket_name, ttl_seconds=r2.presign_ttl_seconds)

    def _s3(self) -> Any:
        with self._lock:
            if self._client is None:
                # Imported here, not at module level: boto3 costs tens of MB and only private buckets need it.
                import boto3
                from botocore.config import Config

                self._client = boto3.client(
                    "s3", endpoint_url=self._endpoint_url, region_name="auto",
                    aws_access_key_id=self._access_key_id, aws_secret_access_key=self._secret_access_key,
                    config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
            return self._client

    def presign(self, object_key: str, r2_url: str | None) -> str:
        """A presigned GET of ``object_key`` valid for ``ttl_seconds``; ``R2PresignError`` when none can be made."""
        try:
            url = self._s3().generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": object_key}, ExpiresIn=self.ttl_seconds)
        except Exception as exc:  # boto3/botocore errors are translated at this boundary
            raise R2PresignError(type(exc).__name__) from None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise R2PresignError("no URL")
        return url


def build_presigner(r2: R2Config) -> NullPresigner | S3Presigner:
    """``S3Presigner`` when ``r2.presign_enabled`` (private bucket with S3 credentials), else the null one."""
    return S3Presigner.from_config(r2) if r2.presign_enabled else NullPresigner()
