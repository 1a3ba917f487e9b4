"""Several mailboxes in one service (issue 17): real Dovecot accounts, a real receiver, real Redis.

Each mailbox has its own lease (``render_signal:poller_lock`` for ``default``, ``render_signal:poller_lock:<id>``
for the others), poller and delivery threads; two workers on one Redis poll each mailbox from one of them only,
and every email of every mailbox is delivered once, under its own mailbox's id.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from config import MailboxConfig, PasswordCredentials, RouteConfig, ServiceConfig
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


def holders(pipelines, mailbox_id: str) -> list:
    return [pipeline for pipeline in pipelines
            if next(unit for unit in pipeline.background.units if unit.mailbox.id == mailbox_id).lease.holds_locally()]


def test_mailboxes_move_to_a_joining_worker_once_it_has_lived_two_ttls_and_back_when_it_stops(
        dovecot_server, webhook_receiver, redis_server, redis_url, pipeline_factory):
    from background.membership import preferred_member

    accounts = [dovecot_server.new_account() for _ in range(6)]
    env = service_env(accounts[0], webhook_receiver, redis_url=redis_url)
    ids = ("default", *(f"box-{n}" for n in range(1, 6)))
    base = ServiceConfig.from_settings(Settings.from_env(env))
    mailboxes = tuple(dataclasses.replace(MailboxConfig.from_settings(Settings.from_env({**env, **a.settings_env()})),
                                          id=mailbox_id) for mailbox_id, a in zip(ids, accounts, strict=True))
    config = dataclasses.replace(base, mailboxes=mailboxes)
    # Given one worker holding all six mailboxes
    first = pipeline_factory(env, config=config)
    first.wait_until(lambda: all(holders([first], m) for m in ids), what="all held by the first", timeout=15)
    # When a second worker joins
    second = pipeline_factory(dict(env), config=config)
    members = [first.background.membership.member, second.background.membership.member]
    wanted = {m: preferred_member(m, members) for m in ids}
    assert set(wanted.values()) == set(members), "six mailboxes over two members: both get some (sha-256)"
    joined = time.monotonic()
    # Then within a few TTLs each mailbox is held by its preferred worker, exactly one at a time
    by_member = {first.background.membership.member: first, second.background.membership.member: second}

    def settled() -> bool:
        return all(holders([first, second], m) == [by_member[wanted[m]]] for m in ids)

    first.wait_until(settled, what="mailboxes spread", timeout=25)
    # not before the joining worker had lived 2 x TTL (3 s here)
    assert time.monotonic() - joined >= 2 * 3 - 0.5
    moved = sum(1 for m in ids if wanted[m] == second.background.membership.member)
    series = {(name, tuple(sorted(labels.items()))): value for name, labels, value in first.store.counter_series()}
    assert sum(value for (name, _), value in series.items() if name == "mailbox_moves") == moved
    # and every email still goes out once, whoever holds its mailbox
    for account in accounts:
        account.server.append(account.user, make_email())
    events = webhook_receiver.wait_for(6, timeout=30)
    assert len({event["headers"]["webhook-id"] for event in events}) == 6
    # When the second worker stops, the first takes its mailboxes back within TTL + retry
    second.stop()
    stopped = time.monotonic()
    first.wait_until(lambda: all(holders([first], m) for m in ids), what="all back on the first", timeout=15)
    assert time.monotonic() - stopped <= 3 + 0.3 + 2.0


def test_the_status_lists_every_mailbox_with_its_holder_and_every_target_with_its_counts(
        dovecot_server, webhook_receiver, redis_server, redis_url, pipeline_factory):
    from routes.status_view import build_status

    accounts = [dovecot_server.new_account() for _ in IDS]
    env = service_env(accounts[0], webhook_receiver, redis_url=redis_url)
    config = config_with(env, accounts)
    second_target = dataclasses.replace(config.targets[0], id="archive", max_body_bytes=50_000)
    config = dataclasses.replace(config, targets=(config.targets[0], second_target),
                                 routes=(RouteConfig(to=("default", "archive")),))
    first = pipeline_factory(env, config=config)
    for account in accounts:
        account.server.append(account.user, make_email())
    webhook_receiver.wait_for(6, timeout=40)  # three emails, two targets each

    def every_mailbox_published() -> bool:
        document, _ = build_status(first.runtime.status_source())
        return all(entry["lease"]["held"] and entry["checkpoint"]["last_uid"] and entry["state"] != "standby"
                   for entry in document["mailboxes"])

    first.wait_until(every_mailbox_published, what="every mailbox published", timeout=15)
    document, _ = build_status(first.runtime.status_source())
    assert [entry["id"] for entry in document["mailboxes"]] == list(IDS)
    assert all(entry["state"] != "no_holder" and entry["checkpoint"]["last_uid"]
               for entry in document["mailboxes"]), document["mailboxes"]
    assert [entry["id"] for entry in document["targets"]] == ["default", "archive"]
    archive = document["targets"][1]
    assert (archive["pending"], archive["held"], archive["dead"], archive["body_cap_bytes"]) == (0, 0, 0, 50_000)
    assert archive["circuit"] == "closed"  # published by the holders with their statuses
    assert webhook_receiver.url not in str(document)
    # and /metrics carries the same figures, labelled by target and mailbox
    from prometheus_client import CollectorRegistry, generate_latest

    from routes.operator import StatusCollector

    registry = CollectorRegistry()
    registry.register(StatusCollector(document))
    text = generate_latest(registry).decode()
    assert 'render_signal_target_pending{target="archive"} 0.0' in text
    assert 'render_signal_target_circuit_open{target="archive"} 0.0' in text
    assert 'render_signal_target_dead_letters{target="default"} 0.0' in text
    for mailbox_id in IDS:
        assert f'render_signal_mailbox_lease_held{{mailbox="{mailbox_id}"}} 1.0' in text


def test_health_names_the_mailbox_at_fault(dovecot_server, webhook_receiver, redis_server, redis_url,
                                           pipeline_factory):
    from routes.health import assess_source

    accounts = [dovecot_server.new_account() for _ in IDS]
    env = service_env(accounts[0], webhook_receiver, redis_url=redis_url)
    config = config_with(env, accounts)
    # Given a second mailbox whose password is wrong (its holder holds the lease but no cycle ever completes)
    broken = dataclasses.replace(config.mailboxes[1], credentials=PasswordCredentials("wrong-password"))
    config = dataclasses.replace(config, mailboxes=(config.mailboxes[0], broken))
    pipeline = pipeline_factory(env, config=config)

    def problems() -> list[dict]:
        return assess_source(pipeline.runtime.status_source()).problem_dicts()

    # Then /health reports that mailbox, by id, as stalled, and not the healthy one
    pipeline.wait_until(lambda: any(p["kind"] == "mailbox" and p["id"] == IDS[1] for p in problems()),
                        what="the broken mailbox reported", timeout=30)
    assert not any(p["kind"] == "mailbox" and p["id"] == IDS[0] for p in problems())
