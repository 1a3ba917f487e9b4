"""The one log format (log_setup.py): text and JSON lines, secrets redacted, correspondents masked, tracebacks too."""

from __future__ import annotations

import json
import logging
import re
import sys

import pytest

import log_setup

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


def test_under_gunicorn_with_log_format_json_every_line_is_one_json_object(service_factory):
    # Given the service under Gunicorn with LOG_FORMAT=json
    service = service_factory({"LOG_FORMAT": "json", "STATUS_API_TOKEN": "status-tok-Json-1"}, workers=2)
    # When it serves a few requests (access log lines) and stops (Gunicorn's own lines)
    service.get("/health")
    service.get("/api/status", headers={"X-API-Key": "wrong"})
    assert service.terminate(timeout=30) == 0
    # Then every line of the log is one JSON object with ts, level, logger, message
    lines = [line for line in service.log_text().splitlines() if line.strip()]
    assert len(lines) >= 4
    loggers = set()
    for line in lines:
        doc = json.loads(line)
        assert {"ts", "level", "logger", "message"} <= set(doc), line
        loggers.add(doc["logger"])
    assert {"gunicorn.error", "gunicorn.access"} <= loggers
    assert any("SECURITY: rejected /api/status" in json.loads(line)["message"] for line in lines)
    assert "status-tok-Json-1" not in service.log_text()
