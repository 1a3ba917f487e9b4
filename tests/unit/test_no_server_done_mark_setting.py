"""ALLOW_NO_SERVER_DONE_MARK (issue 18): the environment variable and the file's per-mailbox
``allow_no_server_done_mark`` reach ``MailboxConfig.allow_no_server_done_mark``, read like MARK_AS_READ."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from config import MailboxConfig, ServiceConfig
from config_file import collect_config_errors, load_config_file
from settings import ConfigError, Settings

MAILBOX_ENV = {"IMAP_SERVER": "imap.example", "EMAIL_ADDRESS": "me@example.com", "EMAIL_PASSWORD": "pw-s3cret",
               "WEBHOOK_URL": "https://hook.example/path-s3cret"}
FILE = """
mailboxes:
  - id: exchange
    server: outlook.office365.com
    user: studio@example.com
    password: pw
    mark_as_read: false
{extra}targets:
  - id: make
    url: https://hook.example.com/secret-path
"""
SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "config.schema.json").read_text())


def _write(tmp_path: Path, extra: str = "") -> str:
    path = tmp_path / "render-signal.yaml"
    path.write_text(textwrap.dedent(FILE).format(extra=extra), encoding="utf-8")
    return str(path)


def test_it_is_off_by_default():
    assert Settings.from_env({}).allow_no_server_done_mark is False
    assert MailboxConfig(id="default", server="s", user="u", credentials=None).allow_no_server_done_mark is False


@pytest.mark.parametrize("value, expected", [("true", True), ("false", False)])
def test_the_environment_variable_reaches_mailbox_default(value, expected):
    env = {**MAILBOX_ENV, "MARK_AS_READ": "false", "ALLOW_NO_SERVER_DONE_MARK": value}
    [mailbox] = ServiceConfig.from_settings(Settings.from_env(env)).mailboxes
    assert (mailbox.mark_as_read, mailbox.allow_no_server_done_mark) == (False, expected)


def test_a_value_that_is_not_a_documented_boolean_fails_at_start_up():
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"ALLOW_NO_SERVER_DONE_MARK": "maybe"})
    assert caught.value.variable == "ALLOW_NO_SERVER_DONE_MARK"


def test_the_file_key_reaches_its_mailbox(tmp_path):
    config, _ = load_config_file(_write(tmp_path, "    allow_no_server_done_mark: true\n"), {}, Settings())
    [mailbox] = config.mailboxes
    assert (mailbox.mark_as_read, mailbox.allow_no_server_done_mark) == (False, True)


def test_the_file_key_defaults_to_false(tmp_path):
    config, _ = load_config_file(_write(tmp_path), {}, Settings())
    assert config.mailboxes[0].allow_no_server_done_mark is False


def test_the_file_key_must_be_a_boolean(tmp_path):
    errors = collect_config_errors(_write(tmp_path, "    allow_no_server_done_mark: \"yes\"\n"), {}, Settings())
    assert errors == ["CONFIG: mailboxes[0].allow_no_server_done_mark: expected true or false (unquoted), got "
                      "a string"]


def test_the_variable_beside_the_file_is_a_conflict_naming_it(tmp_path):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"RENDER_SIGNAL_CONFIG": _write(tmp_path), "ALLOW_NO_SERVER_DONE_MARK": "true"})
    assert caught.value.variable == "RENDER_SIGNAL_CONFIG" and "ALLOW_NO_SERVER_DONE_MARK" in caught.value.reason


def test_the_schema_describes_the_key_beside_mark_as_read():
    properties = SCHEMA["$defs"]["mailbox"]["properties"]
    assert properties["allow_no_server_done_mark"] == {"type": "boolean", "default": False}
