"""R2 enrichment in the background: ingestion never waits on the Worker.

With R2 on, ingest queues an email whose links R2 copies as outbox items with status ``enriching`` (durable, not
claimable, counted as pending) and goes on with the next email. The ``Enricher`` (a sweeper thread plus a few
enrichment threads, in the process that holds the email's mailbox) copies the links of each such email once (for
every target of the email), within R2_EMAIL_BUDGET_SECONDS, writes the final body into each item and makes it
deliverable (``finish_enrichment``: once; a body never changes after it). Links not copied within the budget keep
their source URLs: the webhook goes out either way.

The store is the queue: the sweeper finds enriching items there (woken by ingest, and every few seconds), so an
email queued by a process that crashed is picked up by the next holder. An email found enriching for longer than
the budget plus a margin (its process crashed, or its enrichment never returned) is finished with the body it was
queued with (the source URLs), counted ``enrichments{reason=stale}``. One email that raises, hangs or has an
unreadable body never stops the others.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

from email_processing.payload import for_target, with_links
from services.state_store import OutboxItem, OutboxStatus, StateStoreError

logger = logging.getLogger(__name__)

ENRICH_THREADS = 4              # emails enriched at once per process (each copies up to 4 links at once)
SWEEP_INTERVAL_SECONDS = 5.0    # the sweeper looks at the store at least this often
SWEEP_LIMIT = 500               # enriching items read per sweep
STALE_MARGIN_SECONDS = 30.0     # beyond the budget: an enrichment this late is given up (source URLs)


@dataclass(frozen=True)
class SourceLink:
    """A link as the queued body lists it (what the offloader needs)."""

    provider: str
    raw_url: str
    direct_url: str


def source_links(payload: dict) -> list[SourceLink]:
    """The links of a queued body, in order (entries without the three strings are not links: ``ValueError``)."""
    links = []
    for entry in payload.get("delivery_links") or []:
        provider, raw_url, direct_url = (entry.get(key) for key in ("provider", "raw_url", "direct_url"))
        if not all(isinstance(value, str) for value in (provider, raw_url, direct_url)):
            raise ValueError("a delivery link without provider, raw_url and direct_url")
        links.append(SourceLink(provider, raw_url, direct_url))
    return links


def group_by_email(items: Iterable[OutboxItem]) -> dict[str, list[OutboxItem]]:
    """Enriching items by email id, oldest email first (an email has one item per target)."""
    groups: dict[str, list[OutboxItem]] = {}
    for item in sorted(items, key=lambda item: item.created_at):
        groups.setdefault(item.email_id, []).append(item)
    return groups


class Wakeable(Protocol):
    """What the enricher sets when items became deliverable (an Event, or one that wakes several)."""

    def set(self) -> None: ...


class Enricher:
    """Finishes the enrichment of queued emails. ``holds(mailbox_id)``: whether this process holds that mailbox
    (only its holder enriches its emails); ``offloader_factory``: the R2 offloader (built on first use);
    ``wakeup``: set by ingest when it queued an enriching email; ``delivery_wakeup``: set when items became
    deliverable."""

    def __init__(self, store, offloader_factory: Callable[[], Any], *, budget_seconds: float,
                 holds: Callable[[str], bool], wakeup: threading.Event, delivery_wakeup: Wakeable,
                 threads: int = ENRICH_THREADS, clock: Callable[[], float] = time.time,
                 stale_margin_seconds: float = STALE_MARGIN_SECONDS) -> None:
        self.store = store
        self.offloader_factory = offloader_factory
        self.budget_seconds = float(budget_seconds)
        self.holds = holds
        self.wakeup = wakeup
        self.delivery_wakeup = delivery_wakeup
        self.threads = max(1, int(threads))
        self.clock = clock
        self.stale_after = self.budget_seconds + float(stale_margin_seconds)
        self._jobs: queue.SimpleQueue[tuple[str, tuple[str, ...]] | None] = queue.SimpleQueue()
        self._in_flight: dict[str, float] = {}   # email id -> when its enrichment started (clock)
        self._lock = threading.Lock()

    # --- threads --------------------------------------------------------------------------------------------

    def run(self, stop_event: threading.Event, held_event: threading.Event) -> None:
        """The sweeper thread's body; starts the enrichment threads (daemons: one that never returns must not
        hold up the exit) and stops them when ``stop_event`` is set."""
        for number in range(self.threads):
            threading.Thread(target=self._work, name=f"render-signal-enrich-{number + 1}", daemon=True).start()
        try:
            while not stop_event.is_set():
                if held_event.is_set():
                    try:
                        self.sweep()
                    except StateStoreError as exc:
                        logger.warning("R2_TRANSFER: enrichment sweep failed (will retry): %s", exc)
                    except Exception:  # the sweeper must not die: queued emails would wait for ever
                        logger.error("R2_TRANSFER: enrichment sweep failed (will retry)", exc_info=True)
                self.wakeup.wait(SWEEP_INTERVAL_SECONDS)
                self.wakeup.clear()
        finally:
            for _ in range(self.threads):
                self._jobs.put(None)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            email_id, event_ids = job
            try:
                self.enrich(email_id, event_ids)
            except Exception:  # isolation: this email is retried by a later sweep, or given up when stale
                logger.error("R2_TRANSFER: enrichment failed email_id=%s", email_id, exc_info=True)
            finally:
                with self._lock:
                    self._in_flight.pop(email_id, None)

    # --- one sweep, one email ---------------------------------------------------------------------------------

    def sweep(self) -> int:
        """Hand every enriching email of a held mailbox to the enrichment threads, and finish with the source
        URLs those that have been enriching for too long. Returns how many emails were handed over."""
        now = self.clock()
        handed = 0
        for email_id, group in group_by_email(self.store.list_items(OutboxStatus.ENRICHING, SWEEP_LIMIT)).items():
            try:
                if not self.holds(group[0].mailbox_id):
                    continue
                with self._lock:
                    started = self._in_flight.get(email_id)
                age = now - min(item.created_at for item in group)
                if started is not None:
                    if now - started > self.stale_after:   # its enrichment never returned: give up on R2
                        self.finish(email_id, group, None, "stale")
                    continue
                if age > self.stale_after:                 # queued by a process that is gone, long ago
                    self.finish(email_id, group, None, "stale")
                    continue
                with self._lock:
                    self._in_flight[email_id] = now
                self._jobs.put((email_id, tuple(item.event_id for item in group)))
                handed += 1
            except StateStoreError:
                raise
            except Exception:
                logger.error("R2_TRANSFER: enrichment sweep failed for email_id=%s", email_id, exc_info=True)
        return handed

    def enrich(self, email_id: str, event_ids: Iterable[str]) -> None:
        """Copy the links of one email (its enriching items ``event_ids``, one per target) and finish them."""
        group = [item for item in (self.store.get_item(event_id) for event_id in event_ids)
                 if item is not None and item.status == OutboxStatus.ENRICHING]
        if not group:
            return  # finished meanwhile (another holder, or given up as stale)
        body = group[0].payload
        try:
            links = source_links(body)
        except ValueError:
            logger.error("R2_TRANSFER: queued body of email_id=%s lists unreadable links; sent as queued", email_id)
            self.finish(email_id, group, None, "source")
            return
        offloaded = self._offload(email_id, links)
        if offloaded is None:
            self.finish(email_id, group, None, "source")
            return
        copied = any(getattr(link, "r2_url", None) for link in offloaded)
        self.finish(email_id, group, with_links(body, offloaded), "r2" if copied else "source")

    def _offload(self, email_id: str, links: list[SourceLink]) -> list | None:
        if not links:
            return None
        try:
            offloaded = list(self.offloader_factory().offload_links(email_id, links))
        except Exception:  # the offloader promises not to raise; R2 is an optimisation, never a dependency
            logger.warning("R2_TRANSFER: offloader failed email_id=%s; sending source URLs", email_id, exc_info=True)
            return None
        if len(offloaded) != len(links):
            logger.warning("R2_TRANSFER: offloader returned %d links for %d email_id=%s; sending source URLs",
                           len(offloaded), len(links), email_id)
            return None
        return offloaded

    def finish(self, email_id: str, group: list[OutboxItem], body: dict | None, reason: str) -> None:
        """Make the email's items deliverable with ``body`` (None: as queued, with the source URLs)."""
        now = self.clock()
        finished = 0
        for item in group:
            final = item.payload if body is None else for_target(body, item.target_id)
            if self.store.finish_enrichment(item.event_id, final, now):
                finished += 1
        if not finished:
            return  # another process finished it first: its body is the one sent
        self.store.incr("enrichments", label=reason, labels={"mailbox": group[0].mailbox_id})
        log = logger.warning if reason == "stale" else logger.info
        log("R2_TRANSFER: enriched email_id=%s mailbox=%s items=%d outcome=%s", email_id, group[0].mailbox_id,
            finished, reason)
        self.delivery_wakeup.set()
