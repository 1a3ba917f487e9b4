"""Several mailboxes in one service (issue 17): real Dovecot accounts, a real receiver, real Redis.

Each mailbox has its own lease (``render_signal:poller_lock`` for ``default``, ``render_signal:poller_lock:<id>``
for the others), poller and delivery threads; two workers on one Redis poll each mailbox from one of them only,
and every email of every mailbox is delivered once, under its own mailbox's id.
"""

from __future__ import annotations

import dataclasses

import pytest

from config import MailboxConfig, ServiceConfig
from harness.mail import make_email
from harness.pipeline import service_env
from settings import Settings

pytestmark = [pytest.mark.imap, pytest.mark.redis, pytest.mark.timeout(120)]

DONE = "$RenderSignalDone"
IDS = ("default", "studio", "agency")


def config_with(env: dict, accounts: list) -> ServiceConfig:
    base = ServiceConfig.from_settings(Settings.from_env(env))
    mailboxes = []
    for mailbox_id, account in zip(IDS, accounts, strict=True):
        settings = Settings.from_env({**env, **account.settings_env()})
        mailboxes.append(dataclasses.replace(MailboxConfig.from_settings(settings), id=mailbox_id))
    return dataclasses.replace(base, mailboxes=tuple(mailboxes))


def test_two_workers_share_three_mailboxes_each_polled_by_one_and_every_email_delivered_once(
        dovecot_server, webhook_receiver, redis_server, redis_url, pipeline_factory):
    accounts = [dovecot_server.new_account() for _ in IDS]
    env = service_env(accounts[0], webhook_receiver, redis_url=redis_url)
    config = config_with(env, accounts)
    # Given two workers on one Redis, configured with the same three mailboxes
    first = pipeline_factory(env, config=config)
    second = pipeline_factory(dict(env), config=config)
    # When each mailbox receives two emails
    sent = []
    for account in accounts:
        for _ in range(2):
            raw = make_email()
            sent.append((account, account.server.append(account.user, raw)))
    # Then all six are delivered, once each
    events = webhook_receiver.wait_for(6, timeout=40)
    ids = [event["headers"]["webhook-id"] for event in events]
    assert len(ids) == 6 == len(set(ids))
    for account, uid in sent:
        first.wait_until(lambda account=account, uid=uid: DONE in account.server.flags(account.user, uid),
                         what="flagged done", timeout=20)
    # and each mailbox's lease is one key, held by exactly one of the workers
    raw = redis_server.client()
    try:
        keys = {mailbox_id: ("render_signal:poller_lock" if mailbox_id == "default"
                             else f"render_signal:poller_lock:{mailbox_id}") for mailbox_id in IDS}
        for mailbox_id, key in keys.items():
            holders = [pipeline for pipeline in (first, second)
                       if next(unit for unit in pipeline.background.units
                               if unit.mailbox.id == mailbox_id).lease.holds_locally()]
            assert raw.get(key) is not None, key
            assert len(holders) == 1, mailbox_id
    finally:
        raw.close()
    # and the items name their mailbox
    store = first.store
    mailbox_ids = sorted(store.get_item(event_id).mailbox_id for event_id in ids)
    assert mailbox_ids == sorted([*IDS, *IDS])
    # and no action was taken by a worker that did not hold the mailbox
    for pipeline in (first, second):
        assert all(unit.guard.actions_without_ownership == 0 for unit in pipeline.background.units)
