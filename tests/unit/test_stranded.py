"""Work of a removed mailbox or target is reported, and a removed target's items become replayable dead letters."""

from __future__ import annotations

import logging
import time

import pytest

from background.stranded import TARGET_REMOVED, find_stranded, settle_removed_targets, survey
from config import MailboxConfig, PasswordCredentials, ServiceConfig, TargetConfig
from services.state_store import OutboxItem, StateStore


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def _config(mailboxes=("default",), targets=("default",)) -> ServiceConfig:
    return ServiceConfig(
        mailboxes=tuple(MailboxConfig(id=m, server="imap.example.test", user="u", credentials=PasswordCredentials("p"))
                        for m in mailboxes),
        targets=tuple(TargetConfig(id=t, url="https://hooks.example.test/x") for t in targets))


def _item(n: int, mailbox_id: str = "default", target_id: str = "default") -> OutboxItem:
    email_id = f"{n:032x}"
    suffix = "" if target_id == "default" else f"_{target_id}"
    state_key = "INBOX" if mailbox_id == "default" else f"{mailbox_id}:INBOX"
    return OutboxItem(event_id=f"msg_{email_id}{suffix}", email_id=email_id, payload={}, mailbox=state_key,
                      uidvalidity=1, uid=n, message_id=None, mailbox_id=mailbox_id, target_id=target_id)


def test_only_what_belongs_to_no_configured_mailbox_or_target_is_stranded():
    owners = {"mailboxes": {"default": 3, "old-box": 2}, "targets": {"default": 4, "crm": 1}}
    flags = {"INBOX": 5, "old-box:INBOX": 2, "(cli)": 1}
    stranded = find_stranded(owners, flags, _config())
    assert stranded.as_dict() == {"mailboxes": {"old-box": 2}, "targets": {"crm": 1},
                                  "flag_requests": {"old-box:INBOX": 2}}
    assert stranded.pending_total == 5
    assert "1 pending items of removed target crm" in stranded.summary()
    assert not find_stranded({"mailboxes": {"default": 1}, "targets": {"default": 1}}, {"INBOX": 1}, _config())


def test_a_removed_targets_pending_items_become_replayable_dead_letters(store: StateStore, caplog):
    caplog.set_level(logging.WARNING)
    for n in range(1, 4):
        store.enqueue(_item(n))
    store.enqueue(_item(10, target_id="crm"))
    store.enqueue(_item(11, mailbox_id="old-box", target_id="crm"))
    config = _config()
    stranded = survey(store, config)
    assert stranded.targets == {"crm": 2} and stranded.mailboxes == {"old-box": 1}
    assert settle_removed_targets(store, config, stranded) == 2
    dead = {item.event_id: item for item in store.list_items("dead")}
    assert {item.dead_reason for item in dead.values()} == {TARGET_REMOVED} and len(dead) == 2
    assert [item.target_id for item in store.list_items("pending")] == ["default"] * 3
    assert not survey(store, config).targets
    assert "2 pending items of removed targets are dead letters now" in caplog.text
    # Once the target is back, replaying them makes them pending for it again
    assert store.replay(now=time.time()) == 2
    assert survey(store, _config(targets=("default", "crm"))).targets == {}


def test_with_no_target_configured_nothing_is_dead_lettered(store: StateStore):
    store.enqueue(_item(1))
    config = _config(targets=())
    stranded = survey(store, config)
    assert stranded.targets == {"default": 1}
    assert settle_removed_targets(store, config, stranded) == 0
    assert store.get_item(_item(1).event_id).status == "pending"
