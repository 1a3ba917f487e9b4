"""One webhook attempt against the real HTTP receiver, and the pure retry-schedule helpers."""

from __future__ import annotations

import base64
import email.utils
import json
import random
import secrets
import time

import pytest
import requests
import standardwebhooks

from config import RetryPolicy, TargetConfig
from services.webhook import (
    JITTER_FRACTION,
    MAX_RETRY_AFTER_SECONDS,
    AttemptOutcome,
    WebhookError,
    WebhookSender,
    next_delay,
    parse_retry_after,
    redact_url,
)
from settings import Settings

DEFAULT_SCHEDULE = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)
BODY = json.dumps({"event_id": "msg_abc123", "subject": "Fichiers prêts", "links": ["https://x.example/f"]},
                  ensure_ascii=False).encode("utf-8")


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def settings_for(url: str, **extra: str) -> Settings:
    return Settings.from_env({"WEBHOOK_URL": url, "WEBHOOK_ALLOW_INSECURE": "true", **extra})


def target_for(url: str, **extra: str) -> TargetConfig:
    return TargetConfig.from_settings(settings_for(url, **extra))


@pytest.fixture
def make_sender():
    senders: list[WebhookSender] = []

    def make(url: str, session: requests.Session | None = None, version: str | None = None,
             **extra: str) -> WebhookSender:
        sender = WebhookSender(target_for(url, **extra), session=session, version=version)
        senders.append(sender)
        return sender

    yield make
    for sender in senders:
        sender.close()


# --- outcomes over real HTTP -------------------------------------------------------------------------------------


def test_a_body_that_cannot_be_signed_is_a_programming_error():
    sender = WebhookSender(target_for("http://127.0.0.1:9/hook/x", WEBHOOK_SECRET=new_secret()))
    try:
        with pytest.raises(WebhookError, match="UTF-8"):
            sender.attempt("msg_1", b"\xff\xfe")
        with pytest.raises(WebhookError, match="bytes"):
            sender.attempt("msg_1", "{}")  # type: ignore[arg-type]
    finally:
        sender.close()


@pytest.mark.parametrize("event_id", ["", "msg 1", "msg\r\nX-Injected: 1", "é"])
def test_a_malformed_event_id_is_a_programming_error(event_id):
    sender = WebhookSender(target_for("http://127.0.0.1:9/hook/x"))
    try:
        with pytest.raises(WebhookError):
            sender.attempt(event_id, BODY)
    finally:
        sender.close()


def test_a_sender_without_url_is_a_configuration_error():
    with pytest.raises(WebhookError, match="WEBHOOK_URL"):
        WebhookSender(TargetConfig.from_settings(Settings()))


def test_an_explicit_timestamp_is_signed_as_given():
    secret = new_secret()
    sender = WebhookSender(TargetConfig.from_settings(
        Settings().replace(webhook_url="https://hook.example/abc", webhook_secret=secret)))
    try:
        stamp = int(time.time()) - 10
        headers = sender.signed_headers("msg_1", BODY, stamp)
    finally:
        sender.close()
    assert headers["webhook-timestamp"] == str(stamp)
    standardwebhooks.Webhook(secret).verify(BODY, headers)


def test_delays_are_reproducible_with_a_seeded_rng():
    assert next_delay(2, DEFAULT_SCHEDULE, None, random.Random(7)) == next_delay(2, DEFAULT_SCHEDULE, None,
                                                                                 random.Random(7))


def test_delays_follow_the_schedule_with_bounded_jitter_and_the_last_repeats():
    rng = random.Random(42)
    for attempt in range(1, 12):
        base = DEFAULT_SCHEDULE[min(attempt, len(DEFAULT_SCHEDULE)) - 1]
        delays = [next_delay(attempt, DEFAULT_SCHEDULE, None, rng) for _ in range(200)]
        assert all(base * (1 - JITTER_FRACTION) <= d <= base * (1 + JITTER_FRACTION) for d in delays), attempt
        # jittered, not constant: items that failed together spread out
        assert max(delays) - min(delays) > base * JITTER_FRACTION
    assert 3240 <= next_delay(50, DEFAULT_SCHEDULE, None, rng) <= 3960


def test_next_delay_rejects_nonsense():
    with pytest.raises(WebhookError):
        next_delay(0, DEFAULT_SCHEDULE, None)
    with pytest.raises(WebhookError):
        next_delay(1, (), None)


def test_outcomes_are_frozen_values():
    outcome = AttemptOutcome("retry", 503, None, None, 12, "http_503")
    with pytest.raises(AttributeError):
        outcome.kind = "delivered"  # type: ignore[misc]
    assert not outcome.delivered


def test_redact_url_keeps_only_scheme_and_host():
    assert redact_url("https://hook.eu1.make.com/abc123secret?x=1") == "https://hook.eu1.make.com/…"
    assert redact_url("https://user:pw@hook.example:8443/p") == "https://hook.example:8443/…"
    assert redact_url("http://127.0.0.1:5000") == "http://127.0.0.1:5000/…"
    assert redact_url(None) == "(none)"
    assert redact_url("not a url") == "(invalid url)"
    sender = WebhookSender(target_for("http://127.0.0.1:9/hook/topsecret"))
    sender.close()
    assert "topsecret" not in sender.target and "topsecret" not in repr(sender.__dict__.get("_signer"))


def test_retry_after_is_honoured_as_a_minimum_and_capped():
    rng = random.Random(1)
    assert next_delay(1, DEFAULT_SCHEDULE, 60.0, rng) == 60.0  # longer than the 5 s step
    assert 4.5 <= next_delay(1, DEFAULT_SCHEDULE, 3.0, rng) <= 5.5  # shorter: the schedule wins
    assert next_delay(1, (0.1,), 3.0, rng) == 3.0
    assert next_delay(1, DEFAULT_SCHEDULE, 10 * 86400.0, rng) == MAX_RETRY_AFTER_SECONDS


def test_retry_after_parsing():
    now = 1_700_000_000.0
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 120 ") == 120.0
    assert parse_retry_after(email.utils.formatdate(now + 90, usegmt=True), now=now) == pytest.approx(90, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 90, usegmt=True), now=now) == 0.0
    assert parse_retry_after("999999") == MAX_RETRY_AFTER_SECONDS
    for unreadable in (None, "", "soon", "-5", "1e9"):
        assert parse_retry_after(unreadable) is None


def test_the_default_schedule_is_the_documented_one():
    assert Settings().webhook_retry_schedule == DEFAULT_SCHEDULE
    assert Settings.from_env({"WEBHOOK_RETRY_SCHEDULE": "1,2"}).webhook_retry_schedule == (1.0, 2.0)


def test_the_retry_deadline_is_retry_hours_after_the_first_attempt():
    first = 1_700_000_000.0
    assert RetryPolicy.from_settings(Settings()).deadline(first) == first + 24 * 3600
    half_an_hour = RetryPolicy.from_settings(Settings.from_env({"WEBHOOK_RETRY_HOURS": "0.5"}))
    assert half_an_hour.deadline(first) == first + 1800
