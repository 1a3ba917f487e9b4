"""The status observer of one worker: publishes the status documents of the mailboxes held here to the shared store
(so any worker of any container answers the same), runs the holder's chores (heartbeat, retention trim, the survey
of stranded work) and caches the cluster view that ``/health`` reads without network I/O (rules:
``background.health``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from background.expiring import EXPIRING_SCANNED, links_expiring
from background.health import HealthTimings, ObservedReads, observed_view
from background.housekeeping import Chore, Housekeeping
from background.lease import Lease, LeaseState
from background.runner import ImapState, InstanceInfo, PollerState, PollerStatus
from background.stranded import Stranded, settle_removed_targets, survey
from config import ServiceConfig
from services.state_store import OutboxStatus, StateStore, StateStoreError

if TYPE_CHECKING:
    from background.services import MailboxUnit

logger = logging.getLogger(__name__)

OBSERVE_INTERVAL_SECONDS = 1.0
TRIM_INTERVAL_SECONDS = 3600
STRANDED_INTERVAL_SECONDS = 300  # the survey of work left by removed mailboxes and targets


class StatusObserver:
    """Publishes the holder's status and keeps the cluster view fresh for /health (read without I/O); the view's
    rules are ``background.health``'s. ``instance`` gives this process's identity when it is published (the
    runtime re-reads the pid after Gunicorn forked); ``clock`` is the housekeeping schedule's monotonic clock;
    ``extra_chores``: more holder-only chores on the same schedule (the operational alerts' evaluator)."""

    def __init__(self, *, lease: Lease, store: StateStore, poller_status: PollerStatus,
                 instance: Callable[[], InstanceInfo], timings: HealthTimings, heartbeat_interval_seconds: float,
                 config: ServiceConfig | None = None, clock: Callable[[], float] = time.monotonic,
                 extra_chores: Sequence[Chore] = ()) -> None:
        self.lease = lease
        self.store = store
        self.poller_status = poller_status
        self.instance = instance
        # Each configured mailbox is stalled by its own limit (its poll interval and IMAP timeout).
        self.timings = timings.for_mailboxes(config.mailboxes) if config is not None else timings
        self.started = time.time()
        self.last_read_ok = time.time()
        self.view: dict[str, Any] = {"poller": PollerState.STANDBY, "lease": LeaseState.STANDBY,
                                     "imap": ImapState.NOT_APPLICABLE, "outbox": "n/a", "cluster": "ok",
                                     "published": None, "outbox_stats": None, "stale": False}
        self._last_counters: dict | None = None
        self.config = config
        # The mailboxes of this worker (set by BackgroundServices): each one held here publishes its own status.
        self.mailbox_units: Callable[[], list[MailboxUnit]] = list
        # This process's circuit breaker per target (set by BackgroundServices), published with every status.
        self.circuits: Callable[[], dict[str, str]] = dict
        self.stranded: Stranded | None = None  # what removed mailboxes and targets left (the last survey)
        # Holder-only chores, run from observe_once: trimming and the stranded-work survey at once and then on their
        # intervals, the heartbeat every interval.
        chores = [Chore("heartbeat", heartbeat_interval_seconds, self.log_heartbeat),
                  Chore("trim", TRIM_INTERVAL_SECONDS, self.trim_retention, run_at_start=True)]
        if config is not None:
            chores.append(Chore("stranded", STRANDED_INTERVAL_SECONDS, self.survey_stranded, run_at_start=True))
        chores.extend(extra_chores)
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
                    "instance": self.instance().as_dict(), "circuits": self.circuits()}
        if self.stranded is not None:
            document["stranded"] = self.stranded.as_dict()
        return document

    def observe_once(self) -> None:
        lease = self.lease
        snapshot = lease.snapshot()
        held = snapshot.get("state") == LeaseState.HELD and lease.holds_locally()
        read_ok = True
        try:
            if held:
                self.store.publish_status(self.status_document(), ttl_seconds=self.timings.publish_ttl)
                self.housekeeping.run_due()
            self.publish_mailboxes()
            reads = self._read_cluster()
            self.last_read_ok = time.time()
        except StateStoreError as exc:
            read_ok = False
            logger.debug("BG_POLLER: status store unreadable: %s", exc)
            # Keep answering from what was last read; the health rules decide when that is stale.
            reads = ObservedReads(published=self.view.get("published"), stats=self.view.get("outbox_stats"),
                                  mailbox_statuses=self.view.get("mailbox_statuses") or {},
                                  target_stats=self.view.get("target_stats"),
                                  paused=self.view.get("paused_targets"))
        self.view = observed_view(
            lease_state=snapshot.get("state") or LeaseState.STANDBY, held=held,
            own_poller=self.poller_status.snapshot(), published=reads.published, stats=reads.stats,
            read_ok=read_ok, now=time.time(), last_read_ok=self.last_read_ok, started=self.started,
            timings=self.timings, first_mailbox=self._first_mailbox_id(),
            other_mailboxes=self._other_mailbox_ids(), mailbox_statuses=reads.mailbox_statuses,
            target_stats=reads.target_stats, targets=self._target_ids(), paused_targets=reads.paused)

    def _read_cluster(self) -> ObservedReads:
        """One read of what the health rules need: the published statuses, the outbox and each target's figures."""
        now = time.time()
        others = self._other_mailbox_ids()
        stats = self.store.outbox_stats(now)
        stats["links_expiring"] = links_expiring(self.store.list_items(OutboxStatus.PENDING, EXPIRING_SCANNED),
                                                 self._retry_hours)
        return ObservedReads(published=self.store.read_status(), stats=stats,
                             mailbox_statuses=self.store.read_mailbox_statuses(others) if others else {},
                             target_stats=self.store.target_stats(now), paused=self.store.paused_targets())

    def _retry_hours(self, target_id: str) -> float | None:
        if self.config is None:
            return None
        for target in self.config.targets:
            if target.id == target_id:
                return target.retry.hours
        return None

    def _target_ids(self) -> tuple[str, ...]:
        return tuple(target.id for target in self.config.targets) if self.config is not None else ()

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
                                  "instance": instance, "circuits": self.circuits()},
                ttl_seconds=self.timings.publish_ttl)

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


