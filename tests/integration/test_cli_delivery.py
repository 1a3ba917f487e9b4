"""``flask --app app process-email PATH.eml`` without --dry-run: the real pipeline for one saved email."""

from __future__ import annotations

import subprocess
import sys

from harness.mail import event_id_of, make_email
from harness.service import ROOT, base_env


def run_cli(env: dict, path: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flask", "--app", "app", "process-email", path], cwd=ROOT,
                          env=base_env(env), capture_output=True, text=True, timeout=60)


def test_it_delivers_a_saved_email_once_through_the_outbox(webhook_receiver, tmp_path):
    # Given a saved email with a Dropbox link and a configured webhook
    raw = make_email()
    path = tmp_path / "saved.eml"
    path.write_bytes(raw)
    env = {"WEBHOOK_URL": webhook_receiver.url, "WEBHOOK_ALLOW_INSECURE": "true", "STATE_DIR": str(tmp_path / "var")}
    # When the command runs twice
    first = run_cli(env, str(path))
    second = run_cli(env, str(path))
    # Then the receiver got it once, with the email's webhook-id, and the second run knew it was delivered
    assert first.returncode == 0, first.stderr
    assert "decision: send" in first.stderr and '"outcome": "delivered"' in first.stderr
    assert second.returncode == 0 and '"outcome": "already_known"' in second.stderr
    assert webhook_receiver.delivered_ids() == [event_id_of(raw)]
