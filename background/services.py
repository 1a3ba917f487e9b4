"""The background threads of one worker: lease keeper, poller, delivery loop, status observer (and, with R2, the
enricher that makes the R2 copies of queued emails: ``background.enrichment``).

Every worker runs all four; the poller and the delivery loop act only while the lease is held here. The observer
publishes the holder's status document to the shared store (so any worker of any container answers the same) and
caches the cluster view that ``/health`` reads without network I/O. Threads are daemons with names, started after
Gunicorn initialised the worker, stopped through events and joined with a timeout; none installs a signal handler.
Each object is given exactly what it uses; ``ServiceRuntime`` (``background/runner.py``) builds and passes them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Mapping, Sequence

from background.delivery import DeliveryWorker
from background.enrichment import Enricher
from background.fencing import FencedStore, LeaseFence
from background.health import HealthTimings, observed_view
from background.housekeeping import Chore, Housekeeping
from background.lease import Lease, LeaseKeeper, LeaseState, OwnershipGuard
from background.poller import MailboxPoller
from background.runner import ImapState, InstanceInfo, PollerState, PollerStatus
from background.stranded import Stranded, settle_removed_targets, survey
from config import MailboxConfig, RouteConfig, ServiceConfig, TargetConfig
from services.state_store import StateStore, StateStoreError

logger = logging.getLogger(__name__)

OBSERVE_INTERVAL_SECONDS = 1.0
TRIM_INTERVAL_SECONDS = 3600
STRANDED_INTERVAL_SECONDS = 300  # the survey of work left by removed mailboxes and targets


@dataclass
class MailboxUnit:
    """One mailbox's share of a worker: its lease and keeper, its ownership guard, its poller and its delivery
    threads (per target), its wake-up events. Only while the lease is held here do they act."""

    mailbox: MailboxConfig
    lease: Lease
    keeper: LeaseKeeper
    guard: OwnershipGuard
    poller: MailboxPoller
    deliveries: list[DeliveryWorker]
    delivery_wakeup: threading.Event
    flag_wakeup: threading.Event

    def holds(self) -> bool:
        return self.keeper.held_event.is_set() and self.lease.holds_locally()


@dataclass(frozen=True)
class MailboxLease:
    """What the runtime hands over per mailbox: the mailbox, its lease and keeper, and its poller's status."""

    mailbox: MailboxConfig
    lease: Lease
    keeper: LeaseKeeper
    poller_status: PollerStatus


class _AnyHeld:
    """``is_set()`` while this worker holds at least one mailbox (what the shared enricher's sweeper waits on)."""

    def __init__(self, units: list[MailboxUnit]) -> None:
        self._units = units

    def is_set(self) -> bool:
        return any(unit.holds() for unit in self._units)


class BackgroundServices:
    """The threads of one worker: per mailbox a lease keeper, a poller and delivery threads, plus one status
    observer (and, with R2, one enricher). ``offloader_factory`` and ``sender_factory`` build their adapters on
    first use (one sender per delivery thread). Compatibility: ``lease``, ``keeper``, ``guard``, ``poller`` and
    ``deliveries`` are those of the first mailbox (whose lease also runs the cluster's chores: ``observer``)."""

    def __init__(self, *, mailboxes: Sequence[MailboxLease], targets: Sequence[TargetConfig], store: StateStore,
                 observer: StatusObserver, offloader_factory: Callable[[], Any],
                 sender_factory: Callable[[TargetConfig], Any], enrich_budget_seconds: float | None = None,
                 routes: Sequence[RouteConfig] = (), membership: Any = None,
                 rate_limiters: Mapping[str, Any] | None = None) -> None:
        """``targets``: each gets its own delivery threads per mailbox (``concurrency`` of them), claiming only its
        own items of that mailbox, so a dead or slow target never delays the others; ``sender_factory(target)``
        builds one sender per thread. ``routes``: which targets each email goes to (empty: all of them).
        ``enrich_budget_seconds``: R2 is on and each email's copies are made by the enricher thread within that
        budget (``background.enrichment``); None: R2 is off, no enricher."""
        if not mailboxes:
            raise ValueError("BackgroundServices needs at least one mailbox")
        self.store = store
        self.membership = membership  # background.membership.Membership with Redis: left on stop
        self.enrich_wakeup = threading.Event() if enrich_budget_seconds is not None else None
        self.units: list[MailboxUnit] = []
        for entry in mailboxes:
            guard = OwnershipGuard(entry.lease)
            fence = LeaseFence(store, entry.mailbox.id)
            entry.keeper.on_acquired = fence.advance
            fenced = FencedStore(store, fence, entry.lease)
            delivery_wakeup, flag_wakeup = threading.Event(), threading.Event()
            poller = MailboxPoller(entry.mailbox, fenced, entry.lease, guard, entry.poller_status,
                                   target_ids=tuple(target.id for target in targets), routes=tuple(routes),
                                   offloader_factory=offloader_factory,
                                   delivery_wakeup=delivery_wakeup, flag_wakeup=flag_wakeup,
                                   enrich_wakeup=self.enrich_wakeup)
            # The first mailbox's holder also delivers what removed mailboxes left (their items are still sent).
            adopted = self._removed_mailboxes if not self.units else tuple
            deliveries = [
                DeliveryWorker(target, fenced, entry.lease, guard, partial(sender_factory, target),
                               wakeup=delivery_wakeup, flag_wakeup=flag_wakeup, mailbox_id=entry.mailbox.id,
                               adopted_mailboxes=adopted, rate_limiter=(rate_limiters or {}).get(target.id))
                for target in targets for _ in range(target.concurrency)]
            self.units.append(MailboxUnit(entry.mailbox, entry.lease, entry.keeper, guard, poller, deliveries,
                                          delivery_wakeup, flag_wakeup))
        first = self.units[0]
        self.lease, self.keeper, self.guard, self.poller = first.lease, first.keeper, first.guard, first.poller
        self.deliveries = first.deliveries
        self.delivery_wakeup, self.flag_wakeup = first.delivery_wakeup, first.flag_wakeup
        self.enricher: Enricher | None = None
        self._any_held = _AnyHeld(self.units)
        if self.enrich_wakeup is not None and enrich_budget_seconds is not None:
            by_id = {unit.mailbox.id: unit for unit in self.units}
            self.enricher = Enricher(store, offloader_factory, budget_seconds=enrich_budget_seconds,
                                     holds=lambda mailbox_id: mailbox_id in by_id and by_id[mailbox_id].holds(),
                                     wakeup=self.enrich_wakeup, delivery_wakeup=_WakeAll(self.units))
        self.observer = observer
        observer.mailbox_units = lambda: self.units
        self._stop_workers = threading.Event()
        self._stop_keeper = threading.Event()
        self._stopping = False
        self.threads: list[threading.Thread] = []
        self._keeper_threads: list[threading.Thread] = []

    def start(self) -> None:
        specs: list[tuple[str, Callable[..., None], tuple]] = []
        for unit in self.units:
            suffix = "" if unit.mailbox.id == self.units[0].mailbox.id else f"-{unit.mailbox.id}"
            held = unit.keeper.held_event
            specs.append((f"poller{suffix}", unit.poller.run, (self._stop_workers, held)))
            specs.extend((f"delivery{suffix}-{n}", worker.run, (self._stop_workers, held))
                         for n, worker in enumerate(unit.deliveries, start=1))
        specs.append(("status-observer", self.observer.run, (self._stop_workers,)))
        if self.enricher is not None:
            specs.append(("enricher", self.enricher.run, (self._stop_workers, self._any_held)))
        for unit in self.units:
            suffix = "" if unit.mailbox.id == self.units[0].mailbox.id else f"-{unit.mailbox.id}"
            thread = threading.Thread(target=unit.keeper.run, args=(self._stop_keeper,),
                                      name=f"render-signal-lease-keeper{suffix}", daemon=True)
            thread.start()
            self._keeper_threads.append(thread)
        for name, target, args in specs:
            thread = threading.Thread(target=target, args=args, name=f"render-signal-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)
        self.threads = self._keeper_threads + self.threads
        logger.info("BG_POLLER: background threads started for %d mailbox(es) (lease backend %s)",
                    len(self.units), self.lease.backend)

    def stop(self, timeout: float) -> None:
        """Stop the workers first (no new IMAP command, no new attempt), then release the leases."""
        self._stopping = True
        deadline = time.monotonic() + timeout
        self._stop_workers.set()
        for unit in self.units:
            unit.delivery_wakeup.set()
            unit.flag_wakeup.set()
        if self.enrich_wakeup is not None:
            self.enrich_wakeup.set()
        workers = [thread for thread in self.threads if thread not in self._keeper_threads]
        for thread in workers:
            thread.join(max(0.0, deadline - time.monotonic() - 1.0))
        self._stop_keeper.set()
        for thread in self._keeper_threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        if self.membership is not None:
            self.membership.leave()  # the other members take this process's mailboxes at once
        alive = [thread.name for thread in self.threads if thread.is_alive()]
        if alive:
            logger.warning("BG_POLLER: threads still running at shutdown: %s", ", ".join(alive))
        else:
            logger.info("BG_POLLER: background threads stopped")

    def _removed_mailboxes(self) -> tuple[str, ...]:
        """Mailboxes no longer configured whose pending items this holder still delivers (the last survey)."""
        stranded = self.observer.stranded
        return tuple(stranded.mailboxes) if stranded is not None else ()

    def dead(self) -> bool:
        """True when a thread died while not stopping (it will not come back: restart the instance)."""
        return not self._stopping and any(not thread.is_alive() for thread in self.threads)

    def lease_snapshot(self) -> dict:
        return self.lease.snapshot()

    def cluster_view(self) -> dict:
        return self.observer.view


class _WakeAll:
    """``set()`` wakes the delivery threads of every mailbox (the enricher made items deliverable)."""

    def __init__(self, units: list[MailboxUnit]) -> None:
        self._units = units

    def set(self) -> None:
        for unit in self._units:
            unit.delivery_wakeup.set()


class StatusObserver:
    """Publishes the holder's status and keeps the cluster view fresh for /health (read without I/O); the view's
    rules are ``background.health``'s. ``instance`` gives this process's identity when it is published (the
    runtime re-reads the pid after Gunicorn forked); ``clock`` is the housekeeping schedule's monotonic clock."""

    def __init__(self, *, lease: Lease, store: StateStore, poller_status: PollerStatus,
                 instance: Callable[[], InstanceInfo], timings: HealthTimings, heartbeat_interval_seconds: float,
                 config: ServiceConfig | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.lease = lease
        self.store = store
        self.poller_status = poller_status
        self.instance = instance
        self.timings = timings
        self.started = time.time()
        self.last_read_ok = time.time()
        self.view: dict[str, Any] = {"poller": PollerState.STANDBY, "lease": LeaseState.STANDBY,
                                     "imap": ImapState.NOT_APPLICABLE, "outbox": "n/a", "cluster": "ok",
                                     "published": None, "outbox_stats": None, "stale": False}
        self._last_counters: dict | None = None
        self.config = config
        # The mailboxes of this worker (set by BackgroundServices): each one held here publishes its own status.
        self.mailbox_units: Callable[[], list[MailboxUnit]] = list
        self.stranded: Stranded | None = None  # what removed mailboxes and targets left (the last survey)
        # Holder-only chores, run from observe_once: trimming and the stranded-work survey at once and then on their
        # intervals, the heartbeat every interval.
        chores = [Chore("heartbeat", heartbeat_interval_seconds, self.log_heartbeat),
                  Chore("trim", TRIM_INTERVAL_SECONDS, self.trim_retention, run_at_start=True)]
        if config is not None:
            chores.append(Chore("stranded", STRANDED_INTERVAL_SECONDS, self.survey_stranded, run_at_start=True))
        self.housekeeping = Housekeeping(chores, clock=clock, expected_errors=(StateStoreError,))

    def run(self, stop_event: threading.Event) -> None:
        while not stop_event.is_set():
            try:
                self.observe_once()
            except Exception:  # the observer must never die: health depends on it
                logger.warning("BG_POLLER: status observer error", exc_info=True)
            stop_event.wait(OBSERVE_INTERVAL_SECONDS)

    def status_document(self) -> dict:
        document = {"lease": self.lease.snapshot(), "poller": self.poller_status.snapshot(),
                    "instance": self.instance().as_dict()}
        if self.stranded is not None:
            document["stranded"] = self.stranded.as_dict()
        return document

    def observe_once(self) -> None:
        lease = self.lease
        snapshot = lease.snapshot()
        held = snapshot.get("state") == LeaseState.HELD and lease.holds_locally()
        published = None
        stats = None
        statuses: dict[str, dict] = {}
        read_ok = True
        try:
            if held:
                self.store.publish_status(self.status_document(), ttl_seconds=self.timings.publish_ttl)
                self.housekeeping.run_due()
            self.publish_mailboxes()
            published = self.store.read_status()
            stats = self.store.outbox_stats(time.time())
            others = self._other_mailbox_ids()
            statuses = self.store.read_mailbox_statuses(others) if others else {}
            self.last_read_ok = time.time()
        except StateStoreError as exc:
            read_ok = False
            logger.debug("BG_POLLER: status store unreadable: %s", exc)
        if not read_ok:  # keep answering from what was last read; the health rules decide when that is stale
            published, stats = self.view.get("published"), self.view.get("outbox_stats")
            statuses = self.view.get("mailbox_statuses") or {}
        self.view = observed_view(
            lease_state=snapshot.get("state") or LeaseState.STANDBY, held=held,
            own_poller=self.poller_status.snapshot(), published=published, stats=stats,
            read_ok=read_ok, now=time.time(), last_read_ok=self.last_read_ok, started=self.started,
            timings=self.timings, first_mailbox=self._first_mailbox_id(),
            other_mailboxes=self._other_mailbox_ids(), mailbox_statuses=statuses)
        self.view["mailbox_statuses"] = statuses

    def _mailbox_ids(self) -> tuple[str, ...]:
        return tuple(mailbox.id for mailbox in self.config.mailboxes) if self.config is not None else ()

    def _first_mailbox_id(self) -> str:
        ids = self._mailbox_ids()
        return ids[0] if ids else "default"

    def _other_mailbox_ids(self) -> tuple[str, ...]:
        """The configured mailboxes after the first (the first is the one the published status speaks for)."""
        return self._mailbox_ids()[1:]

    def publish_mailboxes(self) -> None:
        """Each mailbox held here publishes its own status (``mailboxes[]`` of /api/status): its lease, its poller."""
        instance = None
        for unit in self.mailbox_units():
            if not unit.holds():
                continue
            instance = instance or self.instance().as_dict()
            self.store.publish_mailbox_status(
                unit.mailbox.id, {"lease": unit.lease.snapshot(), "poller": unit.poller.status.snapshot(),
                                  "instance": instance}, ttl_seconds=self.timings.publish_ttl)

    def log_heartbeat(self) -> None:
        """The heartbeat chore: one log line with the counters that changed since the last one."""
        counters = self.store.counters()
        changed = {name: value for name, value in counters.items()
                   if self._last_counters is None or self._last_counters.get(name) != value}
        self._last_counters = counters
        changes = " ".join(f"{name}={value}" for name, value in sorted(changed.items())) or "no changes"
        logger.info("BG_POLLER: heartbeat pid=%s %s", self.instance().pid, changes)

    def trim_retention(self) -> None:
        """The retention chore: drop what is older than STATE_RETENTION_DAYS from the store."""
        self.store.trim(time.time())

    def survey_stranded(self) -> None:
        """The stranded-work chore: report what removed mailboxes and targets left (logged when it changes) and
        dead-letter the pending items of removed targets (``background.stranded``)."""
        assert self.config is not None  # the chore exists only with a config
        found = survey(self.store, self.config)
        if settle_removed_targets(self.store, self.config, found):
            found = survey(self.store, self.config)
        if found and (self.stranded is None or found.as_dict() != self.stranded.as_dict()):
            logger.warning("STATE: work of removed mailboxes or targets: %s", found.summary())
        self.stranded = found


