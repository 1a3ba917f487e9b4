"""Webhook delivery through the outbox: retries, backoff, Retry-After, dead letters, replay, signatures (issue 8).

Each behaviour runs against a real Dovecot, a real HTTP receiver and both state backends (real redis-server, real
SQLite file).
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time

import pytest

from harness.mail import event_id_of, make_email
from harness.pipeline import service_env
from harness.service import ROOT, base_env

pytestmark = pytest.mark.imap

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_a_receiver_answering_503_then_200_gets_the_email_once_after_backoff(
        state_backend, imap_account, webhook_receiver, pipeline_factory):
    webhook_receiver.fail_next(3, status=503)
    pipeline = pipeline_factory(service_env(imap_account, webhook_receiver, **state_backend))
    raw = make_email()
    imap_account.server.append(imap_account.user, raw)
    webhook_receiver.wait_for(1, timeout=15)
    time.sleep(0.5)
    attempts = [e for e in webhook_receiver.events if e["headers"].get("webhook-id") == event_id_of(raw)]
    assert [e["status_answered"] for e in attempts] == [503, 503, 503, 200]
    gaps = [b["received_at"] - a["received_at"] for a, b in itertools.pairwise(attempts)]
    for gap, scheduled in zip(gaps, (0.2, 0.4, 0.8), strict=True):
        assert gap >= scheduled * 0.9 - 0.05, (gaps, "backoff not respected")
    item = pipeline.store.get_item(event_id_of(raw))
    assert item.status == "delivered" and item.attempts == 4
    assert pipeline.store.counters()["webhook_retries"] == 3


def test_twenty_emails_arriving_while_the_receiver_is_down_are_each_delivered_once(
        state_backend, imap_account, webhook_receiver, pipeline_factory):
    webhook_receiver.go_down()
    pipeline = pipeline_factory(service_env(imap_account, webhook_receiver, **state_backend))
    raws = [make_email(subject=f"burst {i}") for i in range(20)]
    for raw in raws:
        imap_account.server.append(imap_account.user, raw)
    pipeline.wait_until(lambda: pipeline.store.outbox_stats(time.time())["pending"] == 20, timeout=20,
                        what="20 queued while the receiver is down")
    webhook_receiver.come_up()
    webhook_receiver.wait_for(20, timeout=30)
    time.sleep(1.0)
    ids = webhook_receiver.delivered_ids()
    assert sorted(ids) == sorted(event_id_of(raw) for raw in raws)


def test_a_400_is_a_dead_letter_at_once_and_a_replay_delivers_it_with_the_same_id(
        state_backend, imap_account, webhook_receiver, pipeline_factory):
    webhook_receiver.respond_with(400, b'{"error": "bad scenario"}')
    env = service_env(imap_account, webhook_receiver, **state_backend)
    pipeline = pipeline_factory(env)
    raw = make_email()
    uid = imap_account.server.append(imap_account.user, raw)
    event_id = event_id_of(raw)
    pipeline.wait_until(lambda: (pipeline.store.get_item(event_id) or None) is not None
                        and pipeline.store.get_item(event_id).status == "dead", what="dead letter")
    item = pipeline.store.get_item(event_id)
    assert (item.dead_reason, item.last_status, item.attempts) == ("http_400", 400, 1)
    assert "bad scenario" in item.response_excerpt
    # Parked as a dead letter, the email counts as done on the server
    pipeline.wait_until(lambda: "$RenderSignalDone" in imap_account.server.flags(imap_account.user, uid),
                        what="dead letter flagged done")
    # When the receiver is fixed and the operator replays it
    webhook_receiver.respond_with(200, b"Accepted")
    cli_env = base_env({k: v for k, v in env.items()})
    unknown = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "replay-dead-letters", "--id", "msg_nope"],
                             cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 1 and "msg_nope" in unknown.stderr
    replay = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "replay-dead-letters", "--id", event_id],
                            cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=60)
    assert replay.returncode == 0, replay.stderr
    # Then the running lease holder delivers it, with the same webhook-id
    delivered = webhook_receiver.wait_for(1, timeout=15)
    assert delivered[0]["headers"]["webhook-id"] == event_id
    pipeline.wait_until(lambda: pipeline.store.get_item(event_id).status == "delivered", what="recorded delivered")


def test_retry_after_is_honoured_and_the_signature_verifies_with_standardwebhooks(
        imap_account, webhook_receiver, pipeline_factory):
    from standardwebhooks import Webhook, WebhookVerificationError

    webhook_receiver.fail_next(1, status=429, headers={"Retry-After": "3"})
    pipeline_factory(service_env(imap_account, webhook_receiver, WEBHOOK_SECRET=SECRET))
    raw = make_email()
    imap_account.server.append(imap_account.user, raw)
    event = webhook_receiver.wait_for(1, timeout=20)[0]
    first = webhook_receiver.events[0]
    assert event["received_at"] - first["received_at"] >= 3.0
    # The signature verifies with the reference package, and a wrong secret does not
    Webhook(SECRET).verify(event["body"], event["headers"])
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 32).verify(event["body"], event["headers"])
    assert abs(int(event["headers"]["webhook-timestamp"]) - event["received_at"]) <= 5
    assert event["headers"]["user-agent"].startswith("render-signal/")


def test_a_slow_receiver_times_out_and_is_retried_while_new_mail_keeps_being_read(
        imap_account, webhook_receiver, pipeline_factory):
    webhook_receiver.set_delay(5)
    pipeline = pipeline_factory(service_env(imap_account, webhook_receiver, WEBHOOK_TIMEOUT_SECONDS="1"))
    first, second = make_email(subject="first"), make_email(subject="second")
    imap_account.server.append(imap_account.user, first)
    pipeline.wait_until(lambda: len(webhook_receiver.events) >= 1, what="first attempt started")
    # While the receiver hangs on the first attempt, the second email is read and queued
    imap_account.server.append(imap_account.user, second)
    pipeline.wait_until(lambda: pipeline.store.get_done(event_id_of(second)[4:]) is not None, timeout=5,
                        what="second email queued while the receiver hangs")
    pipeline.wait_until(lambda: (pipeline.store.get_item(event_id_of(first)).attempts or 0) >= 2, timeout=15,
                        what="the timed-out attempt is retried")
    assert pipeline.store.get_item(event_id_of(first)).last_error == "timeout"
    webhook_receiver.set_delay(0)
    webhook_receiver.wait_for(2, timeout=20)
