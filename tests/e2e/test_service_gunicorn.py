"""The service under a real Gunicorn master: start, health, config errors before binding, graceful stop."""

import socket
import subprocess
import time

import pytest

from harness.ports import free_port
from harness.service import GUNICORN, ROOT, base_env


def test_it_serves_health_json_within_seconds_on_embedded_defaults(service_factory):
    # Given nothing configured / When the service starts under Gunicorn
    started = time.monotonic()
    service = service_factory({})
    # Then /health answers JSON quickly and says the poller is not configured
    response = service.get("/health")
    assert time.monotonic() - started < 15
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["checks"]["poller"] == "not_configured"


def test_a_malformed_setting_exits_3_before_binding_the_port():
    port = free_port()
    env = base_env({"IMAP_PORT": "abc"})
    out = subprocess.run([GUNICORN, "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", "--no-control-socket",
                          "app:app"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 3
    assert out.stderr.strip().splitlines() == ["CONFIG: IMAP_PORT: expected an integer"]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()


def test_sigterm_stops_the_service_gracefully(service_factory):
    service = service_factory({}, workers=2)
    assert service.terminate(timeout=30) == 0
    assert "Shutting down: Master" in service.log_text()
