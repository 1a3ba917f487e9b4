"""Issue 15 §4 and §5 in the real delivery loop: an attempt always ends in a recorded outcome, within its bound.

Real Dovecot, a real HTTP receiver (harness/receiver.py), the service's background threads in this process and a
real state store (SQLite file; Redis too where the store's behaviour matters).
"""

from __future__ import annotations

import time

import pytest

from background.delivery import CLAIM_MARGIN_SECONDS
from email_processing.orchestrator import NullOffloader, process_email
from email_processing.parsing import parse_message
from email_processing.payload import received_at_from_date_header
from harness.dovecot import DONE_KEYWORD
from harness.mail import event_id_of, make_email
from harness.pipeline import service_env
from harness.receiver import Answer
from services.state_store import OutboxItem, open_state_store

pytestmark = pytest.mark.imap


@pytest.fixture(params=["sqlite", "redis"])
def backend(request):
    """Extra env selecting the state backend (and lease): SQLite + file lock, or a real Redis."""
    if request.param == "redis":
        return {"redis_url": request.getfixturevalue("redis_url")}
    return {}


@pytest.mark.timeout(60)
def test_a_stored_body_that_cannot_be_encoded_is_a_dead_letter_once_and_the_email_is_flagged(
        backend, imap_account, webhook_receiver, pipeline_factory):
    # Given an email in the mailbox whose queued webhook body holds a lone surrogate (stored by a release that did
    # not clean payloads: it bypasses build_payload)
    pipeline = pipeline_factory(service_env(imap_account, webhook_receiver, **backend), run=False)
    raw = make_email(subject="Fichiers prêts")
    user = imap_account.user
    uid = imap_account.server.append(user, raw)
    parsed = parse_message(raw)
    payload = process_email(parsed, received_at=received_at_from_date_header(parsed.date_header),
                            sender_allowlist=(), allow_without_links=False, offloader=NullOffloader()).payload
    payload["subject"] = "\ud83d " + payload["subject"]
    event_id = event_id_of(raw)
    assert payload["event_id"] == event_id
    store = pipeline.store
    now = time.time()
    assert store.enqueue(OutboxItem(event_id=event_id, email_id=event_id[4:], payload=payload,
                                    mailbox=pipeline.runtime.mailbox.state_key,
                                    uidvalidity=imap_account.server.uidvalidity(user), uid=uid,
                                    message_id=parsed.message_id, created_at=now, next_attempt_at=now))
    # When the service runs
    pipeline.start()
    # Then the item becomes a dead letter encode_error after one attempt, and the email is flagged done
    pipeline.wait_until(lambda: store.get_item(event_id).status == "dead", timeout=10, what="dead letter")
    item = store.get_item(event_id)
    assert (item.dead_reason, item.attempts, item.in_flight) == ("encode_error", 1, False)
    pipeline.wait_until(lambda: DONE_KEYWORD in imap_account.server.flags(user, uid), what="flagged done")
    # And it stays that way: no re-claim, no possible duplicate, nothing ever posted
    time.sleep(2.5)
    item = store.get_item(event_id)
    assert (item.status, item.attempts) == ("dead", 1)
    assert store.counters().get("possible_duplicates", 0) == 0
    assert webhook_receiver.events == []
    assert pipeline.background.guard.actions_without_ownership == 0


TIMEOUT = 2.0  # WEBHOOK_TIMEOUT_SECONDS of the pipeline (harness.pipeline.FAST)


@pytest.mark.timeout(60)
def test_a_receiver_trickling_its_answer_is_cut_and_retried_long_before_the_claim_lapses(
        imap_account, webhook_receiver, pipeline_factory):
    # Given a receiver that answers the first POST with a status line trickled one byte every 0.5 s, never finished
    webhook_receiver.answer_sequence([Answer(trickle="head", trickle_interval=0.5)])
    pipeline = pipeline_factory(service_env(imap_account, webhook_receiver, WEBHOOK_TIMEOUT_SECONDS=str(TIMEOUT)))
    store = pipeline.store
    raw = make_email()
    event_id = event_id_of(raw)
    imap_account.server.append(imap_account.user, raw)
    # When the delivery loop posts it, its claim lasts the attempt's bound plus the margin
    pipeline.wait_until(lambda: len(webhook_receiver.events) >= 1, what="first attempt started")
    claimed = store.get_item(event_id)
    assert claimed.in_flight and claimed.attempts == 1
    assert claimed.claimed_until >= claimed.first_attempt_at + TIMEOUT + CLAIM_MARGIN_SECONDS - 0.01
    # Then the attempt is cut at its bound and recorded as a retry "timeout", long before the claim lapses
    pipeline.wait_until(lambda: store.get_item(event_id).last_error == "timeout" or store.get_item(event_id).status
                        == "delivered", timeout=2 * TIMEOUT + 1, what="the trickled attempt cut and recorded")
    assert time.time() < claimed.claimed_until - CLAIM_MARGIN_SECONDS + TIMEOUT
    # And the retry delivers it, once, with no attempt ever made while another was in flight
    webhook_receiver.wait_for(1, timeout=10)
    pipeline.wait_until(lambda: store.get_item(event_id).status == "delivered", what="recorded delivered")
    assert webhook_receiver.delivered_ids() == [event_id]
    assert store.get_item(event_id).attempts == 2
    assert store.counters().get("possible_duplicates", 0) == 0


@pytest.mark.timeout(60)
def test_stopping_while_a_receiver_trickles_takes_no_longer_than_one_attempts_bound(
        imap_account, webhook_receiver, pipeline_factory):
    # The shutdown budget (settings.py: background join 45 s > WEBHOOK_TIMEOUT_SECONDS <= 40 s) holds only if an
    # attempt really ends within WEBHOOK_TIMEOUT_SECONDS, whatever the receiver does.
    webhook_receiver.answer_sequence([Answer(trickle="head", trickle_interval=0.5)])
    pipeline = pipeline_factory(service_env(imap_account, webhook_receiver, WEBHOOK_TIMEOUT_SECONDS=str(TIMEOUT)))
    raw = make_email()
    imap_account.server.append(imap_account.user, raw)
    pipeline.wait_until(lambda: len(webhook_receiver.events) >= 1, what="first attempt started")
    background = pipeline.background
    # When the service stops in the middle of the trickled attempt
    started = time.monotonic()
    pipeline.stop(timeout=15)
    took = time.monotonic() - started
    # Then every background thread has ended within the attempt's bound, and the cut attempt was recorded
    assert [thread.name for thread in background.threads if thread.is_alive()] == []
    assert took < 2 * TIMEOUT, took
    store = open_state_store(pipeline.settings)  # the service closed its own
    try:
        assert store.get_item(event_id_of(raw)).last_error == "timeout"
    finally:
        store.close()
