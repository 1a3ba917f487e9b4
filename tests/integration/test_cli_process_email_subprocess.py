"""`process-email PATH [--dry-run]`: payload on stdout, decision on stderr, exit codes, the wired pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from flask import Flask

from email_processing.cli import process_email_command
from settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parents[1] / "corpus"
WITH_LINK = CORPUS / "synthetic" / "dropbox_scl_fi_notification.eml"
WITHOUT_LINK = CORPUS / "real" / "mailgun-flanker" / "no-ctype.eml"


class FakeService:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.offloader = SimpleNamespace(offload_links=self._offload)
        self.offloaded: list[str] = []
        self.delivered: list = []

    def _offload(self, email_id, links):
        from email_processing.orchestrator import OffloadedLink

        self.offloaded.append(email_id)
        return [OffloadedLink(link.provider, link.raw_url, link.direct_url, "https://r2.example/x", "x.zip")
                for link in links]

    def deliver_one(self, result):
        self.delivered.append(result)
        return {"outcome": "delivered", "status": 200}


def make_app(service: FakeService | None) -> Flask:
    app = Flask("test_cli")
    if service is not None:
        app.extensions["render_signal"] = service
    app.cli.add_command(process_email_command)
    return app


def invoke(app: Flask, *args: str):
    return app.test_cli_runner().invoke(args=["process-email", *args])


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
