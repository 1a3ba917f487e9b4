"""Unit tests of services/r2_offload.py: pure helpers, the circuit breaker, wiring, and the failure edges a real
server cannot produce on demand (odd exceptions, a broken copy store or metrics hook). The behaviour against a real
Worker-shaped HTTP server is proven in test_r2_resilience.py."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import requests

from config import R2Config
from email_processing.links import DeliveryLink
from services.r2_offload import (
    R2Offloader,
)
from settings import Settings

REPO = Path(__file__).resolve().parents[2]
TOKEN = "unit-token-7f3a9c2e5b1d"
FILE_RAW = "https://www.dropbox.com/scl/fi/aaaaaaaaaaaaaaaaaaaaa/Project%20Files.zip?rlkey=bbbbbbbbbbbbbbbbbbbbbbbbb&dl=0"
FILE_LINK = DeliveryLink("dropbox", FILE_RAW, FILE_RAW.replace("dl=0", "dl=1"))


def r2_settings(**env: str) -> Settings:
    base = {"R2_FETCH_ENABLED": "true", "R2_FETCH_ENDPOINT": "https://worker.example/fetch?x=1",
            "R2_FETCH_TOKEN": TOKEN, "R2_BUCKET_NAME": "deliveries"}
    base.update(env)
    return Settings.from_env(base)


class MemoryCopyStore:
    def __init__(self) -> None:
        self.records: dict[str, dict] = {}

    def get_r2_copy(self, source_url: str) -> dict | None:
        return self.records.get(source_url)

    def put_r2_copy(self, source_url: str, record: dict, ttl_seconds: float) -> None:
        self.records[source_url] = dict(record)


class BrokenCopyStore:
    def get_r2_copy(self, source_url: str) -> dict | None:
        raise OSError("disk gone")

    def put_r2_copy(self, source_url: str, record: dict, ttl_seconds: float) -> None:
        raise OSError("disk gone")


class RecordingMetrics:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str | None]] = []

    def incr(self, name: str, amount: int = 1, label: str | None = None) -> None:
        self.calls.append((name, amount, label))


class BrokenMetrics:
    def incr(self, name: str, amount: int = 1, label: str | None = None) -> None:
        raise RuntimeError("metrics down")


class FakeSession:
    """Stands in for requests.Session: raises ``error`` or answers ``status``/``body``."""

    def __init__(self, *, error: BaseException | None = None, status: int = 200, body: bytes = b"") -> None:
        self.error = error
        self.status = status
        self.body = body
        self.calls: list[dict] = []

    def post(self, url: str, **kwargs) -> requests.Response:
        self.calls.append({"url": url, **kwargs})
        if self.error is not None:
            raise self.error
        response = requests.Response()
        response.status_code = self.status
        response.raw = io.BytesIO(self.body)
        return response

    def close(self) -> None:
        pass


def success_body(key: str = "dropbox/00000000/11111111/Project_Files.zip") -> bytes:
    return json.dumps({"success": True, "r2_url": f"https://r2.example/{key}", "object_key": key,
                       "original_filename": "Project Files.zip"}).encode()


def make_offloader(session: FakeSession, store=None, metrics=None, **env: str) -> R2Offloader:
    return R2Offloader(R2Config.from_settings(r2_settings(**env)), store if store is not None else MemoryCopyStore(),
                       metrics, session=session)


def fallback_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("R2_TRANSFER: fallback to source URL")]


# --- object keys, file names, URLs ------------------------------------------------------------------------------


def test_boto3_is_not_imported_unless_presigning_is_on():
    # A fresh interpreter: boto3 may already be loaded in this one by the presign tests.
    code = (
        "import sys\n"
        "from config import R2Config\n"
        "from settings import Settings\n"
        "from services.r2_offload import build_offloader\n"
        "env = {'R2_FETCH_ENABLED': 'true', 'R2_FETCH_ENDPOINT': 'https://w.example/', 'R2_FETCH_TOKEN': 't'}\n"
        "build_offloader(R2Config.from_settings(Settings.from_env(env)), None).close()\n"
        "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules, 'boto3 imported'\n"
        "env.update({'R2_ACCESS_KEY_ID': 'a', 'R2_SECRET_ACCESS_KEY': 's', 'R2_ACCOUNT_ID': 'acc',"
        " 'R2_BUCKET_NAME': 'b'})\n"
        "build_offloader(R2Config.from_settings(Settings.from_env(env)), None).close()\n"
        "assert 'boto3' not in sys.modules, 'boto3 imported before the first presign'\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
