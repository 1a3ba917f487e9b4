"""R2 enrichment in the background (``background.enrichment``) against a real SQLite store: an email queued as
``enriching`` is copied once for all its targets and becomes deliverable with its final body; one email that
raises, lies or never returns ends with its source URLs and never stops the others; stale work left by a crashed
process is finished; only the holder of the email's mailbox enriches it."""

from __future__ import annotations

import threading
import time

import pytest

from background.enrichment import Enricher, SourceLink, group_by_email, source_links
from background.ingest import Ingest, IngestPolicy
from email_processing.orchestrator import OffloadedLink
from email_processing.parsing import parse_message
from harness.mail import make_email
from services.state_store import OutboxItem, StateStore

LINK = "https://www.dropbox.com/scl/fi/abc123/cut.mov?rlkey=k1&dl=0"


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


class Offloader:
    """Copies every link to a made-up R2 URL (or does what ``behaviour`` says); records its calls."""

    def __init__(self, behaviour: str = "copy") -> None:
        self.behaviour = behaviour
        self.calls: list[str] = []
        self.release = threading.Event()

    def offloads_any(self, links) -> bool:
        return any(link.provider == "dropbox" for link in links)

    def offload_links(self, email_id, links):
        self.calls.append(email_id)
        if self.behaviour == "raise":
            raise RuntimeError("offloader defect")
        if self.behaviour == "hang":
            self.release.wait(30)
        if self.behaviour == "short":
            return []
        return [OffloadedLink(link.provider, link.raw_url, link.direct_url, f"https://r2.example/{email_id}/{n}",
                              "cut.mov") for n, link in enumerate(links)]


def queue_email(store, offloader, *, targets=("default",), links=(LINK,), clock=time.time, mailbox="default"):
    """Ingest one email as the poller does with R2 on: queued ``enriching``; returns its items."""
    policy = IngestPolicy(mailbox_id=mailbox, state_key="INBOX" if mailbox == "default" else f"{mailbox}:INBOX")
    ingest = Ingest(store, policy, targets, offloader_factory=lambda: offloader, enrich_later=True, clock=clock)
    ingested = ingest.ingest(parse_message(make_email(links=list(links))), received_at="2026-12-03T10:00:00Z")
    return ingested.items


def enricher_for(store, offloader, *, held=lambda mailbox_id: True, clock=time.time, budget=5.0) -> Enricher:
    return Enricher(store, lambda: offloader, budget_seconds=budget, holds=held, wakeup=threading.Event(),
                    delivery_wakeup=threading.Event(), clock=clock, stale_margin_seconds=1.0)


def run_sweep_and_jobs(enricher: Enricher) -> None:
    """One sweep, then the jobs it handed over, in this thread (no enrichment threads)."""
    enricher.sweep()
    while True:
        try:
            job = enricher._jobs.get_nowait()
        except Exception:
            return
        if job is None:
            return
        enricher.enrich(*job)
        enricher._in_flight.pop(job[0], None)


def test_ingest_with_r2_on_queues_an_email_with_copyable_links_as_enriching_without_calling_r2(store: StateStore):
    offloader = Offloader()
    items = queue_email(store, offloader)
    assert [item.status for item in items] == ["enriching"]
    assert offloader.calls == []                                   # ingestion never waits on R2
    assert store.get_item(items[0].event_id).payload["delivery_links"][0]["r2_url"] is None
    assert store.claim_due("w", time.time() + 10, 10, 30) == []


def test_an_email_without_copyable_links_is_queued_pending_at_once(store: StateStore):
    items = queue_email(store, Offloader(), links=("https://wetransfer.com/downloads/abcdef123456/fedcba654321",))
    assert [item.status for item in items] == ["pending"]


def test_the_links_of_an_email_are_copied_once_for_all_its_targets_and_each_item_gets_its_own_event_id(
        store: StateStore):
    offloader = Offloader()
    items = queue_email(store, offloader, targets=("default", "crm"))
    enricher = enricher_for(store, offloader)
    run_sweep_and_jobs(enricher)
    assert len(offloader.calls) == 1
    for item in items:
        stored = store.get_item(item.event_id)
        assert stored.status == "pending"
        assert stored.payload["event_id"] == item.event_id
        assert stored.payload["delivery_links"][0]["r2_url"].startswith("https://r2.example/")
        assert stored.payload["delivery_links"][0]["original_filename"] == "cut.mov"
    assert enricher.delivery_wakeup.is_set()
    assert store.counters()["enrichments"] == {"r2": 1}
    run_sweep_and_jobs(enricher)                     # nothing left: no second copy, the body stays final
    assert len(offloader.calls) == 1


@pytest.mark.parametrize("behaviour", ["raise", "short"])
def test_an_offloader_that_raises_or_answers_the_wrong_count_leaves_the_source_urls_and_the_email_goes_out(
        store: StateStore, behaviour: str):
    bad = Offloader(behaviour)
    items = queue_email(store, bad)
    run_sweep_and_jobs(enricher_for(store, bad))
    stored = store.get_item(items[0].event_id)
    assert stored.status == "pending" and stored.payload["delivery_links"][0]["r2_url"] is None
    assert store.counters()["enrichments"] == {"source": 1}


def test_one_email_whose_enrichment_never_returns_is_given_up_after_the_budget_and_the_others_go_on(
        store: StateStore):
    now = [1_000_000.0]
    hanging = Offloader("hang")
    stuck = queue_email(store, hanging, clock=lambda: now[0])[0]
    enricher = enricher_for(store, hanging, clock=lambda: now[0], budget=5.0)
    try:
        stop, held = threading.Event(), threading.Event()
        held.set()
        runner = threading.Thread(target=enricher.run, args=(stop, held), daemon=True)
        runner.start()
        deadline = time.monotonic() + 10
        while not hanging.calls and time.monotonic() < deadline:
            time.sleep(0.02)
        assert hanging.calls, "the enrichment started"
        # Another email, enriched by a working offloader while the first one hangs.
        working = Offloader()
        enricher.offloader_factory = lambda: working
        other = queue_email(store, working, clock=lambda: now[0])[0]
        enricher.wakeup.set()
        while store.get_item(other.event_id).status != "pending" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.get_item(other.event_id).payload["delivery_links"][0]["r2_url"]
        assert store.get_item(stuck.event_id).status == "enriching"
        now[0] += 7.0                                     # past the budget plus the margin
        enricher.wakeup.set()
        while store.get_item(stuck.event_id).status != "pending" and time.monotonic() < deadline:
            time.sleep(0.02)
        final = store.get_item(stuck.event_id)
        assert final.status == "pending" and final.payload["delivery_links"][0]["r2_url"] is None
        assert store.counters()["enrichments"] == {"r2": 1, "stale": 1}
        stop.set()
        enricher.wakeup.set()
        runner.join(10)
        assert not runner.is_alive()
    finally:
        hanging.release.set()


def test_work_left_enriching_by_a_crashed_process_is_resumed_when_recent_and_sent_with_source_urls_when_old(
        store: StateStore):
    offloader = Offloader()
    recent = queue_email(store, offloader, clock=time.time)[0]
    old = queue_email(store, offloader, clock=lambda: time.time() - 3600)[0]
    run_sweep_and_jobs(enricher_for(store, offloader))
    assert store.get_item(recent.event_id).payload["delivery_links"][0]["r2_url"]
    assert store.get_item(old.event_id).payload["delivery_links"][0]["r2_url"] is None
    assert store.get_item(old.event_id).status == "pending"
    assert offloader.calls == [recent.email_id]
    assert store.counters()["enrichments"] == {"r2": 1, "stale": 1}


def test_only_the_holder_of_the_emails_mailbox_enriches_it(store: StateStore):
    offloader = Offloader()
    mine = queue_email(store, offloader, mailbox="studio")[0]
    theirs = queue_email(store, offloader, mailbox="other")[0]
    run_sweep_and_jobs(enricher_for(store, offloader, held=lambda mailbox_id: mailbox_id == "studio"))
    assert store.get_item(mine.event_id).status == "pending"
    assert store.get_item(theirs.event_id).status == "enriching"


def test_a_queued_body_with_unreadable_links_is_sent_as_queued(store: StateStore):
    store.enqueue(OutboxItem(event_id="msg_" + "a" * 32, email_id="a" * 32, mailbox="INBOX", uidvalidity=1, uid=1,
                             message_id=None, status="enriching", created_at=time.time(),
                             payload={"event_id": "msg_" + "a" * 32, "delivery_links": [{"provider": 3}]}))
    offloader = Offloader()
    run_sweep_and_jobs(enricher_for(store, offloader))
    assert store.get_item("msg_" + "a" * 32).status == "pending"
    assert offloader.calls == []


def test_source_links_and_grouping_read_what_ingest_wrote():
    body = {"delivery_links": [{"provider": "dropbox", "raw_url": "r", "direct_url": "d", "r2_url": None}]}
    assert source_links(body) == [SourceLink("dropbox", "r", "d")]
    with pytest.raises(ValueError):
        source_links({"delivery_links": [{"provider": "dropbox"}]})
    items = [OutboxItem(event_id=f"msg_{e}_{t}", email_id=e, payload={}, mailbox="INBOX", uidvalidity=1, uid=1,
                        message_id=None, created_at=c) for e, t, c in (("b", "x", 2.0), ("a", "x", 1.0),
                                                                       ("b", "y", 2.0))]
    assert {k: [i.event_id for i in v] for k, v in group_by_email(items).items()} == {
        "a": ["msg_a_x"], "b": ["msg_b_x", "msg_b_y"]}
