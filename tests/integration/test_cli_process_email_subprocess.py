"""`process-email PATH [--dry-run]`: payload on stdout, decision on stderr, exit codes, the wired pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_cli_process_email import CORPUS, WITH_LINK, FakeService  # noqa: F401 - shared with the unit half

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(30)
def test_a_real_process_separates_stdout_and_stderr_and_sets_exit_codes(tmp_path):
    # Given the command run by click in a real interpreter with a clean configuration
    code = "from email_processing.cli import process_email_command as c; c.main()"
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "LANG": "C"}
    ok = subprocess.run([sys.executable, "-c", code, str(WITH_LINK), "--dry-run"], cwd=ROOT, env=env,
                        capture_output=True, timeout=20)
    missing = subprocess.run([sys.executable, "-c", code, str(tmp_path / "none.eml"), "--dry-run"], cwd=ROOT,
                             env=env, capture_output=True, timeout=20)
    # Then the payload alone is on stdout (UTF-8 even under the C locale), the decision alone on stderr
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.decode("utf-8"))["subject"] == "Jane shared « Project Files.zip » with you"
    assert ok.stderr == b"decision: send\n"
    assert missing.returncode == 2 and missing.stdout == b"" and missing.stderr.count(b"\n") == 1
