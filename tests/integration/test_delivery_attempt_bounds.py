"""Issue 15 §4 and §5 in the real delivery loop: an attempt always ends in a recorded outcome, within its bound.

Real Dovecot, a real HTTP receiver (harness/receiver.py), the service's background threads in this process and a
real state store (SQLite file; Redis too where the store's behaviour matters).
"""

from __future__ import annotations

import time

import pytest

from email_processing.orchestrator import NullOffloader, process_email
from email_processing.parsing import parse_message
from email_processing.payload import received_at_from_date_header
from harness.dovecot import DONE_KEYWORD
from harness.mail import event_id_of, make_email
from harness.pipeline import service_env
from services.state_store import OutboxItem

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
