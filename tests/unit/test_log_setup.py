"""The one log format (log_setup.py): text and JSON lines, secrets redacted, correspondents masked, tracebacks too."""

from __future__ import annotations

import json
import logging
import re
import sys

import pytest

import log_setup
from log_setup import ServiceFormatter, mask_address, register_secrets, scrub
from settings import Settings

OWN = "Inbox@Render-Signal.test"
PASSWORD = "imap-pw-Lr08-secret"
TEXT_LINE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) \[\d+\] "
                       r"[\w.]+: ")


@pytest.fixture(autouse=True)
def clean_registry(monkeypatch):
    """Secrets and own addresses are process-global: start each test empty and restore afterwards."""
    monkeypatch.setattr(log_setup, "_secrets", ())
    monkeypatch.setattr(log_setup, "_own_addresses", frozenset())


def record(message: str, *args, level: int = logging.INFO, name: str = "background.poller",
           exc_info=None) -> logging.LogRecord:
    return logging.getLogger(name).makeRecord(name, level, __file__, 1, message, args, exc_info)


def raised(message: str):
    try:
        raise RuntimeError(message)
    except RuntimeError:
        return sys.exc_info()


# --- format -----------------------------------------------------------------------------------------------------------

def test_text_lines_carry_utc_time_level_pid_logger_and_the_exact_message():
    line = ServiceFormatter("text").format(record("BG_POLLER: heartbeat pid=%s %s", 12, "emails_seen=3"))
    assert TEXT_LINE.match(line), line
    assert line.endswith(" background.poller: BG_POLLER: heartbeat pid=12 emails_seen=3")


def test_json_lines_have_ts_level_logger_and_the_exact_message():
    entry = record("WEBHOOK: delivered %s status=%d", "msg_1", 200, level=logging.WARNING)
    line = ServiceFormatter("json").format(entry)
    doc = json.loads(line)
    assert "\n" not in line
    assert doc["message"] == "WEBHOOK: delivered msg_1 status=200"
    assert doc["level"] == "WARNING" and doc["logger"] == "background.poller"
    assert re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$", doc["ts"])


def test_a_json_traceback_stays_on_one_line_under_exc():
    line = ServiceFormatter("json").format(record("BG_POLLER: boom", level=logging.ERROR, exc_info=raised("x")))
    doc = json.loads(line)
    assert "\n" not in line
    assert "Traceback (most recent call last)" in doc["exc"] and "RuntimeError: x" in doc["exc"]


def test_a_bad_format_at_a_call_site_is_logged_not_raised():
    line = ServiceFormatter("text").format(record("IMAP: %s %s", "only-one"))
    assert "bad log arguments" in line


# --- secrets ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["text", "json"])
def test_registered_secrets_never_reach_a_line_in_the_message_or_its_arguments(kind):
    register_secrets([PASSWORD, "whsec_c2VjcmV0LXNpZ25pbmcta2V5LTEyMzQ="])
    line = ServiceFormatter(kind).format(record("IMAP: login failed with %s (secret %s)", PASSWORD,
                                                "whsec_c2VjcmV0LXNpZ25pbmcta2V5LTEyMzQ="))
    assert PASSWORD not in line and "whsec_" not in line
    assert "***" in line


@pytest.mark.parametrize("kind", ["text", "json"])
def test_tracebacks_are_scrubbed_too(kind):
    register_secrets([PASSWORD], own_addresses=[OWN])
    exc_info = raised(f"auth {PASSWORD} for john.doe@example.com")
    line = ServiceFormatter(kind).format(record("IMAP: unexpected", level=logging.ERROR, exc_info=exc_info))
    assert PASSWORD not in line
    assert "john.doe@example.com" not in line and "j***@example.com" in line


def test_the_settings_secrets_include_the_redis_password_and_the_webhook_path():
    # Given settings with every kind of secret, registered the way create_app does
    settings = Settings.from_env({
        "REDIS_URL": "redis://:redis-pw-Qa55@127.0.0.1:6379/0", "WEBHOOK_URL": "https://hook.example/h/path-Zz19",
        "STATUS_API_TOKEN": "status-tok-Mm42", "R2_FETCH_ENABLED": "true", "R2_FETCH_ENDPOINT": "https://w.example",
        "R2_FETCH_TOKEN": "r2-tok-Pp77", "WEBHOOK_SECRET": "whsec_c2VjcmV0LXNpZ25pbmcta2V5LTEyMzQ=",
    })
    register_secrets(settings.secret_values(), own_addresses=[settings.email_address or ""])
    # When a careless call site logs them all
    line = ServiceFormatter("text").format(record(
        "CONFIG: %s %s %s %s %s", "redis://:redis-pw-Qa55@127.0.0.1:6379/0", "https://hook.example/h/path-Zz19",
        "status-tok-Mm42", "r2-tok-Pp77", "whsec_c2VjcmV0LXNpZ25pbmcta2V5LTEyMzQ="))
    # Then none of them is printed
    for secret in ("redis-pw-Qa55", "/h/path-Zz19", "status-tok-Mm42", "r2-tok-Pp77", "c2VjcmV0LXNpZ25pbmcta2V5"):
        assert secret not in line, secret


# --- addresses --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR])
def test_correspondents_are_masked_at_every_level_but_the_services_own_address_is_kept(level):
    register_secrets([], own_addresses=[OWN])
    line = ServiceFormatter("text").format(record(
        "BG_POLLER: email from %s <%s> to %s", "John Doe", "john.doe@example.com", OWN.lower(), level=level))
    assert "john.doe@example.com" not in line
    assert "j***@example.com" in line
    assert OWN.lower() in line


@pytest.mark.parametrize("address, masked", [
    ("john@example.com", "j***@example.com"),
    ("J.Doe+tag@Example.COM", "J***@example.com"),
    ("not-an-address", "***"),
    ("", ""),
])
def test_mask_address_keeps_the_first_letter_and_the_domain(address, masked):
    assert mask_address(address) == masked


def test_scrub_leaves_already_masked_addresses_alone():
    assert scrub("from j***@example.com") == "from j***@example.com"


# --- the whole service ------------------------------------------------------------------------------------------------
