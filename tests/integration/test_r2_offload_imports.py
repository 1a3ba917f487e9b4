"""Unit tests of services/r2_offload.py: pure helpers, the circuit breaker, wiring, and the failure edges a real
server cannot produce on demand (odd exceptions, a broken copy store or metrics hook). The behaviour against a real
Worker-shaped HTTP server is proven in test_r2_resilience.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.unit.test_r2_offload_unit import FILE_RAW, TOKEN, FakeSession, MemoryCopyStore, r2_settings  # noqa: F401 - shared with the unit half

REPO = Path(__file__).resolve().parents[2]


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
