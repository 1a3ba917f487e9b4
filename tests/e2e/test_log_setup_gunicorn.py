"""The one log format (log_setup.py): text and JSON lines, secrets redacted, correspondents masked, tracebacks too."""

from __future__ import annotations

import json


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
