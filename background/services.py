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

from background.delivery import DeliveryWorker, Lane, target_breaker
from background.enrichment import Enricher
from background.fencing import FencedStore, LeaseFence
from background.lease import Lease, LeaseKeeper, OwnershipGuard
from background.observer import StatusObserver
from background.poller import MailboxPoller
from background.runner import PollerStatus
from config import MailboxConfig, RouteConfig, TargetConfig
from services.state_store import StateStore

logger = logging.getLogger(__name__)



@dataclass
class MailboxUnit:
    """One mailbox's share of a worker: its lease and keeper, its ownership guard, its poller, its lane in the
    targets' delivery threads, its wake-up events. Only while the lease is held here do they act."""

    mailbox: MailboxConfig
    lease: Lease
    keeper: LeaseKeeper
    guard: OwnershipGuard
    poller: MailboxPoller
    lane: Lane
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
                 rate_limiters: Mapping[str, Any] | None = None,
                 sign_in_factory: Callable[[MailboxConfig], Any] = lambda mailbox: None,
                 ops_target: TargetConfig | None = None) -> None:
        """``targets``: each gets its own delivery threads (``concurrency`` of them in this process), shared by
        the mailboxes held here (each claim is one mailbox's item, under its lease, the mailboxes in turn) and
        claiming only that target's items, so a dead or slow target never delays the others; each target has one
        circuit breaker per process; ``sender_factory(target)`` builds one sender per thread. ``routes``: which
        targets each email goes to (empty: all of them). ``enrich_budget_seconds``: R2 is on and each email's
        copies are made by the enricher thread within that budget (``background.enrichment``); None: R2 is off.
        ``ops_target``: the reserved alert target (``background.alerts``), delivered like the others but never
        given to the pollers, so no email is routed to it."""
        if not mailboxes:
            raise ValueError("BackgroundServices needs at least one mailbox")
        self.store = store
        self.membership = membership  # background.membership.Membership with Redis: left on stop
        self.enrich_wakeup = threading.Event() if enrich_budget_seconds is not None else None
        self.delivery_wakeup = threading.Event()  # set when items may be due: an enqueue, an acquired lease
        self.units: list[MailboxUnit] = []
        for entry in mailboxes:
            self.units.append(self._unit(entry, store, targets, routes, offloader_factory,
                                         sign_in_factory(entry.mailbox)))
        first = self.units[0]
        self.lease, self.keeper, self.guard, self.poller = first.lease, first.keeper, first.guard, first.poller
        self.flag_wakeup = first.flag_wakeup
        delivered = (*targets, ops_target) if ops_target is not None else tuple(targets)
        self.breakers = {target.id: target_breaker(target.id) for target in delivered}
        lanes = tuple(unit.lane for unit in self.units)
        self.deliveries = [
            DeliveryWorker(target, first.lane.store, first.lease, first.guard, partial(sender_factory, target),
                           wakeup=self.delivery_wakeup, flag_wakeup=first.flag_wakeup, lanes=lanes,
                           rate_limiter=(rate_limiters or {}).get(target.id), breaker=self.breakers[target.id])
            for target in delivered for _ in range(target.concurrency)]
        self.enricher: Enricher | None = None
        self._any_held = _AnyHeld(self.units)
        if self.enrich_wakeup is not None and enrich_budget_seconds is not None:
            by_id = {unit.mailbox.id: unit for unit in self.units}
            self.enricher = Enricher(store, offloader_factory, budget_seconds=enrich_budget_seconds,
                                     holds=lambda mailbox_id: mailbox_id in by_id and by_id[mailbox_id].holds(),
                                     wakeup=self.enrich_wakeup, delivery_wakeup=self.delivery_wakeup)
        self.observer = observer
        observer.mailbox_units = lambda: self.units
        observer.circuits = self.circuits
        self._stop_workers = threading.Event()
        self._stop_keeper = threading.Event()
        self._stopping = False
        self.threads: list[threading.Thread] = []
        self._keeper_threads: list[threading.Thread] = []

    def _unit(self, entry: MailboxLease, store: StateStore, targets: Sequence[TargetConfig],
              routes: Sequence[RouteConfig], offloader_factory: Callable[[], Any], sign_in: Any) -> MailboxUnit:
        """One mailbox's share: its fence (each acquisition takes a new epoch, then wakes the delivery threads),
        its fenced store, its poller and its lane (the first mailbox's holder also delivers what removed mailboxes
        left: their items are still sent)."""
        guard = OwnershipGuard(entry.lease)
        fence = LeaseFence(store, entry.mailbox.id)
        wakeup = self.delivery_wakeup

        def acquired() -> None:
            fence.advance()
            wakeup.set()

        entry.keeper.on_acquired = acquired
        fenced = FencedStore(store, fence, entry.lease)
        flag_wakeup = threading.Event()
        poller = MailboxPoller(entry.mailbox, fenced, entry.lease, guard, entry.poller_status,
                               target_ids=tuple(target.id for target in targets), routes=tuple(routes),
                               offloader_factory=offloader_factory, delivery_wakeup=wakeup, flag_wakeup=flag_wakeup,
                               enrich_wakeup=self.enrich_wakeup, sign_in=sign_in)
        adopted = self._removed_mailboxes if not self.units else tuple
        lane = Lane(entry.mailbox.id, fenced, entry.lease, guard, flag_wakeup, adopted)
        return MailboxUnit(entry.mailbox, entry.lease, entry.keeper, guard, poller, lane, wakeup, flag_wakeup)

    def circuits(self) -> dict[str, str]:
        """Each target's circuit in this process: closed | open | half_open (published with the status)."""
        return {target_id: breaker.state.value for target_id, breaker in self.breakers.items()}

    def start(self) -> None:
        specs: list[tuple[str, Callable[..., None], tuple]] = []
        for unit in self.units:
            suffix = "" if unit.mailbox.id == self.units[0].mailbox.id else f"-{unit.mailbox.id}"
            held = unit.keeper.held_event
            specs.append((f"poller{suffix}", unit.poller.run, (self._stop_workers, held)))
        specs.extend((f"delivery-{worker.target.id}-{n}", worker.run, (self._stop_workers,))
                     for n, worker in enumerate(self.deliveries, start=1))
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
        self.delivery_wakeup.set()
        for unit in self.units:
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
