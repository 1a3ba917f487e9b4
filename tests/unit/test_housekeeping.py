"""The housekeeping schedule: named chores with their own intervals, run when due, each isolated from the others."""

from __future__ import annotations

import logging
import time

import pytest

from background.health import HealthTimings
from background.housekeeping import Chore, Housekeeping
from background.observer import StatusObserver
from background.runner import InstanceInfo, PollerStatus
from services.state_store import StateStoreError


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def recorder(calls: list[str], name: str):
    return lambda: calls.append(name)


def test_a_chore_is_first_due_one_interval_after_the_schedule_starts():
    # Given a heartbeat every 300 s on a schedule started at t=1000
    clock, calls = FakeClock(1000.0), []
    schedule = Housekeeping([Chore("heartbeat", 300, recorder(calls, "heartbeat"))], clock=clock)
    # Then it is not due before t=1300, and due from then on
    assert schedule.due(1299.9) == []
    assert [chore.name for chore in schedule.due(1300.0)] == ["heartbeat"]
    assert schedule.run_due(1299.9) == [] and calls == []
    assert schedule.run_due(1300.0) == ["heartbeat"] and calls == ["heartbeat"]


def test_a_chore_run_at_start_is_due_at_once_and_then_every_interval():
    clock, calls = FakeClock(0.0), []
    schedule = Housekeeping([Chore("trim", 3600, recorder(calls, "trim"), run_at_start=True)], clock=clock)
    assert schedule.run_due() == ["trim"]
    assert schedule.run_due(3599.0) == []
    assert schedule.run_due(3600.0) == ["trim"]
    assert calls == ["trim", "trim"]


def test_each_chore_keeps_its_own_interval():
    # Given the observer's two chores: a heartbeat every 300 s and trimming at once, then hourly
    clock, calls = FakeClock(0.0), []
    schedule = Housekeeping([Chore("heartbeat", 300, recorder(calls, "heartbeat")),
                             Chore("trim", 3600, recorder(calls, "trim"), run_at_start=True)], clock=clock)
    # When the observer runs the schedule every second for two hours
    for second in range(0, 7201):
        schedule.run_due(float(second))
    # Then the heartbeat ran 24 times and trimming three times (t=0, 3600, 7200), in the order they were given
    assert calls.count("heartbeat") == 24 and calls.count("trim") == 3
    assert calls[-2:] == ["heartbeat", "trim"]


def test_due_only_tells_and_runs_nothing():
    clock, calls = FakeClock(0.0), []
    schedule = Housekeeping([Chore("trim", 60, recorder(calls, "trim"), run_at_start=True)], clock=clock)
    assert [chore.name for chore in schedule.due(0.0)] == ["trim"]
    assert [chore.name for chore in schedule.due(0.0)] == ["trim"]
    assert calls == []


def test_the_next_run_is_one_interval_after_a_late_run():
    # Given a chore due at t=60 that runs late, at t=95 (the observer was busy)
    clock, calls = FakeClock(0.0), []
    schedule = Housekeeping([Chore("heartbeat", 60, recorder(calls, "heartbeat"))], clock=clock)
    schedule.run_due(95.0)
    # Then the next run is one interval after the late one, not a catch-up burst
    assert schedule.next_run("heartbeat") == 155.0
    assert schedule.run_due(120.0) == [] and schedule.run_due(155.0) == ["heartbeat"]
    assert calls == ["heartbeat", "heartbeat"]


def test_a_chore_that_raises_is_logged_and_the_others_still_run(caplog):
    caplog.set_level(logging.WARNING, logger="background.housekeeping")
    calls: list[str] = []

    def broken() -> None:
        raise RuntimeError("bug in a chore")

    # Given a broken chore listed before a working one, both due at once
    schedule = Housekeeping([Chore("broken", 10, broken, run_at_start=True),
                             Chore("trim", 10, recorder(calls, "trim"), run_at_start=True)], clock=FakeClock(0.0))
    # When the schedule runs
    ran = schedule.run_due()
    # Then both ran, the failure was logged with its traceback, and the broken one waits for its next interval
    assert ran == ["broken", "trim"] and calls == ["trim"]
    [record] = [r for r in caplog.records if "broken" in r.getMessage()]
    assert record.getMessage() == "BG_POLLER: housekeeping chore broken failed" and record.exc_info is not None
    assert schedule.run_due(5.0) == [] and schedule.next_run("broken") == 10.0


class StoreDown(Exception):
    pass


def test_an_expected_error_is_logged_in_one_line_without_a_traceback(caplog):
    caplog.set_level(logging.WARNING, logger="background.housekeeping")

    def unreachable() -> None:
        raise StoreDown("redis trim: TimeoutError")

    schedule = Housekeeping([Chore("trim", 10, unreachable, run_at_start=True)], clock=FakeClock(0.0),
                            expected_errors=(StoreDown,))
    assert schedule.run_due() == ["trim"]
    [record] = caplog.records
    assert record.getMessage() == "BG_POLLER: housekeeping chore trim failed (redis trim: TimeoutError)"
    assert record.exc_info is None


@pytest.mark.parametrize("chores", [
    [Chore("trim", 10, lambda: None), Chore("trim", 20, lambda: None)],
    [Chore("heartbeat", 0, lambda: None)],
    [Chore("heartbeat", -1, lambda: None)],
], ids=["duplicate-name", "zero-interval", "negative-interval"])
def test_a_schedule_refuses_duplicate_names_and_intervals_that_are_not_positive(chores):
    with pytest.raises(ValueError):
        Housekeeping(chores, clock=FakeClock())


# --- the status observer runs the holder's chores from one schedule ---------------------------------------------------

class FakeLease:
    def __init__(self, held: bool) -> None:
        self.held = held

    def snapshot(self) -> dict:
        return {"backend": "file", "state": "held" if self.held else "standby"}

    def holds_locally(self) -> bool:
        return self.held


class FakeStore:
    def __init__(self) -> None:
        self.trims: list[float] = []
        self.published: dict | None = None
        self.counter_values: dict = {}
        self.counters_fail = False
        self.targets: dict[str, dict] = {}
        self.target_reads = 0
        self.paused: dict[str, float] = {}

    def publish_status(self, doc: dict, ttl_seconds: float) -> None:
        self.published = doc

    def read_status(self) -> dict | None:
        return self.published

    def outbox_stats(self, now: float) -> dict:
        return {"pending": 0, "oldest_pending_age_s": None, "dead": 0, "dead_recent": []}

    def list_items(self, status: str, limit: int = 100) -> list:
        return []

    def target_stats(self, now: float) -> dict[str, dict]:
        self.target_reads += 1
        return {target_id: dict(stats) for target_id, stats in self.targets.items()}

    def paused_targets(self) -> dict[str, float]:
        return dict(self.paused)

    def counters(self) -> dict:
        if self.counters_fail:
            raise StateStoreError("sqlite counters: database is locked")
        return dict(self.counter_values)

    def trim(self, now: float) -> None:
        self.trims.append(now)


def make_observer(store: FakeStore, *, held: bool = True, clock: FakeClock | None = None) -> StatusObserver:
    instance = InstanceInfo("host-a", 12, time.time(), "v1")
    return StatusObserver(lease=FakeLease(held), store=store, poller_status=PollerStatus(mailbox="INBOX"),
                          instance=lambda: instance,
                          timings=HealthTimings(publish_ttl=30.0, stale_after=3.0, stall_after=100.0),
                          heartbeat_interval_seconds=300.0, clock=clock or FakeClock(0.0))


def heartbeats(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("BG_POLLER: heartbeat")]


def test_the_holders_observer_trims_at_once_and_logs_the_heartbeat_every_interval(caplog):
    caplog.set_level(logging.INFO, logger="background.observer")
    # Given the lease holder's observer on a schedule started at t=0
    clock, store = FakeClock(0.0), FakeStore()
    observer = make_observer(store, clock=clock)
    # When it observes at t=0, then at each heartbeat interval
    observer.observe_once()
    assert len(store.trims) == 1 and heartbeats(caplog) == []
    store.counter_values = {"emails_seen": 3, "dead_letters": 0}
    clock.now = 300.0
    observer.observe_once()
    clock.now = 600.0
    observer.observe_once()
    # Then the heartbeat line names what changed, then says there were no changes; trimming waits for its hour
    assert heartbeats(caplog) == ["BG_POLLER: heartbeat pid=12 dead_letters=0 emails_seen=3",
                                  "BG_POLLER: heartbeat pid=12 no changes"]
    assert len(store.trims) == 1
    clock.now = 3600.0
    observer.observe_once()
    assert len(store.trims) == 2


def test_a_failing_heartbeat_neither_stops_trimming_nor_makes_the_cluster_view_stale(caplog):
    caplog.set_level(logging.WARNING, logger="background.housekeeping")
    # Given a store whose counters cannot be read, at a time both chores are due
    clock, store = FakeClock(0.0), FakeStore()
    observer = make_observer(store, clock=clock)
    observer.observe_once()
    store.counters_fail = True
    clock.now = 3600.0
    # When the observer runs
    observer.observe_once()
    # Then trimming still ran, the failure is one warning, and the status was published and read back
    assert len(store.trims) == 2
    assert [r.getMessage() for r in caplog.records] == [
        "BG_POLLER: housekeeping chore heartbeat failed (sqlite counters: database is locked)"]
    assert observer.view["stale"] is False and observer.view["published"] == store.published
    assert store.published is not None and store.published["instance"]["pid"] == 12


def test_a_standby_observer_runs_no_chore():
    clock, store = FakeClock(0.0), FakeStore()
    observer = make_observer(store, held=False, clock=clock)
    clock.now = 7200.0
    observer.observe_once()
    assert store.trims == [] and store.published is None
    assert observer.view["lease"] == "standby" and observer.view["poller"] == "standby"
