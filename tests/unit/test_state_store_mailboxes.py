"""The state store with several mailboxes and targets (issue 14), run against both backends: here a real SQLite
file; tests/integration/test_state_store_contract_redis.py imports these tests and runs them on a redis-server."""

from __future__ import annotations

import time

import pytest

from config import MailboxConfig, PasswordCredentials
from email_processing.identity import email_id_for, event_id_for
from email_processing.parsing import parse_message
from services.state_migrations import SCHEMA_VERSION
from services.state_store import OutboxItem, StateStore


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def _mailbox(id: str, folder: str = "INBOX") -> MailboxConfig:
    return MailboxConfig(id=id, server="imap.example.test", user=f"{id}@example.test",
                         credentials=PasswordCredentials("pw"), folder=folder)


RAW = b"Message-ID: <same@example.test>\r\nFrom: a@example.test\r\nSubject: files\r\n\r\nhello\r\n"


def _item_of(mailbox: MailboxConfig, uid: int, target_id: str = "default") -> OutboxItem:
    parsed = parse_message(RAW)
    email_id = email_id_for(parsed, mailbox.id)
    event_id = event_id_for(email_id, target_id)
    return OutboxItem(event_id=event_id, email_id=email_id, payload={"event_id": event_id}, mailbox=mailbox.state_key,
                      uidvalidity=9, uid=uid, message_id=parsed.message_id, mailbox_id=mailbox.id,
                      target_id=target_id)


def test_items_name_their_mailbox_and_target_and_default_to_default(store: StateStore) -> None:
    work = _mailbox("work")
    store.enqueue(_item_of(work, 5, target_id="crm"))
    store.enqueue(OutboxItem(event_id="msg_" + "a" * 32, email_id="a" * 32, payload={}, mailbox="INBOX",
                             uidvalidity=1, uid=1, message_id=None))
    named = store.get_item(_item_of(work, 5, target_id="crm").event_id)
    assert (named.mailbox_id, named.target_id, named.mailbox) == ("work", "crm", "work:INBOX")
    plain = store.get_item("msg_" + "a" * 32)
    assert (plain.mailbox_id, plain.target_id) == ("default", "default")
    claimed = {item.event_id: item for item in store.claim_due("me", time.time() + 1, 10, 30)}
    assert claimed[named.event_id].target_id == "crm"


def test_two_mailboxes_with_the_same_folder_keep_separate_state(store: StateStore) -> None:
    default, work = _mailbox("default"), _mailbox("work")
    assert (default.state_key, work.state_key) == ("INBOX", "work:INBOX")
    # The same message in both mailboxes is two emails: two done records, two outbox items
    first, second = _item_of(default, 5), _item_of(work, 7)
    assert first.email_id != second.email_id and first.event_id != second.event_id
    assert store.enqueue(first) and store.enqueue(second)
    store.mark_delivered(first.event_id, 200, time.time())
    assert store.get_done(first.email_id) == "delivered"
    assert store.get_done(second.email_id) == "enqueued"
    # Checkpoints of one never move the other's
    store.set_checkpoint(default.state_key, 9, 50)
    store.set_checkpoint(work.state_key, 9, 3)
    assert store.get_checkpoint(default.state_key, 9) == 50
    assert store.get_checkpoint(work.state_key, 9) == 3
    assert not store.has_any_checkpoint(_mailbox("other").state_key)
    # and a done email is flagged in its own mailbox only
    assert [(r.mailbox, r.uid) for r in store.pending_flags(default.state_key, 10)] == [("INBOX", 5)]
    assert store.pending_flags(work.state_key, 10) == []
    store.dead_letter(second.event_id, "http_400", 400, None)
    assert [(r.mailbox, r.uid) for r in store.pending_flags(work.state_key, 10)] == [("work:INBOX", 7)]


def test_an_item_from_no_imap_message_queues_no_flag_request(store: StateStore) -> None:
    item = OutboxItem(event_id="msg_" + "b" * 32, email_id="b" * 32, payload={}, mailbox="(cli)", uidvalidity=0,
                      uid=0, message_id="<cli@example.test>")
    store.enqueue(item)
    store.mark_delivered(item.event_id, 200, time.time())
    assert store.get_done(item.email_id) == "delivered"
    assert store.pending_flags("(cli)", 10) == [] and "(cli)" not in store.flag_keys()


def test_pending_work_is_counted_per_mailbox_and_target(store: StateStore) -> None:
    default, work = _mailbox("default"), _mailbox("work")
    store.enqueue(_item_of(default, 1))
    store.enqueue(_item_of(default, 1, target_id="crm"))
    store.enqueue(_item_of(work, 2, target_id="crm"))
    delivered = _item_of(work, 3, target_id="old")
    delivered = OutboxItem(**{**delivered.__dict__, "event_id": event_id_for("c" * 32, "old"), "email_id": "c" * 32})
    store.enqueue(delivered)
    store.mark_delivered(delivered.event_id, 200, time.time())
    assert store.pending_owners() == {"mailboxes": {"default": 2, "work": 1}, "targets": {"default": 1, "crm": 2}}
    assert store.flag_keys() == {"work:INBOX": 1}


def test_the_store_records_the_schema_version_it_writes(store: StateStore) -> None:
    store.enqueue(_item_of(_mailbox("default"), 1))
    assert store.schema_version() == SCHEMA_VERSION


def test_counters_take_several_labels_in_one_key_format(store: StateStore) -> None:
    store.incr("emails_seen", labels={"mailbox": "default"})
    store.incr("emails_seen", 2, labels={"mailbox": "work"})
    store.incr("emails_skipped", label="no_delivery_links", labels={"mailbox": "work"})
    store.incr("emails_skipped", 3, labels={"reason": "no_delivery_links", "mailbox": "work"})  # same series
    work = _mailbox("work")
    delivered, retried = _item_of(work, 1, target_id="crm"), _item_of(work, 2)
    retried = OutboxItem(**{**retried.__dict__, "event_id": event_id_for("d" * 32), "email_id": "d" * 32})
    store.enqueue(delivered)
    store.enqueue(retried)
    store.mark_delivered(delivered.event_id, 200, time.time())
    store.reschedule(retried.event_id, time.time() + 60, "timeout", None)
    series = sorted((name, sorted(labels.items()), value) for name, labels, value in store.counter_series())
    assert series == [
        ("emails_seen", [("mailbox", "default")], 1),
        ("emails_seen", [("mailbox", "work")], 2),
        ("emails_skipped", [("mailbox", "work"), ("reason", "no_delivery_links")], 4),
        ("webhook_retries", [("target", "default")], 1),
        ("webhooks_delivered", [("target", "crm")], 1),
    ]
    # The view by reason sums over every other label
    assert store.counters() == {"emails_seen": 3, "emails_skipped": {"no_delivery_links": 4},
                                "webhook_retries": 1, "webhooks_delivered": 1}
    with pytest.raises(ValueError):
        store.incr("emails_seen", labels={"mailbox": "a,b"})
    with pytest.raises(ValueError):
        store.incr("emails_seen", labels={"Mailbox": "a"})


def test_counter_keys_read_the_previous_releases_reason_labels() -> None:
    from services.state_store import counter_label_part, fold_series, parse_label_part

    assert counter_label_part({"target": "crm", "reason": "http_410"}) == "reason=http_410,target=crm"
    assert parse_label_part("reason=http_410,target=crm") == {"reason": "http_410", "target": "crm"}
    assert parse_label_part("no_delivery_links") == {"reason": "no_delivery_links"}  # schema version 1
    assert parse_label_part("") == {}
    assert fold_series([("x", {}, 1), ("x", {"reason": "a"}, 2)]) == {"x": {"": 1, "a": 2}}
