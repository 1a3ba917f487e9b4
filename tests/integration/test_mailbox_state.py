"""State per mailbox and target through the real pipeline (issue 14): real Dovecot, real receiver, both backends."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from background.stranded import TARGET_REMOVED
from config import ServiceConfig
from email_processing.identity import email_id_for, event_id_for
from email_processing.parsing import parse_message
from harness.mail import event_id_of, make_email
from harness.pipeline import service_env
from services.state_store import OutboxItem

pytestmark = pytest.mark.imap

DONE = "$RenderSignalDone"


def _as_mailbox(env: dict, mailbox_id: str) -> ServiceConfig:
    from settings import Settings

    base = ServiceConfig.from_settings(Settings.from_env(env))
    return dataclasses.replace(base, mailboxes=(dataclasses.replace(base.mailboxes[0], id=mailbox_id),))


def test_two_mailboxes_with_the_same_folder_keep_separate_state(state_backend, dovecot_server, webhook_receiver,
                                                                pipeline_factory):
    first, second = dovecot_server.new_account(), dovecot_server.new_account()
    raw = make_email(subject="sent to both")
    # Given mailbox default on one account, which delivers the email
    env = service_env(first, webhook_receiver, **state_backend)
    pipeline = pipeline_factory(env)
    uid_first = first.server.append(first.user, raw)
    assert webhook_receiver.wait_for(1, timeout=15)[0]["headers"]["webhook-id"] == event_id_of(raw)
    pipeline.wait_until(lambda: DONE in first.server.flags(first.user, uid_first), what="flagged in the first")
    pipeline.stop()
    # When mailbox "work" (another account, the same folder name INBOX) gets the same message, on the same state
    env_work = service_env(second, webhook_receiver, state_dir=env["STATE_DIR"], **state_backend)
    work = pipeline_factory(env_work, config=_as_mailbox(env_work, "work"))
    uid_second = second.server.append(second.user, raw)
    # Then it is a second email of its own: delivered under its own event id, flagged in its own mailbox
    events = webhook_receiver.wait_for(2, timeout=15)
    work_event = event_id_for(email_id_for(parse_message(raw), "work"))
    assert [event["headers"]["webhook-id"] for event in events] == [event_id_of(raw), work_event]
    assert events[1]["json"]["microsoft_graph_email_id"] == work_event.removeprefix("msg_")
    work.wait_until(lambda: DONE in second.server.flags(second.user, uid_second), what="flagged in the second")
    # and each mailbox has its own checkpoint
    store = work.store
    uidvalidity_first = first.server.uidvalidity(first.user)
    uidvalidity_second = second.server.uidvalidity(second.user)
    assert store.get_checkpoint("INBOX", uidvalidity_first) == uid_first
    assert store.get_checkpoint("work:INBOX", uidvalidity_second) == uid_second
    assert store.get_item(work_event).mailbox_id == "work"
    series = {(name, tuple(sorted(labels.items()))): value for name, labels, value in store.counter_series()}
    assert series[("emails_processed", (("mailbox", "default"),))] == 1
    assert series[("emails_processed", (("mailbox", "work"),))] == 1


def test_work_of_a_removed_target_and_mailbox_is_reported_and_the_targets_items_become_dead_letters(
        state_backend, imap_account, webhook_receiver, pipeline_factory, caplog):
    caplog.set_level(logging.INFO)
    env = service_env(imap_account, webhook_receiver, **state_backend)
    # Given state with an item for a target and one from a mailbox that are no longer configured
    pipeline = pipeline_factory(env, run=False)
    store = pipeline.store
    gone_target = OutboxItem(event_id=event_id_for("a" * 32, "crm"), email_id="a" * 32,
                             payload={"event_id": event_id_for("a" * 32, "crm")}, mailbox="INBOX", uidvalidity=1,
                             uid=1, message_id=None, target_id="crm")
    raw = make_email(subject="from a removed mailbox")
    old_box_event = event_id_of(raw)  # queued by mailbox old-box for target default: still delivered
    from email_processing.orchestrator import NullOffloader, process_email

    body = process_email(parse_message(raw), received_at="2026-12-01T00:00:00Z", sender_allowlist=(),
                         allow_without_links=False, offloader=NullOffloader()).payload
    from_old_box = OutboxItem(event_id=old_box_event, email_id=body["microsoft_graph_email_id"], payload=body,
                              mailbox="old-box:INBOX", uidvalidity=1, uid=7, message_id=None, mailbox_id="old-box")
    store.enqueue(gone_target)
    store.enqueue(from_old_box)
    store.queue_flag("old-box:INBOX", 1, 9, None)
    # When the service starts
    pipeline.start()
    # Then the removed target's item is a dead letter (replayable), the removed mailbox's item is delivered
    pipeline.wait_until(lambda: store.get_item(gone_target.event_id).status == "dead", what="dead letter")
    assert store.get_item(gone_target.event_id).dead_reason == TARGET_REMOVED
    assert [event["headers"]["webhook-id"] for event in webhook_receiver.wait_for(1, timeout=10)] == [old_box_event]
    # and what the removed mailbox left is reported in the log and on /api/status
    pipeline.wait_until(lambda: "STATE: work of removed mailboxes or targets" in caplog.text, what="reported")
    assert "flag requests no mailbox applies under 'old-box:INBOX'" in caplog.text
    pipeline.wait_until(lambda: "stranded" in (store.read_status() or {}), what="published")
    # (its own flag request, and the one its delivered item queued if the survey came after the delivery)
    assert list(store.read_status()["stranded"]["flag_requests"]) == ["old-box:INBOX"]
    assert gone_target.event_id not in webhook_receiver.delivered_ids()
