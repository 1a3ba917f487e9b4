"""A target's circuit breaker over real HTTP, through the real pipeline (issue 17): real Dovecot, real receivers.

A receiver that answers 503 to everything gets the breaker's threshold of attempts and then nothing for the
cool-down, while the other target receives every email at once; once it answers again, the trial after the cool-down
closes the circuit and its backlog goes out, each email once.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import pytest

from background import delivery
from background.delivery import BREAKER_FAILURES
from config import ServiceConfig
from harness.mail import make_email
from harness.pipeline import service_env
from harness.receiver import WebhookReceiver
from settings import Settings

pytestmark = [pytest.mark.imap, pytest.mark.timeout(120)]

EMAILS = 12
DROPBOX = "https://www.dropbox.com/scl/fi/circ{n}/cut.mov?rlkey=k{n}&dl=0"


@pytest.fixture
def receivers():
    started = {name: WebhookReceiver().start() for name in ("up", "down")}
    started["down"].respond_with(503, b"Service Unavailable")
    yield started
    for receiver in started.values():
        receiver.stop()


def two_targets(env: dict, receivers: dict) -> ServiceConfig:
    base = ServiceConfig.from_settings(Settings.from_env(env))
    template = base.targets[0]
    targets = tuple(dataclasses.replace(template, id=name, url=receiver.url, concurrency=2)
                    for name, receiver in receivers.items())
    return dataclasses.replace(base, targets=targets, routes=())  # no routes: every email to every target


def test_a_dead_receiver_gets_the_breakers_threshold_of_attempts_then_none_until_the_trial_then_its_backlog(
        state_backend, imap_account, receivers, pipeline_factory, caplog, monkeypatch):
    monkeypatch.setattr(delivery, "BREAKER_COOLDOWN_SECONDS", 3)  # a shorter cool-down: the rule is the same
    caplog.set_level(logging.INFO, logger="background.delivery")
    # Given two targets, "down" answering 503 throughout, and a fast retry schedule (each retry due in 0.2 s)
    env = service_env(imap_account, receivers["up"], WEBHOOK_RETRY_SCHEDULE="0.2", **state_backend)
    pipeline = pipeline_factory(env, config=two_targets(env, receivers))
    # When a dozen emails arrive
    for n in range(EMAILS):
        imap_account.server.append(imap_account.user, make_email(links=[DROPBOX.format(n=n)]))
    # Then "up" receives every one of them while "down" fails
    receivers["up"].wait_for(EMAILS, timeout=40)
    pipeline.wait_until(lambda: any("circuit open for target down" in r.getMessage() for r in caplog.records),
                        timeout=10, what="the circuit of target down opened")
    # and within the cool-down "down" is not tried again: the threshold's attempts, no retry storm at 0.2 s
    time.sleep(delivery.BREAKER_COOLDOWN_SECONDS / 2)
    tried = len(receivers["down"].events)
    assert BREAKER_FAILURES <= tried <= BREAKER_FAILURES + 2, receivers["down"].events
    # When "down" answers again, the trial after the cool-down closes the circuit and its backlog goes out once each
    receivers["down"].respond_with(200, b"Accepted")
    receivers["down"].wait_for(EMAILS, timeout=delivery.BREAKER_COOLDOWN_SECONDS + 30)
    assert any("circuit closed for target down" in r.getMessage() for r in caplog.records)
    delivered = receivers["down"].delivered_ids()
    assert len(delivered) == len(set(delivered)) == EMAILS
