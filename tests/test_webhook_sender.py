"""One webhook attempt against the real HTTP receiver, and the pure retry-schedule helpers."""

from __future__ import annotations

import base64
import email.utils
import json
import random
import secrets
import threading
import time

import pytest
import requests
import standardwebhooks
from standardwebhooks.webhooks import WebhookVerificationError

from services.webhook import (
    EXCERPT_CHARS,
    JITTER_FRACTION,
    MAX_RETRY_AFTER_SECONDS,
    AttemptOutcome,
    WebhookError,
    WebhookSender,
    classify_status,
    next_delay,
    parse_retry_after,
    redact_url,
    retry_deadline,
)
from settings import Settings
from harness.receiver import Answer

DEFAULT_SCHEDULE = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)
BODY = json.dumps({"event_id": "msg_abc123", "subject": "Fichiers prêts", "links": ["https://x.example/f"]},
                  ensure_ascii=False).encode("utf-8")


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def settings_for(url: str, **extra: str) -> Settings:
    return Settings.from_env({"WEBHOOK_URL": url, "WEBHOOK_ALLOW_INSECURE": "true", **extra})


@pytest.fixture
def make_sender():
    senders: list[WebhookSender] = []

    def make(url: str, session: requests.Session | None = None, version: str | None = None,
             **extra: str) -> WebhookSender:
        sender = WebhookSender(settings_for(url, **extra), session=session, version=version)
        senders.append(sender)
        return sender

    yield make
    for sender in senders:
        sender.close()


# --- outcomes over real HTTP -------------------------------------------------------------------------------------

@pytest.mark.integration
def test_a_make_style_200_accepted_is_delivered(webhook_receiver, make_sender):
    sender = make_sender(webhook_receiver.url)

    outcome = sender.attempt("msg_abc123", BODY)

    assert outcome.kind == "delivered" and outcome.delivered
    assert (outcome.status, outcome.error, outcome.retry_after) == (200, None, None)
    assert outcome.excerpt == "Accepted"
    assert outcome.elapsed_ms >= 0
    [event] = webhook_receiver.wait_for(1, timeout=2)
    assert event["body"] == BODY
    assert event["json"]["subject"] == "Fichiers prêts"
    assert event["headers"]["content-type"] == "application/json"


@pytest.mark.integration
def test_a_503_is_retried_and_keeps_an_excerpt_of_the_answer(webhook_receiver, make_sender):
    webhook_receiver.answer_sequence([(503, b"Scenario queue is full\nplease retry")])

    outcome = make_sender(webhook_receiver.url).attempt("msg_1", BODY)

    assert (outcome.kind, outcome.status, outcome.error) == ("retry", 503, "http_503")
    # newlines collapsed: an excerpt goes into single-line logs
    assert outcome.excerpt == "Scenario queue is full please retry"
    assert outcome.retry_after is None


@pytest.mark.integration
@pytest.mark.parametrize("status", [408, 429, 500, 502, 504])
def test_408_429_and_5xx_are_retried(webhook_receiver, make_sender, status):
    webhook_receiver.fail_next(1, status=status)

    outcome = make_sender(webhook_receiver.url).attempt("msg_1", BODY)

    assert (outcome.kind, outcome.status, outcome.error) == ("retry", status, f"http_{status}")


@pytest.mark.integration
def test_retry_after_in_seconds_is_reported(webhook_receiver, make_sender):
    webhook_receiver.fail_next(1, status=429, headers={"Retry-After": "3"})

    outcome = make_sender(webhook_receiver.url).attempt("msg_1", BODY)

    assert (outcome.kind, outcome.status, outcome.retry_after) == ("retry", 429, 3.0)


@pytest.mark.integration
def test_retry_after_as_an_http_date_is_converted_to_seconds(webhook_receiver, make_sender):
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    webhook_receiver.fail_next(1, status=503, headers={"Retry-After": when})

    outcome = make_sender(webhook_receiver.url).attempt("msg_1", BODY)

    assert outcome.kind == "retry"
    assert 110 <= outcome.retry_after <= 121


@pytest.mark.integration
def test_a_400_is_permanent_with_status_and_a_bounded_excerpt(webhook_receiver, make_sender):
    webhook_receiver.answer_sequence([(400, "é" * 20_000)])  # 40 KB of two-byte characters

    outcome = make_sender(webhook_receiver.url).attempt("msg_1", BODY)

    assert (outcome.kind, outcome.status, outcome.error) == ("permanent", 400, "http_400")
    assert outcome.excerpt.startswith("éééé")
    assert len(outcome.excerpt) <= EXCERPT_CHARS


@pytest.mark.integration
@pytest.mark.parametrize("status", [401, 403, 404, 410, 422])
def test_other_4xx_are_permanent(webhook_receiver, make_sender, status):
    webhook_receiver.fail_next(1, status=status)

    outcome = make_sender(webhook_receiver.url).attempt("msg_1", BODY)

    assert (outcome.kind, outcome.error) == ("permanent", f"http_{status}")


@pytest.mark.integration
def test_a_redirect_is_permanent_and_not_followed(make_webhook_receiver, make_sender):
    target = make_webhook_receiver()
    source = make_webhook_receiver()
    source.answer_sequence([(301, b"moved", {"Location": target.url})])

    outcome = make_sender(source.url).attempt("msg_1", BODY)

    assert (outcome.kind, outcome.status, outcome.error) == ("permanent", 301, "http_301")
    assert len(source.events) == 1
    assert target.events == []


@pytest.mark.integration
def test_a_receiver_that_is_down_means_retry_connection_error(webhook_receiver, make_sender):
    webhook_receiver.go_down()

    outcome = make_sender(webhook_receiver.url).attempt("msg_1", BODY)

    assert (outcome.kind, outcome.status, outcome.error) == ("retry", None, "connection_error")


@pytest.mark.integration
def test_a_connection_dropped_mid_request_means_retry(webhook_receiver, make_sender):
    webhook_receiver.answer_sequence([Answer(drop=True)])

    outcome = make_sender(webhook_receiver.url).attempt("msg_1", BODY)

    assert (outcome.kind, outcome.error) == ("retry", "connection_error")


@pytest.mark.integration
def test_a_slow_receiver_times_out_within_the_configured_timeout(webhook_receiver, make_sender):
    webhook_receiver.set_delay(5)
    sender = make_sender(webhook_receiver.url, WEBHOOK_TIMEOUT_SECONDS="1")

    started = time.monotonic()
    outcome = sender.attempt("msg_1", BODY)
    took = time.monotonic() - started

    assert (outcome.kind, outcome.status, outcome.error) == ("retry", None, "timeout")
    assert 0.9 <= took < 4, took
    assert 900 <= outcome.elapsed_ms < 4000


@pytest.mark.integration
def test_the_pool_survives_the_receiver_restarting(webhook_receiver, make_sender):
    # Given a kept-alive pooled connection
    sender = make_sender(webhook_receiver.url)
    assert sender.attempt("msg_1", BODY).delivered
    # When the receiver restarts on the same port
    webhook_receiver.go_down()
    webhook_receiver.come_up()
    # Then the next attempt opens a new connection and is delivered
    assert sender.attempt("msg_2", BODY).delivered
    assert webhook_receiver.delivered_ids() == ["msg_1", "msg_2"]


# --- headers, signature ------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_standard_webhooks_headers_verify_with_the_reference_package(webhook_receiver, make_sender):
    secret = new_secret()
    sender = make_sender(webhook_receiver.url, WEBHOOK_SECRET=secret)

    assert sender.attempt("msg_abc123", BODY).delivered

    [event] = webhook_receiver.wait_for(1, timeout=2)
    headers = event["headers"]
    assert headers["webhook-id"] == "msg_abc123"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    assert headers["webhook-signature"].startswith("v1,")
    assert standardwebhooks.Webhook(secret).verify(event["body"], headers) == json.loads(BODY)


@pytest.mark.integration
def test_the_signature_fails_with_a_wrong_secret_or_a_changed_body(webhook_receiver, make_sender):
    sender = make_sender(webhook_receiver.url, WEBHOOK_SECRET=new_secret())
    assert sender.attempt("msg_1", BODY).delivered
    [event] = webhook_receiver.wait_for(1, timeout=2)

    with pytest.raises(WebhookVerificationError):
        standardwebhooks.Webhook(new_secret()).verify(event["body"], event["headers"])
    with pytest.raises(WebhookVerificationError):
        standardwebhooks.Webhook(new_secret()).verify(event["body"] + b" ", event["headers"])


@pytest.mark.integration
def test_the_webhook_id_is_stable_across_retries_and_the_timestamp_is_fresh(webhook_receiver, make_sender):
    webhook_receiver.fail_next(2)
    secret = new_secret()
    sender = make_sender(webhook_receiver.url, WEBHOOK_SECRET=secret)

    kinds = [sender.attempt("msg_same", BODY).kind for _ in range(3)]

    assert kinds == ["retry", "retry", "delivered"]
    events = webhook_receiver.events
    assert [event["headers"]["webhook-id"] for event in events] == ["msg_same"] * 3
    for event in events:
        standardwebhooks.Webhook(secret).verify(event["body"], event["headers"])


@pytest.mark.integration
def test_there_is_no_signature_header_without_a_secret(webhook_receiver, make_sender):
    assert make_sender(webhook_receiver.url).attempt("msg_1", BODY).delivered

    [event] = webhook_receiver.wait_for(1, timeout=2)
    assert "webhook-signature" not in event["headers"]
    assert event["headers"]["webhook-id"] == "msg_1"


@pytest.mark.integration
def test_the_user_agent_names_the_service_and_its_version(webhook_receiver, make_sender):
    make_sender(webhook_receiver.url).attempt("msg_1", BODY)
    make_sender(webhook_receiver.url, version="1a2b3c4").attempt("msg_2", BODY)
    make_sender(webhook_receiver.url, RENDER_GIT_COMMIT="0123456789abcdef0123").attempt("msg_3", BODY)

    agents = [event["headers"]["user-agent"] for event in webhook_receiver.wait_for(3, timeout=2)]
    assert agents == ["render-signal/dev", "render-signal/1a2b3c4", "render-signal/0123456789ab"]


@pytest.mark.unit
def test_an_explicit_timestamp_is_signed_as_given():
    secret = new_secret()
    sender = WebhookSender(Settings().replace(webhook_url="https://hook.example/abc", webhook_secret=secret))
    try:
        stamp = int(time.time()) - 10
        headers = sender.signed_headers("msg_1", BODY, stamp)
    finally:
        sender.close()
    assert headers["webhook-timestamp"] == str(stamp)
    standardwebhooks.Webhook(secret).verify(BODY, headers)


# --- TLS ---------------------------------------------------------------------------------------------------------

@pytest.fixture
def tls_receiver(make_webhook_receiver, tmp_path):
    import ssl

    import trustme  # pinned in requirements-dev.txt: no skip that could hide its absence

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return make_webhook_receiver(tls=server_context), str(ca_file)


@pytest.mark.integration
def test_tls_certificates_are_verified(tls_receiver, make_sender):
    receiver, ca_file = tls_receiver
    assert receiver.url.startswith("https://")

    # An unknown CA: never sent in clear or to an impostor, retried (the certificate may get fixed)
    untrusted = make_sender(receiver.url).attempt("msg_1", BODY)
    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE from the environment overrides session.verify
    session.verify = ca_file
    trusted = make_sender(receiver.url, session=session).attempt("msg_2", BODY)
    session.close()

    assert (untrusted.kind, untrusted.error) == ("retry", "tls_error")
    assert trusted.delivered
    assert receiver.delivered_ids() == ["msg_2"]


# --- programming and configuration errors -----------------------------------------------------------------------

@pytest.mark.unit
def test_a_sender_without_url_is_a_configuration_error():
    with pytest.raises(WebhookError, match="WEBHOOK_URL"):
        WebhookSender(Settings())


@pytest.mark.unit
@pytest.mark.parametrize("event_id", ["", "msg 1", "msg\r\nX-Injected: 1", "é"])
def test_a_malformed_event_id_is_a_programming_error(event_id):
    sender = WebhookSender(settings_for("http://127.0.0.1:9/hook/x"))
    try:
        with pytest.raises(WebhookError):
            sender.attempt(event_id, BODY)
    finally:
        sender.close()


@pytest.mark.unit
def test_a_body_that_cannot_be_signed_is_a_programming_error():
    sender = WebhookSender(settings_for("http://127.0.0.1:9/hook/x", WEBHOOK_SECRET=new_secret()))
    try:
        with pytest.raises(WebhookError, match="UTF-8"):
            sender.attempt("msg_1", b"\xff\xfe")
        with pytest.raises(WebhookError, match="bytes"):
            sender.attempt("msg_1", "{}")  # type: ignore[arg-type]
    finally:
        sender.close()


@pytest.mark.unit
def test_redact_url_keeps_only_scheme_and_host():
    assert redact_url("https://hook.eu1.make.com/abc123secret?x=1") == "https://hook.eu1.make.com/…"
    assert redact_url("https://user:pw@hook.example:8443/p") == "https://hook.example:8443/…"
    assert redact_url("http://127.0.0.1:5000") == "http://127.0.0.1:5000/…"
    assert redact_url(None) == "(none)"
    assert redact_url("not a url") == "(invalid url)"
    sender = WebhookSender(settings_for("http://127.0.0.1:9/hook/topsecret"))
    sender.close()
    assert "topsecret" not in sender.target and "topsecret" not in repr(sender.__dict__.get("_signer"))


# --- classification and schedule (pure) -------------------------------------------------------------------------

@pytest.mark.unit
@pytest.mark.parametrize("status, kind", [
    (200, "delivered"), (201, "delivered"), (202, "delivered"), (204, "delivered"), (299, "delivered"),
    (301, "permanent"), (302, "permanent"), (307, "permanent"), (308, "permanent"),
    (400, "permanent"), (401, "permanent"), (404, "permanent"), (413, "permanent"),
    (408, "retry"), (429, "retry"), (500, "retry"), (503, "retry"), (599, "retry"),
])
def test_status_classification(status, kind):
    assert classify_status(status)[0] == kind


@pytest.mark.unit
def test_retry_after_parsing():
    now = 1_700_000_000.0
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 120 ") == 120.0
    assert parse_retry_after(email.utils.formatdate(now + 90, usegmt=True), now=now) == pytest.approx(90, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 90, usegmt=True), now=now) == 0.0
    assert parse_retry_after("999999") == MAX_RETRY_AFTER_SECONDS
    for unreadable in (None, "", "soon", "-5", "1e9"):
        assert parse_retry_after(unreadable) is None


@pytest.mark.unit
def test_the_default_schedule_is_the_documented_one():
    assert Settings().webhook_retry_schedule == DEFAULT_SCHEDULE
    assert Settings.from_env({"WEBHOOK_RETRY_SCHEDULE": "1,2"}).webhook_retry_schedule == (1.0, 2.0)


@pytest.mark.unit
def test_delays_follow_the_schedule_with_bounded_jitter_and_the_last_repeats():
    rng = random.Random(42)
    for attempt in range(1, 12):
        base = DEFAULT_SCHEDULE[min(attempt, len(DEFAULT_SCHEDULE)) - 1]
        delays = [next_delay(attempt, DEFAULT_SCHEDULE, None, rng) for _ in range(200)]
        assert all(base * (1 - JITTER_FRACTION) <= d <= base * (1 + JITTER_FRACTION) for d in delays), attempt
        # jittered, not constant: items that failed together spread out
        assert max(delays) - min(delays) > base * JITTER_FRACTION
    assert 3240 <= next_delay(50, DEFAULT_SCHEDULE, None, rng) <= 3960


@pytest.mark.unit
def test_delays_are_reproducible_with_a_seeded_rng():
    assert next_delay(2, DEFAULT_SCHEDULE, None, random.Random(7)) == next_delay(2, DEFAULT_SCHEDULE, None,
                                                                                 random.Random(7))


@pytest.mark.unit
def test_retry_after_is_honoured_as_a_minimum_and_capped():
    rng = random.Random(1)
    assert next_delay(1, DEFAULT_SCHEDULE, 60.0, rng) == 60.0  # longer than the 5 s step
    assert 4.5 <= next_delay(1, DEFAULT_SCHEDULE, 3.0, rng) <= 5.5  # shorter: the schedule wins
    assert next_delay(1, (0.1,), 3.0, rng) == 3.0
    assert next_delay(1, DEFAULT_SCHEDULE, 10 * 86400.0, rng) == MAX_RETRY_AFTER_SECONDS


@pytest.mark.unit
def test_next_delay_rejects_nonsense():
    with pytest.raises(WebhookError):
        next_delay(0, DEFAULT_SCHEDULE, None)
    with pytest.raises(WebhookError):
        next_delay(1, (), None)


@pytest.mark.unit
def test_the_retry_deadline_is_retry_hours_after_the_first_attempt():
    first = 1_700_000_000.0
    assert retry_deadline(first, Settings()) == first + 24 * 3600
    assert retry_deadline(first, Settings.from_env({"WEBHOOK_RETRY_HOURS": "0.5"})) == first + 1800


@pytest.mark.unit
def test_outcomes_are_frozen_values():
    outcome = AttemptOutcome("retry", 503, None, None, 12, "http_503")
    with pytest.raises(AttributeError):
        outcome.kind = "delivered"  # type: ignore[misc]
    assert not outcome.delivered


@pytest.mark.integration
def test_one_sender_per_thread_delivers_concurrently(webhook_receiver, make_sender):
    # The delivery loop may run several threads; each owns a sender (sessions are not shared).
    results: list[str] = []

    def deliver(index: int) -> None:
        results.append(make_sender(webhook_receiver.url).attempt(f"msg_{index}", BODY).kind)

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == ["delivered"] * 5
    assert sorted(webhook_receiver.delivered_ids()) == [f"msg_{i}" for i in range(5)]
