"""Routes and fan-out through the real pipeline (issue 17): real Dovecot, real receivers, both state backends.

Each email reaches exactly the targets its routes name, once each; an email with several items is flagged done on
the server only once every item has ended; a target that answers 503 throughout delays none of the others.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from config import RouteConfig, RouteMatch, ServiceConfig
from harness.mail import make_email
from harness.pipeline import service_env
from harness.receiver import WebhookReceiver
from settings import Settings

pytestmark = [pytest.mark.imap, pytest.mark.timeout(90)]

DONE = "$RenderSignalDone"
DROPBOX = "https://www.dropbox.com/scl/fi/abc{n}/cut.mov?rlkey=k{n}&dl=0"
WETRANSFER = "https://we.tl/t-ROUTE{n:05d}"


@pytest.fixture
def receivers():
    started = {name: WebhookReceiver().start() for name in ("folders", "transfers", "archive", "down")}
    started["down"].respond_with(503, b"Service Unavailable")
    yield started
    for receiver in started.values():
        receiver.stop()


def config_for(env: dict, receivers: dict) -> ServiceConfig:
    base = ServiceConfig.from_settings(Settings.from_env(env))
    template = base.targets[0]
    targets = tuple(dataclasses.replace(template, id=name, url=receiver.url) for name, receiver in receivers.items())
    routes = (
        # everything from the agency is archived, and goes on to the routes below
        RouteConfig(match=RouteMatch(senders=("@agency.example",)), to=("archive",), continue_=True),
        RouteConfig(match=RouteMatch(subject="(?i)newsletter"), drop=True),
        RouteConfig(match=RouteMatch(providers=("dropbox",)), to=("folders", "down")),
        RouteConfig(match=RouteMatch(providers=("wetransfer",)), to=("transfers",)),
    )
    return dataclasses.replace(base, targets=targets, routes=routes)


def test_each_email_reaches_exactly_the_targets_its_routes_name_and_a_dead_target_delays_none(
        state_backend, imap_account, receivers, pipeline_factory):
    # Given four targets (one answering 503 throughout) and routes by sender, subject and provider
    env = service_env(imap_account, receivers["folders"], WEBHOOK_RETRY_SCHEDULE="30", **state_backend)
    pipeline = pipeline_factory(env, config=config_for(env, receivers))
    emails = {
        "dropbox": make_email(links=[DROPBOX.format(n=1)]),
        "wetransfer": make_email(links=[WETRANSFER.format(n=2)]),
        "agency-transfer": make_email(sender="Agency <studio@agency.example>", links=[WETRANSFER.format(n=3)]),
        "agency-newsletter": make_email(sender="Agency <news@agency.example>", subject="Newsletter",
                                        links=[WETRANSFER.format(n=4)]),
        "newsletter": make_email(subject="Our NEWSLETTER", links=[DROPBOX.format(n=5)]),
        "no-links": make_email(links=[]),
    }
    started = time.monotonic()
    # When they arrive
    uids = {name: imap_account.server.append(imap_account.user, raw) for name, raw in emails.items()}
    # Then each healthy target gets exactly its emails, once each, while "down" keeps failing
    folders = receivers["folders"].wait_for(1, timeout=30)
    transfers = receivers["transfers"].wait_for(2, timeout=30)
    archive = receivers["archive"].wait_for(2, timeout=30)
    elapsed = time.monotonic() - started
    pipeline.wait_until(lambda: DONE in imap_account.server.flags(imap_account.user, uids["newsletter"]),
                        what="the dropped email flagged done", timeout=20)
    time.sleep(1.0)  # time for a duplicate or a stray delivery to show

    def subjects(events):
        return sorted(event["json"]["subject"] for event in events)

    def subject_of(name):
        from email import message_from_bytes
        return message_from_bytes(emails[name])["Subject"]

    assert subjects(receivers["folders"].delivered()) == [subject_of("dropbox")]
    assert subjects(receivers["transfers"].delivered()) == sorted([subject_of("wetransfer"),
                                                                    subject_of("agency-transfer")])
    assert subjects(receivers["archive"].delivered()) == sorted([subject_of("agency-transfer"),
                                                                  subject_of("agency-newsletter")])
    assert len(folders) == 1 and len(transfers) == 2 and len(archive) == 2
    assert elapsed < 20, f"the healthy targets waited on the dead one ({elapsed:.1f} s)"
    # each target's item has its own event id (the email's, with the target's suffix)
    ids = [event["headers"]["webhook-id"] for name in ("folders", "transfers", "archive")
           for event in receivers[name].delivered()]
    assert len(ids) == len(set(ids))
    store = pipeline.store
    counters = store.counters()
    assert counters["emails_skipped"]["route_drop"] == 1
    assert counters["emails_skipped"]["no_delivery_links"] == 1
    # and an email whose items are not all ended (the dead target's is retrying) is not flagged done yet,
    # while the emails whose items all ended are
    flags = imap_account.server.flags
    for name in ("wetransfer", "agency-transfer", "agency-newsletter", "no-links"):
        pipeline.wait_until(lambda name=name: DONE in flags(imap_account.user, uids[name]), what=f"{name} done",
                            timeout=20)
    assert DONE not in flags(imap_account.user, uids["dropbox"])
    assert receivers["down"].events, "the dead target was tried"
