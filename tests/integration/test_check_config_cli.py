"""`flask --app app check-config [PATH] [--allow-missing-env]` in a real process: every error, exit codes, no side
effects."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLASK = ROOT / ".venv" / "bin" / "flask"

VALID = """\
mailboxes:
  - id: studio
    server: imap.example.com
    user: studio@example.com
    password: ${STUDIO_PASSWORD}
  - id: default
    server: imap.example.com
    user: default@example.com
    password: plain-pass
targets:
  - id: make
    url: ${MAKE_URL}
  - id: n8n
    url: https://n8n.example.com/webhook/x
  - id: archive
    url: https://archive.example.com/in
routes:
  - match: {mailbox: [studio]}
    to: [make, n8n]
  - to: [archive]
"""

INVALID = """\
mailboxes:
  - id: 2
    server: imap.example.com
    user: u
    password: ${NOT_SET}
    pasword: x
targets:
  - id: make
    url: http://insecure.example.com/
    window: {timezone: UTC, from: 19:00}
routes:
  - to: [make, ghost]
"""


def check_config(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # A clean environment: nothing of the developer's (or CI's) settings leaks in.
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "LANG": "C.UTF-8", "STATE_DIR": str(cwd / "var")}
    return subprocess.run([str(FLASK), "--app", "app", "check-config", *args], cwd=cwd, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=30)


@pytest.mark.timeout(60)
def test_a_valid_file_prints_ok_with_the_counts_and_exits_0_starting_nothing(tmp_path):
    # Given a valid file and the variables it references
    path = tmp_path / "render-signal.yaml"
    path.write_text(VALID)
    env = {"STUDIO_PASSWORD": "s3cret-pass", "MAKE_URL": "https://hook.eu1.make.com/abc"}
    # When it is checked
    result = check_config(tmp_path, str(path), env=env)
    # Then one OK line, exit 0, and no state was created (no store, no lock file, no poller)
    assert (result.returncode, result.stdout) == (0, "OK: 2 mailboxes, 3 targets, 2 routes\n"), result.stderr
    assert not (tmp_path / "var").exists()
    assert "s3cret-pass" not in result.stdout + result.stderr


@pytest.mark.timeout(60)
def test_an_invalid_file_prints_every_error_one_line_each_and_exits_3(tmp_path):
    path = tmp_path / "render-signal.yaml"
    path.write_text(INVALID)
    result = check_config(tmp_path, str(path))
    assert result.returncode == 3, result.stderr
    assert result.stdout.splitlines() == [
        "CONFIG: mailboxes[0].pasword: unknown key (did you mean password?)",
        'CONFIG: mailboxes[0].id: expected a string, YAML read the number 2: quote the value, e.g. "2"',
        "CONFIG: mailboxes[0].password: ${NOT_SET} is not set in the environment",
        "CONFIG: targets[0].url: must be https:// (set allow_insecure=true for a local receiver)",
        'CONFIG: targets[0].window.from: YAML read the number 1140 (an unquoted 19:00?): quote the time, e.g. "19:00"',
        "CONFIG: routes[0].to[1]: unknown target 'ghost'",
    ]


@pytest.mark.timeout(60)
def test_allow_missing_env_accepts_unset_references(tmp_path):
    # Given the valid file checked where its secrets are not set
    path = tmp_path / "render-signal.yaml"
    path.write_text(VALID)
    without = check_config(tmp_path, str(path))
    allowed = check_config(tmp_path, str(path), "--allow-missing-env")
    # Then the references are errors, unless --allow-missing-env
    assert without.returncode == 3 and without.stdout.splitlines() == [
        "CONFIG: mailboxes[0].password: ${STUDIO_PASSWORD} is not set in the environment",
        "CONFIG: targets[0].url: ${MAKE_URL} is not set in the environment"]
    assert (allowed.returncode, allowed.stdout) == (0, "OK: 2 mailboxes, 3 targets, 2 routes\n"), allowed.stderr


@pytest.mark.timeout(60)
def test_the_path_defaults_to_render_signal_config(tmp_path):
    path = tmp_path / "render-signal.yaml"
    path.write_text(VALID)
    result = check_config(tmp_path, "--allow-missing-env", env={"RENDER_SIGNAL_CONFIG": str(path)})
    assert (result.returncode, result.stdout) == (0, "OK: 2 mailboxes, 3 targets, 2 routes\n"), result.stderr


@pytest.mark.timeout(60)
def test_the_file_beside_a_per_mailbox_variable_is_refused(tmp_path):
    path = tmp_path / "render-signal.yaml"
    path.write_text(VALID)
    result = check_config(tmp_path, env={"RENDER_SIGNAL_CONFIG": str(path), "IMAP_SERVER": "imap.example.com"})
    assert result.returncode == 3
    assert "CONFIG: RENDER_SIGNAL_CONFIG: cannot be combined with IMAP_SERVER" in result.stdout + result.stderr


@pytest.mark.timeout(60)
def test_without_a_path_or_render_signal_config_it_is_a_usage_error(tmp_path):
    result = check_config(tmp_path)
    assert result.returncode == 2 and "give PATH or set RENDER_SIGNAL_CONFIG" in result.stderr
