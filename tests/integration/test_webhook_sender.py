"""One webhook attempt against the real HTTP receiver, and the pure retry-schedule helpers."""

from __future__ import annotations

import email.utils
import functools
import json
import threading
import time

import pytest
import requests
import standardwebhooks
from standardwebhooks.webhooks import WebhookVerificationError

from config import TargetConfig
from harness.receiver import Answer
from services.webhook import (
    EXCERPT_CHARS,
    WebhookSender,
    classify_status,
)
from tests.unit.test_webhook_sender import BODY, new_secret, settings_for  # noqa: F401 - shared with the unit half


@pytest.fixture
def make_webhook_receiver(make_webhook_receiver):
    """This file posts placeholder bodies (``msg_1``, ``{"k": 1}``), not webhooks: no payload contract here."""
    return functools.partial(make_webhook_receiver, contract=False)


@pytest.fixture
def make_sender():
    senders: list[WebhookSender] = []

    def make(url: str, session: requests.Session | None = None, version: str | None = None,
             **extra: str) -> WebhookSender:
        settings = settings_for(url, **extra)
        # Without an explicit version the sender used to fall back to RENDER_GIT_COMMIT's first 12 characters
        # itself; it no longer sees the settings, so that fallback is made here (the service always passes one).
        version = version or (settings.render_git_commit or "")[:12] or None
        sender = WebhookSender(TargetConfig.from_settings(settings), session=session, version=version)
        senders.append(sender)
        return sender

    yield make
    for sender in senders:
        sender.close()


# --- outcomes over real HTTP -------------------------------------------------------------------------------------

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


def test_a_503_is_retried_and_keeps_an_excerpt_of_the_answer(webhook_receiver, make_sender):
    webhook_receiver.answer_sequence([(503, b"Scenario queue is full\nplease retry")])

    outcome = make_sender(webhook_receiver.url).attempt("msg_1", BODY)

    assert (outcome.kind, outcome.status, outcome.error) == ("retry", 503, "http_503")
    # newlines collapsed: an excerpt goes into single-line logs
    assert outcome.excerpt == "Scenario queue is full please retry"
    assert outcome.retry_after is None


@pytest.mark.parametrize("status", [408, 429, 500, 502, 504])
def test_408_429_and_5xx_are_retried(webhook_receiver, make_sender, status):
    webhook_receiver.fail_next(1, status=status)

    outcome = make_sender(webhook_receiver.url).attempt("msg_1", BODY)

    assert (outcome.kind, outcome.status, outcome.error) == ("retry", status, f"http_{status}")


def test_retry_after_in_seconds_is_reported(webhook_receiver, make_sender):
    webhook_receiver.fail_next(1, status=429, headers={"Retry-After": "3"})

    outcome = make_sender(webhook_receiver.url).attempt("msg_1", BODY)

    assert (outcome.kind, outcome.status, outcome.retry_after) == ("retry", 429, 3.0)


def test_retry_after_as_an_http_date_is_converted_to_seconds(webhook_receiver, make_sender):
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    webhook_receiver.fail_next(1, status=503, headers={"Retry-After": when})

    outcome = make_sender(webhook_receiver.url).attempt("msg_1", BODY)

    assert outcome.kind == "retry"
    assert 110 <= outcome.retry_after <= 121


def test_a_400_is_permanent_with_status_and_a_bounded_excerpt(webhook_receiver, make_sender):
    webhook_receiver.answer_sequence([(400, "é" * 20_000)])  # 40 KB of two-byte characters

    outcome = make_sender(webhook_receiver.url).attempt("msg_1", BODY)

    assert (outcome.kind, outcome.status, outcome.error) == ("permanent", 400, "http_400")
    assert outcome.excerpt.startswith("éééé")
    assert len(outcome.excerpt) <= EXCERPT_CHARS


@pytest.mark.parametrize("status", [401, 403, 404, 410, 422])
def test_other_4xx_are_permanent(webhook_receiver, make_sender, status):
    webhook_receiver.fail_next(1, status=status)

    outcome = make_sender(webhook_receiver.url).attempt("msg_1", BODY)

    assert (outcome.kind, outcome.error) == ("permanent", f"http_{status}")


def test_a_redirect_is_permanent_and_not_followed(make_webhook_receiver, make_sender):
    target = make_webhook_receiver()
    source = make_webhook_receiver()
    source.answer_sequence([(301, b"moved", {"Location": target.url})])

    outcome = make_sender(source.url).attempt("msg_1", BODY)

    assert (outcome.kind, outcome.status, outcome.error) == ("permanent", 301, "http_301")
    assert len(source.events) == 1
    assert target.events == []


def test_a_receiver_that_is_down_means_retry_connection_error(webhook_receiver, make_sender):
    webhook_receiver.go_down()

    outcome = make_sender(webhook_receiver.url).attempt("msg_1", BODY)

    assert (outcome.kind, outcome.status, outcome.error) == ("retry", None, "connection_error")


def test_a_connection_dropped_mid_request_means_retry(webhook_receiver, make_sender):
    webhook_receiver.answer_sequence([Answer(drop=True)])

    outcome = make_sender(webhook_receiver.url).attempt("msg_1", BODY)

    assert (outcome.kind, outcome.error) == ("retry", "connection_error")


def test_a_slow_receiver_times_out_within_the_configured_timeout(webhook_receiver, make_sender):
    webhook_receiver.set_delay(5)
    sender = make_sender(webhook_receiver.url, WEBHOOK_TIMEOUT_SECONDS="1")

    started = time.monotonic()
    outcome = sender.attempt("msg_1", BODY)
    took = time.monotonic() - started

    assert (outcome.kind, outcome.status, outcome.error) == ("retry", None, "timeout")
    assert 0.9 <= took < 4, took
    assert 900 <= outcome.elapsed_ms < 4000


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


def test_the_signature_fails_with_a_wrong_secret_or_a_changed_body(webhook_receiver, make_sender):
    sender = make_sender(webhook_receiver.url, WEBHOOK_SECRET=new_secret())
    assert sender.attempt("msg_1", BODY).delivered
    [event] = webhook_receiver.wait_for(1, timeout=2)

    with pytest.raises(WebhookVerificationError):
        standardwebhooks.Webhook(new_secret()).verify(event["body"], event["headers"])
    with pytest.raises(WebhookVerificationError):
        standardwebhooks.Webhook(new_secret()).verify(event["body"] + b" ", event["headers"])


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


def test_there_is_no_signature_header_without_a_secret(webhook_receiver, make_sender):
    assert make_sender(webhook_receiver.url).attempt("msg_1", BODY).delivered

    [event] = webhook_receiver.wait_for(1, timeout=2)
    assert "webhook-signature" not in event["headers"]
    assert event["headers"]["webhook-id"] == "msg_1"


def test_the_user_agent_names_the_service_and_its_version(webhook_receiver, make_sender):
    make_sender(webhook_receiver.url).attempt("msg_1", BODY)
    make_sender(webhook_receiver.url, version="1a2b3c4").attempt("msg_2", BODY)
    make_sender(webhook_receiver.url, RENDER_GIT_COMMIT="0123456789abcdef0123").attempt("msg_3", BODY)

    agents = [event["headers"]["user-agent"] for event in webhook_receiver.wait_for(3, timeout=2)]
    assert agents == ["render-signal/dev", "render-signal/1a2b3c4", "render-signal/0123456789ab"]


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


def test_webhook_ca_file_makes_the_sender_trust_a_private_ca(tls_receiver, make_sender):
    receiver, ca_file = tls_receiver
    # Given WEBHOOK_CA_FILE naming the receiver's private CA, and no session of the caller's
    outcome = make_sender(receiver.url, WEBHOOK_CA_FILE=ca_file).attempt("msg_1", BODY)
    # Then the certificate is verified against that CA and the webhook is delivered
    assert outcome.delivered
    assert receiver.delivered_ids() == ["msg_1"]


# --- programming and configuration errors -----------------------------------------------------------------------


# --- classification and schedule (pure) -------------------------------------------------------------------------

@pytest.mark.parametrize("status, kind", [
    (200, "delivered"), (201, "delivered"), (202, "delivered"), (204, "delivered"), (299, "delivered"),
    (301, "permanent"), (302, "permanent"), (307, "permanent"), (308, "permanent"),
    (400, "permanent"), (401, "permanent"), (404, "permanent"), (413, "permanent"),
    (408, "retry"), (429, "retry"), (500, "retry"), (503, "retry"), (599, "retry"),
])
def test_status_classification(status, kind):
    assert classify_status(status)[0] == kind


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


# --- target profiles and credentials (issue 17) ------------------------------------------------------------------

def test_a_target_with_basic_auth_sends_it_and_standard_webhooks_headers_still_win(webhook_receiver):
    import base64
    import dataclasses

    from config import BasicAuth

    target = dataclasses.replace(TargetConfig.from_settings(settings_for(webhook_receiver.url)),
                                 basic_auth=BasicAuth("make", "s3cret-pass"),
                                 headers=(("x-make-apikey", "key-123"), ("webhook-id", "forged")))
    with WebhookSender(target) as sender:
        outcome = sender.attempt("msg_auth", BODY)

    assert outcome.kind == "delivered"
    headers = webhook_receiver.events[-1]["headers"]
    assert headers["authorization"] == "Basic " + base64.b64encode(b"make:s3cret-pass").decode()
    assert headers["x-make-apikey"] == "key-123"
    assert headers["webhook-id"] == "msg_auth"


@pytest.mark.parametrize("profile, status, kind", [
    ("make", 429, "retry"), ("make", 501, "retry"), ("make", 408, "permanent"),
    ("generic", 408, "retry"), ("zapier", 503, "retry"), ("n8n", 404, "permanent"),
])
def test_a_targets_profile_decides_which_statuses_are_retried(make_webhook_receiver, profile, status, kind):
    import dataclasses

    from config import TargetProfile

    receiver = make_webhook_receiver()
    receiver.respond_with(status, b"no")
    target = dataclasses.replace(TargetConfig.from_settings(settings_for(receiver.url)),
                                 profile=TargetProfile(profile))
    with WebhookSender(target) as sender:
        assert sender.attempt("msg_profile", BODY).kind == kind
