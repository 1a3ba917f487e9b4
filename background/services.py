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
from functools import partial
from typing import Any, Callable, Sequence

from background.delivery import DeliveryWorker
from background.enrichment import Enricher
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


class BackgroundServices:
    """The four threads of one worker. The poller and the delivery workers share one ownership guard on ``lease``
    and the wake-up events; ``offloader_factory`` and ``sender_factory`` build their adapters on first use (one
    sender per delivery thread)."""

    def __init__(self, *, mailbox: MailboxConfig, targets: Sequence[TargetConfig], store: StateStore,
                 lease: Lease, keeper: LeaseKeeper, observer: StatusObserver, poller_status: PollerStatus,
                 offloader_factory: Callable[[], Any], sender_factory: Callable[[TargetConfig], Any],
                 enrich_budget_seconds: float | None = None, routes: Sequence[RouteConfig] = ()) -> None:
        """``targets``: each gets its own delivery threads (``concurrency`` of them), claiming only its own items
        of ``mailbox``, so a dead or slow target never delays the others; ``sender_factory(target)`` builds one
        sender per thread. ``routes``: which targets each email goes to (empty: all of them). ``enrich_budget_
        seconds``: R2 is on and each email's copies are made by the enricher thread within that budget
        (``background.enrichment``); None: R2 is off, no enricher."""
        self.store = store
        self.lease = lease
        self.guard = OwnershipGuard(lease)
        self.keeper = keeper
        self.delivery_wakeup = threading.Event()
        self.flag_wakeup = threading.Event()
        self.enrich_wakeup = threading.Event() if enrich_budget_seconds is not None else None
        self.poller = MailboxPoller(mailbox, store, lease, self.guard, poller_status,
                                    target_ids=tuple(target.id for target in targets), routes=tuple(routes),
                                    offloader_factory=offloader_factory,
                                    delivery_wakeup=self.delivery_wakeup, flag_wakeup=self.flag_wakeup,
                                    enrich_wakeup=self.enrich_wakeup)
        self.enricher: Enricher | None = None
        if self.enrich_wakeup is not None and enrich_budget_seconds is not None:
            held = keeper.held_event
            self.enricher = Enricher(store, offloader_factory, budget_seconds=enrich_budget_seconds,
                                     holds=lambda mailbox_id: held.is_set() and mailbox_id == mailbox.id,
                                     wakeup=self.enrich_wakeup, delivery_wakeup=self.delivery_wakeup)
        self.deliveries = [
            DeliveryWorker(target, store, lease, self.guard, partial(sender_factory, target),
                           wakeup=self.delivery_wakeup, flag_wakeup=self.flag_wakeup, mailbox_id=mailbox.id,
                           adopted_mailboxes=self._removed_mailboxes)
            for target in targets for _ in range(target.concurrency)]
        self.observer = observer
        self._stop_workers = threading.Event()
        self._stop_keeper = threading.Event()
        self._stopping = False
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        held = self.keeper.held_event
        specs: list[tuple[str, Callable[..., None], tuple]] = [
            ("lease-keeper", self.keeper.run, (self._stop_keeper,)),
            ("poller", self.poller.run, (self._stop_workers, held)),
            *((f"delivery-{n}", worker.run, (self._stop_workers, held))
              for n, worker in enumerate(self.deliveries, start=1)),
            ("status-observer", self.observer.run, (self._stop_workers,)),
        ]
        if self.enricher is not None:
            specs.append(("enricher", self.enricher.run, (self._stop_workers, held)))
        for name, target, args in specs:
            thread = threading.Thread(target=target, args=args, name=f"render-signal-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)
        logger.info("BG_POLLER: background threads started (lease backend %s)", self.lease.backend)

    def stop(self, timeout: float) -> None:
        """Stop the workers first (no new IMAP command, no new attempt), then release the lease."""
        self._stopping = True
        deadline = time.monotonic() + timeout
        self._stop_workers.set()
        self.delivery_wakeup.set()
        self.flag_wakeup.set()
        if self.enrich_wakeup is not None:
            self.enrich_wakeup.set()
        for thread in self.threads[1:]:
            thread.join(max(0.0, deadline - time.monotonic() - 1.0))
        self._stop_keeper.set()
        self.threads[0].join(max(0.1, deadline - time.monotonic()))
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
        read_ok = True
        try:
            if held:
                self.store.publish_status(self.status_document(), ttl_seconds=self.timings.publish_ttl)
                self.housekeeping.run_due()
            published = self.store.read_status()
            stats = self.store.outbox_stats(time.time())
            self.last_read_ok = time.time()
        except StateStoreError as exc:
            read_ok = False
            logger.debug("BG_POLLER: status store unreadable: %s", exc)
        if not read_ok:  # keep answering from what was last read; the health rules decide when that is stale
            published, stats = self.view.get("published"), self.view.get("outbox_stats")
        self.view = observed_view(
            lease_state=snapshot.get("state") or LeaseState.STANDBY, held=held,
            own_poller=self.poller_status.snapshot(), published=published, stats=stats,
            read_ok=read_ok, now=time.time(), last_read_ok=self.last_read_ok, started=self.started,
            timings=self.timings)

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


