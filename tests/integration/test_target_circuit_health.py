"""A target's open circuit on ``/health`` and ``/api/status``, end to end: real Dovecot, a real receiver answering
503, a real redis-server, the real Flask app with its background running. The breaker this process opens is
published with the holder's status, read back by the status observer, and reported until it closes again."""

from __future__ import annotations

import time

import pytest

from background import delivery
from background.delivery import BREAKER_FAILURES
from harness.mail import make_email
from harness.pipeline import service_env
from harness.receiver import WebhookReceiver

pytestmark = [pytest.mark.imap, pytest.mark.redis, pytest.mark.timeout(120)]

TOKEN = "status-token-Cb27-do-not-print"
DROPBOX = "https://www.dropbox.com/scl/fi/hc{n}/cut.mov?rlkey=k{n}&dl=0"


@pytest.fixture
def failing_receiver():
    receiver = WebhookReceiver().start()
    receiver.respond_with(503, b"Service Unavailable")
    yield receiver
    receiver.stop()


def wait_for(app, predicate, seconds: float) -> tuple[int, dict, dict]:
    """Poll ``/health`` and ``/api/status`` until ``predicate(health, status)``: (health code, health, status)."""
    client = app.test_client()
    deadline = time.monotonic() + seconds
    while True:
        response = client.get("/health")
        status = client.get("/api/status", headers={"Authorization": f"Bearer {TOKEN}"}).get_json()
        if predicate(response.get_json(), status) or time.monotonic() > deadline:
            return response.status_code, response.get_json(), status
        time.sleep(0.2)


def target_problems(health: dict) -> list[tuple[str, str]]:
    return [(p["id"], p["state"]) for p in health["problems"] if p["kind"] == "target"]


def test_a_receiver_that_keeps_failing_opens_its_circuit_which_health_reports_until_it_closes(
        make_app, imap_account, failing_receiver, redis_url, tmp_path, monkeypatch):
    monkeypatch.setattr(delivery, "BREAKER_COOLDOWN_SECONDS", 3)  # a shorter cool-down: the rule is the same
    # Given the service on a receiver that answers 503, retrying every 0.2 s
    env = service_env(imap_account, failing_receiver, redis_url=redis_url, state_dir=str(tmp_path / "state"),
                      WEBHOOK_RETRY_SCHEDULE="0.2", STATUS_API_TOKEN=TOKEN)
    app = make_app(env)
    app.extensions["render_signal"].start_background()
    # When a few emails arrive and their deliveries keep failing
    for n in range(3):
        imap_account.server.append(imap_account.user, make_email(links=[DROPBOX.format(n=n)]))
    code, health, status = wait_for(app, lambda health, status: target_problems(health), seconds=40)
    # Then, once the breaker opened, /health is 200 degraded naming target default, and /api/status says open
    assert len(failing_receiver.events) >= BREAKER_FAILURES
    assert (code, health["status"], target_problems(health)) == (200, "degraded", [("default", "circuit_open")])
    assert [(t["id"], t["circuit"]) for t in status["targets"]] == [("default", "open")]
    # When the receiver answers again, the trial after the cool-down closes the circuit: no target problem any more
    failing_receiver.respond_with(200, b"Accepted")
    code, health, status = wait_for(
        app, lambda health, status: status["targets"][0]["circuit"] == "closed" and not target_problems(health),
        seconds=delivery.BREAKER_COOLDOWN_SECONDS + 20)
    assert status["targets"][0]["circuit"] == "closed"
    assert (code, target_problems(health)) == (200, [])
