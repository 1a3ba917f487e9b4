"""The status observer's reads and publications: each mailbox's own stall limit, each target's figures read once
per observation, and this process's circuits in every status it publishes."""

from __future__ import annotations

import time

from background.health import HealthTimings
from background.observer import StatusObserver
from background.runner import InstanceInfo, PollerStatus
from config import MailboxConfig, PasswordCredentials, ServiceConfig, TargetConfig
from services.state_store import StateStoreError
from tests.unit.test_housekeeping import FakeLease

TIMINGS = HealthTimings(publish_ttl=30.0, stale_after=3.0, stall_after=100.0)


class FakeStore:
    """The store calls the observer makes, recorded; ``down`` makes every read fail like an unreachable store."""

    def __init__(self) -> None:
        self.published: dict | None = None
        self.mailbox_published: dict[str, dict] = {}
        self.targets: dict[str, dict] = {}
        self.target_reads = 0
        self.paused: dict[str, float] = {}
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise StateStoreError("redis: connection refused")

    def publish_status(self, doc: dict, ttl_seconds: float) -> None:
        self._check()
        self.published = doc

    def publish_mailbox_status(self, mailbox_id: str, doc: dict, ttl_seconds: float) -> None:
        self._check()
        self.mailbox_published[mailbox_id] = doc

    def read_status(self) -> dict | None:
        self._check()
        return self.published

    def read_mailbox_statuses(self, ids) -> dict[str, dict]:
        self._check()
        return {mailbox_id: doc for mailbox_id, doc in self.mailbox_published.items() if mailbox_id in ids}

    def outbox_stats(self, now: float) -> dict:
        self._check()
        return {"pending": 0, "oldest_pending_age_s": None, "dead": 0, "dead_recent": []}

    def list_items(self, status: str, limit: int = 100) -> list:
        self._check()
        return []

    def target_stats(self, now: float) -> dict[str, dict]:
        self._check()
        self.target_reads += 1
        return {target_id: dict(stats) for target_id, stats in self.targets.items()}

    def paused_targets(self) -> dict[str, float]:
        self._check()
        return dict(self.paused)

    def counters(self) -> dict:
        return {}

    def trim(self, now: float) -> None:
        pass


class FakeUnit:
    """A mailbox unit of BackgroundServices as the observer sees it: its mailbox, lease and poller."""

    def __init__(self, mailbox: MailboxConfig) -> None:
        self.mailbox = mailbox
        self.lease = FakeLease(True)
        self.poller = type("Poller", (), {"status": PollerStatus(mailbox=mailbox.folder)})()

    def holds(self) -> bool:
        return True


def mailbox(mailbox_id: str, *, poll: float = 30.0, timeout: float = 30.0) -> MailboxConfig:
    return MailboxConfig(id=mailbox_id, server="imap.test", user="u", credentials=PasswordCredentials("p"),
                         poll_interval_seconds=poll, timeout_seconds=timeout)


def make_observer(store: FakeStore, *, held: bool = False, config: ServiceConfig | None = None) -> StatusObserver:
    instance = InstanceInfo("host-a", 12, time.time(), "v1")
    return StatusObserver(lease=FakeLease(held), store=store, poller_status=PollerStatus(mailbox="INBOX"),
                          instance=lambda: instance, timings=TIMINGS, heartbeat_interval_seconds=300.0,
                          config=config)


def overdue(seconds: float) -> dict:
    return {"pending": 1, "held": 0, "dead": 0, "oldest_pending_age_s": seconds,
            "oldest_due_at": time.time() - seconds, "oldest_due_delay": 0.0}


def test_the_observer_stalls_each_configured_mailbox_by_its_own_poll_interval_and_timeout():
    config = ServiceConfig(mailboxes=(mailbox("fast", poll=10, timeout=5), mailbox("slow", poll=300, timeout=30)))
    observer = make_observer(FakeStore(), config=config)
    assert observer.timings.stall_after_for("fast") == 40.0
    assert observer.timings.stall_after_for("slow") == 960.0
    # without a configuration (no mailbox known) the global limit holds
    assert make_observer(FakeStore()).timings == TIMINGS


def test_each_observation_reads_the_target_stats_once_and_names_a_stalled_target():
    # Given two configured targets, the second with a due item 120 s overdue
    store = FakeStore()
    store.targets = {"make": {"pending": 0, "held": 3, "dead": 0, "oldest_pending_age_s": None,
                              "oldest_due_at": None, "oldest_due_delay": None},
                     "archive": overdue(120)}
    config = ServiceConfig(mailboxes=(mailbox("default"),),
                           targets=(TargetConfig(id="make", url="https://make.test/h"),
                                    TargetConfig(id="archive", url="https://archive.test/h")))
    observer = make_observer(store, config=config)
    # When the observer observes once
    observer.observe_once()
    # Then it read the per-target figures once, and the view names the stalled target only (make's are held)
    assert store.target_reads == 1
    assert [(p["kind"], p["id"], p["state"]) for p in observer.view["stalls"]] == [("target", "archive", "stalled")]
    assert observer.view["target_stats"]["archive"]["pending"] == 1


def test_a_failed_read_keeps_the_last_target_stats_until_the_view_turns_stale():
    store = FakeStore()
    store.targets = {"archive": overdue(120)}
    observer = make_observer(store)
    observer.observe_once()
    # When the store stops answering, moments later
    store.down = True
    observer.observe_once()
    # Then the view still carries (and judges) what was last read
    assert observer.view["stale"] is True and observer.view["cluster"] == "ok"
    assert [(p["id"], p["state"]) for p in observer.view["stalls"]] == [("archive", "stalled")]


def test_the_circuits_default_to_none_and_are_published_in_every_status_document():
    # Given the observer of a process holding the first mailbox and a second one
    store = FakeStore()
    config = ServiceConfig(mailboxes=(mailbox("default"), mailbox("studio")))
    observer = make_observer(store, held=True, config=config)
    assert observer.circuits() == {} and observer.status_document()["circuits"] == {}
    # When BackgroundServices gives it this process's breakers
    observer.circuits = lambda: {"make": "open", "archive": "closed"}
    observer.mailbox_units = lambda: [FakeUnit(mailbox) for mailbox in config.mailboxes]
    observer.housekeeping.run_due = lambda now=None: []   # (the holder's chores are not under test here)
    observer.observe_once()
    # Then the holder's status and each mailbox's status carry them
    assert store.published is not None and store.published["circuits"] == {"make": "open", "archive": "closed"}
    assert {mailbox_id: doc["circuits"] for mailbox_id, doc in store.mailbox_published.items()} == {
        "default": {"make": "open", "archive": "closed"}, "studio": {"make": "open", "archive": "closed"}}
    # And the observer, reading them back, reports the open circuit
    assert [(p["kind"], p["id"], p["state"]) for p in observer.view["stalls"]] == [("target", "make", "circuit_open")]
