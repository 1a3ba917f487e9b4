"""One broken email, one odd header or one failing flag request never stops the mailbox (issue 15): each gets a
visible end state while every other email is delivered. Real Dovecot, real receiver, both state backends."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from email_processing.identity import email_id_for_reused, event_id_for, fingerprint_of
from email_processing.parsing import parse_message
from harness.mail import event_id_of, make_email
from harness.pipeline import service_env
from harness.service import ROOT, base_env

pytestmark = pytest.mark.imap

DONE = "$RenderSignalDone"


@pytest.mark.timeout(90)
def test_a_message_the_server_cannot_read_is_parked_and_the_emails_around_it_are_delivered(
        state_backend, imap_account, webhook_receiver, pipeline_factory):
    server, user = imap_account.server, imap_account.user
    env = service_env(imap_account, webhook_receiver, IMAP_FETCH_MAX_FAILURES="2", **state_backend)
    pipeline = pipeline_factory(env)
    pipeline.wait_until(lambda: pipeline.runtime.poller_status.last_success_at is not None, what="first cycle")
    # Given a good email, one Dovecot cannot read (FETCH fails and the connection drops), and another good one
    before, after = make_email(subject="before"), make_email(subject="after")
    server.append(user, before)
    server.deliver_unreadable(user, make_email(subject="poison", message_id="<poison@test.example>"))
    server.append(user, after)
    # Then both good emails are delivered once
    events = webhook_receiver.wait_for(2, timeout=30)
    assert sorted(event["headers"]["webhook-id"] for event in events) == sorted(
        [event_id_of(before), event_id_of(after)])
    # and the unreadable one is parked with its reason, not in the outbox and not flagged done on the server
    pipeline.wait_until(lambda: pipeline.store.parked_count() == 1, timeout=40, what="parked")
    (parked,) = pipeline.store.list_parked()
    assert parked.reason == "fetch_failed" and parked.mailbox_id == "default"
    assert parked.parked_id == f"default:{parked.uidvalidity}:{parked.uid}"
    assert DONE not in server.flags(user, parked.uid)
    assert pipeline.store.fetch_retries("INBOX", parked.uidvalidity, 10) == []
    counters = pipeline.store.counters()
    assert counters["emails_parked"] == {"fetch_failed": 1}
    # and the status route shows it, with its id, reason and subject
    from routes.status_view import build_status

    document, _ = build_status(pipeline.runtime.status_source())
    assert document["parked"]["count"] == 1
    shown = document["parked"]["recent"][0]
    assert (shown["parked_id"], shown["reason"], shown["uid"]) == (parked.parked_id, "fetch_failed", parked.uid)
    assert len(webhook_receiver.delivered_ids()) == 2
    # When the store is repaired and the operator replays it
    server.repair_unreadable(user)
    replay = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "replay-parked", "--id", parked.parked_id],
                            cwd=ROOT, env=base_env(dict(env)), capture_output=True, text=True, timeout=60)
    assert replay.returncode == 0, replay.stderr
    # Then the lease holder re-reads it and the pipeline delivers it
    events = webhook_receiver.wait_for(3, timeout=30)
    assert events[-1]["json"]["subject"] == "poison"
    pipeline.wait_until(lambda: pipeline.store.parked_count() == 0, what="unparked")
    pipeline.wait_until(lambda: DONE in server.flags(user, parked.uid), what="flagged once delivered")


def test_replaying_a_parked_email_that_is_gone_records_a_refusal(state_backend, imap_account, webhook_receiver,
                                                                  pipeline_factory):
    from services.state_store import ParkedEmail

    pipeline = pipeline_factory(service_env(imap_account, webhook_receiver, **state_backend))
    pipeline.wait_until(lambda: pipeline.runtime.poller_status.last_success_at is not None, what="first cycle")
    uidvalidity = imap_account.server.uidvalidity(imap_account.user)
    pipeline.store.park(ParkedEmail(parked_id=f"default:{uidvalidity}:999", mailbox_id="default", mailbox="INBOX",
                                    uidvalidity=uidvalidity, uid=999, reason="fetch_failed"))
    assert pipeline.store.request_replay(f"default:{uidvalidity}:999") == 1
    pipeline.wait_until(lambda: pipeline.store.get_parked(f"default:{uidvalidity}:999").replay_refused is not None,
                        what="refused")
    assert "no longer in the mailbox" in pipeline.store.get_parked(f"default:{uidvalidity}:999").replay_refused


def test_a_flag_request_with_a_non_ascii_message_id_from_an_old_uidvalidity_does_not_block_new_mail(
        state_backend, imap_account, webhook_receiver, pipeline_factory):
    env = service_env(imap_account, webhook_receiver, **state_backend)
    pipeline = pipeline_factory(env, run=False)
    uidvalidity = imap_account.server.uidvalidity(imap_account.user)
    # Given a pending flag request of an older UIDVALIDITY whose Message-ID is not ASCII
    pipeline.store.set_checkpoint("INBOX", uidvalidity, 0)
    pipeline.store.queue_flag("INBOX", uidvalidity - 1, 7, "rapport-été-ünï@exemple.fr")
    pipeline.start()
    # When new mail arrives
    raw = make_email(subject="after the odd flag request")
    imap_account.server.append(imap_account.user, raw)
    # Then it is delivered, and the request was applied (searched with UTF-8) and cleared
    assert webhook_receiver.wait_for(1, timeout=15)[0]["headers"]["webhook-id"] == event_id_of(raw)
    pipeline.wait_until(lambda: pipeline.store.pending_flags("INBOX", 10) == [], what="flag request cleared")
    assert "flag_requests_dropped" not in pipeline.store.counters()


def test_a_flag_request_that_keeps_failing_is_dropped_after_three_tries_and_mail_flows(
        state_backend, imap_account, webhook_receiver, pipeline_factory, caplog):
    caplog.set_level(logging.WARNING)
    env = service_env(imap_account, webhook_receiver, **state_backend)
    pipeline = pipeline_factory(env, run=False)
    uidvalidity = imap_account.server.uidvalidity(imap_account.user)
    pipeline.store.set_checkpoint("INBOX", uidvalidity, 0)
    # A Message-ID with a line break cannot be sent in a SEARCH: the request fails every time it is applied
    pipeline.store.queue_flag("INBOX", uidvalidity - 1, 7, "broken\r\nid@example.test")
    pipeline.start()
    raw = make_email(subject="flows past the broken request")
    imap_account.server.append(imap_account.user, raw)
    assert webhook_receiver.wait_for(1, timeout=15)[0]["headers"]["webhook-id"] == event_id_of(raw)
    pipeline.wait_until(lambda: pipeline.store.counters().get("flag_requests_dropped") == 1, what="dropped")
    # and the delivered email's own flag request is applied (it may be queued just after the drop was counted)
    pipeline.wait_until(lambda: pipeline.store.pending_flags("INBOX", 10) == [], timeout=10,
                        what="the delivered email flagged")
    assert pipeline.store.counters().get("flag_requests_dropped") == 1
    assert "IMAP: flag request dropped uid=7 reason=" in caplog.text


def test_a_reused_message_id_with_other_content_is_a_new_email_and_a_true_duplicate_is_merged(
        state_backend, imap_account, webhook_receiver, pipeline_factory):
    server, user = imap_account.server, imap_account.user
    pipeline = pipeline_factory(service_env(imap_account, webhook_receiver, **state_backend))
    pipeline.wait_until(lambda: pipeline.runtime.poller_status.last_success_at is not None, what="first cycle")
    # Given a notifier that reuses its Message-ID for a different email
    first = make_email(subject="Ticket 1 files", message_id="<notify@tickets.example>")
    second = make_email(subject="Ticket 2 files", message_id="<notify@tickets.example>")
    server.append(user, first)
    assert webhook_receiver.wait_for(1, timeout=15)[0]["headers"]["webhook-id"] == event_id_of(first)
    server.append(user, second)
    # Then the second one is delivered too, under the id of the reused Message-ID with its fingerprint
    parsed = parse_message(second)
    expected = event_id_for(email_id_for_reused(parsed, fingerprint_of(parsed)))
    events = webhook_receiver.wait_for(2, timeout=15)
    assert events[1]["headers"]["webhook-id"] == expected and events[1]["json"]["subject"] == "Ticket 2 files"
    # And the very same message seen again through a second UID is merged: counted, flagged, not sent again
    uid = server.append(user, first)
    pipeline.wait_until(lambda: DONE in server.flags(user, uid), what="merged duplicate flagged done")
    assert len(webhook_receiver.delivered_ids()) == 2
    assert pipeline.store.counters()["duplicates_merged"] == 1
