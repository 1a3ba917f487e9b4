"""Ingestion never waits on R2 (issue 16, defect 4): real Dovecot, a real receiver and an HTTP Worker stand-in
that never answers for one link. The email behind the hanging one is queued, copied and delivered while the first
waits; the first goes out with its source URLs once R2_EMAIL_BUDGET_SECONDS have passed. Work a crashed process
left ``enriching`` is resumed by the next holder (recent) or sent with its source URLs (older than the budget).
"""

from __future__ import annotations

import time

import pytest

from background.ingest import Ingest, IngestPolicy
from email_processing.parsing import parse_message
from harness.mail import make_email
from harness.pipeline import service_env
from services.state_store import open_state_store
from settings import Settings
from tests.integration.test_r2_resilience import TOKEN, Answer, fake_worker, worker_success  # noqa: F401

pytestmark = [pytest.mark.imap, pytest.mark.slow]

HANGING = "https://www.dropbox.com/scl/fi/hang000/never.mov?rlkey=h1&dl=0"
COPIED = "https://www.dropbox.com/scl/fi/ok0001/cut.mov?rlkey=k1&dl=0"
BUDGET_SECONDS = 4.0


def hang_for_one_link(request: dict) -> Answer:
    if "hang000" in (request["body"] or {}).get("source_url", ""):
        return Answer(hang=True)
    return worker_success(request)


def r2_env(imap_account, webhook_receiver, worker, **extra) -> dict[str, str]:
    return service_env(imap_account, webhook_receiver, R2_FETCH_ENABLED="true", R2_FETCH_ENDPOINT=worker.url,
                       R2_ALLOW_INSECURE="true", R2_FETCH_TOKEN=TOKEN, R2_BUCKET_NAME="deliveries",
                       R2_PUBLIC_BASE_URL="https://files.example", R2_FETCH_TIMEOUT_SECONDS="30",
                       R2_EMAIL_BUDGET_SECONDS=str(BUDGET_SECONDS), **extra)


@pytest.mark.timeout(90)
def test_a_worker_that_never_answers_holds_up_neither_ingestion_nor_the_emails_behind_it(
        imap_account, webhook_receiver, pipeline_factory, fake_worker):  # noqa: F811 - the imported fixture
    worker = fake_worker(hang_for_one_link)
    pipeline = pipeline_factory(r2_env(imap_account, webhook_receiver, worker))
    pipeline.wait_until_holding()
    # Given an email whose Dropbox link the Worker never answers, then two more behind it
    imap_account.server.append(imap_account.user, make_email(subject="first (hangs)", links=[HANGING]))
    imap_account.server.append(imap_account.user, make_email(subject="second (copied)", links=[COPIED]))
    imap_account.server.append(imap_account.user, make_email(
        subject="third (no R2)", links=["https://wetransfer.com/downloads/abcdef123456/fedcba654321"]))
    # Then all three are delivered, the two behind the hanging one first
    events = webhook_receiver.wait_for(3, timeout=60)
    subjects = [event["json"]["subject"] for event in events]
    assert subjects[-1] == "first (hangs)", subjects
    by_subject = {event["json"]["subject"]: event for event in events}
    first = by_subject["first (hangs)"]["json"]["delivery_links"][0]
    assert first["r2_url"] is None and first["raw_url"] == HANGING        # the source URL, after the budget
    assert by_subject["second (copied)"]["json"]["delivery_links"][0]["r2_url"].startswith("https://files.example/")
    # ...and the hanging one waited for its budget, not for the Worker's 30 s timeout
    waited = by_subject["first (hangs)"]["received_at"] - by_subject["second (copied)"]["received_at"]
    assert 0 < waited < 30, waited
    counters = pipeline.store.counters()
    assert counters["enrichments"] == {"r2": 1, "source": 1}
    assert counters["emails_processed"] == 3


@pytest.mark.timeout(90)
def test_the_next_holder_resumes_recent_enrichment_and_sends_old_enrichment_with_source_urls(
        imap_account, webhook_receiver, pipeline_factory, fake_worker):  # noqa: F811 - the imported fixture
    worker = fake_worker(worker_success)
    env = r2_env(imap_account, webhook_receiver, worker)
    # Given two emails a crashed process queued as enriching: one a moment ago, one an hour ago
    store = open_state_store(Settings.from_env(env))

    class Copier:
        def offloads_any(self, links):
            return True

    def queue(subject: str, link: str, at: float) -> None:
        ingest = Ingest(store, IngestPolicy(mailbox_id="default", state_key="INBOX"), ("default",),
                        offloader_factory=Copier, enrich_later=True, clock=lambda: at)
        ingest.ingest(parse_message(make_email(subject=subject, links=[link])), received_at="2026-12-03T10:00:00Z")

    queue("recent", COPIED, time.time())
    queue("old", "https://www.dropbox.com/scl/fi/old0001/a.mov?rlkey=o1&dl=0", time.time() - 3600)
    assert store.outbox_stats(time.time())["enriching"] == 2
    store.close()
    # When a process starts and takes the lease
    pipeline = pipeline_factory(env)
    # Then both are delivered: the recent one with its R2 copy, the old one with its source URL
    events = {event["json"]["subject"]: event["json"] for event in webhook_receiver.wait_for(2, timeout=30)}
    assert events["recent"]["delivery_links"][0]["r2_url"].startswith("https://files.example/")
    assert events["old"]["delivery_links"][0]["r2_url"] is None
    assert pipeline.store.counters()["enrichments"] == {"r2": 1, "stale": 1}
    assert pipeline.store.outbox_stats(time.time())["enriching"] == 0
