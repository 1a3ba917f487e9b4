"""A target's circuit breaker pauses its deliveries, and one delivery thread serves every mailbox in turn (issue 17).

``DeliveryWorker`` against a real SQLite state store. The breaker: consecutive retried failures of the receiver open
the target's circuit; while open nothing of the target is claimed (no attempt counted, the items stay pending);
after the cool-down one trial attempt decides. The lanes: a thread of a target claims one item of one mailbox at a
time, the mailboxes in turn, so a deep backlog in one never starves another, and a lease lost for one mailbox stops
only that mailbox's deliveries.
"""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path
from typing import Iterator

import pytest

from background.delivery import BREAKER_COOLDOWN_SECONDS, BREAKER_FAILURES, DeliveryWorker, Lane, target_breaker
from background.lease import OwnershipGuard
from services.state_store import OutboxItem
from services.state_store_sqlite import SqliteStateStore
from services.webhook import AttemptOutcome
from tests.unit.test_delivery_attempt_failures import NOW, Clock, HeldLease, LostLease, RecordingSender, target

DELIVERED = AttemptOutcome("delivered", 200, None, None, 1, None)
UNAVAILABLE = AttemptOutcome("retry", 503, None, "busy", 1, "http_503")
REFUSED = AttemptOutcome("permanent", 422, None, "bad", 1, None)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStateStore]:
    store = SqliteStateStore(str(tmp_path / "state.sqlite3"), retention_seconds=3600)
    yield store
    store.close()


def queue(store: SqliteStateStore, n: int, mailbox_id: str = "default", at: float = NOW) -> list[str]:
    ids = []
    for index in range(n):
        event_id = f"msg_{mailbox_id}_{index:04d}"
        payload = {"event_id": event_id, "subject": f"s{index}", "sender_email": "jane@example.com",
                   "delivery_links": []}
        assert store.enqueue(OutboxItem(event_id=event_id, email_id=event_id[4:], payload=payload, mailbox="INBOX",
                                        uidvalidity=7, uid=index + 1, message_id=None, created_at=at + index / 1000,
                                        next_attempt_at=at + index / 1000, mailbox_id=mailbox_id,
                                        target_id="default"))
        ids.append(event_id)
    return ids


class Monotonic(Clock):
    """The breaker's monotonic clock, moved by the test."""


def breaker_worker(store, sender, clock: Clock, monotonic: Monotonic) -> DeliveryWorker:
    lease = HeldLease()
    return DeliveryWorker(target(), store, lease, OwnershipGuard(lease),  # type: ignore[arg-type]
                          lambda: sender, wakeup=threading.Event(), flag_wakeup=threading.Event(),
                          rng=random.Random(1), clock=clock, mailbox_id="default",
                          breaker=target_breaker("default", clock=monotonic))


def test_consecutive_failures_open_the_targets_circuit_and_nothing_more_is_attempted_while_open(store):
    # Given more due items than the breaker's threshold, and a receiver answering 503
    ids = queue(store, BREAKER_FAILURES + 3)
    sender = RecordingSender(UNAVAILABLE)
    delivery = breaker_worker(store, sender, Clock(NOW + 1), Monotonic(100.0))
    # When the delivery loop runs
    delivery.run_once()
    # Then exactly the threshold's number of attempts were made, the circuit is open, and the rest are untouched
    assert len(sender.bodies) == BREAKER_FAILURES
    assert delivery.breaker is not None and delivery.breaker.state == "open"
    untouched = [store.get_item(event_id) for event_id in ids[BREAKER_FAILURES:]]
    assert [(item.status, item.attempts, item.in_flight) for item in untouched] == [("pending", 0, False)] * 3
    # and running again while open attempts nothing
    assert delivery.run_once() is False and len(sender.bodies) == BREAKER_FAILURES


def test_after_the_cooldown_one_trial_decides_and_a_success_closes_the_circuit_and_delivers_the_rest(store):
    ids = queue(store, BREAKER_FAILURES + 3)
    sender = RecordingSender(UNAVAILABLE)
    monotonic = Monotonic(100.0)
    delivery = breaker_worker(store, sender, Clock(NOW + 1), monotonic)
    delivery.run_once()
    # When the receiver is back and the cool-down has passed
    sender.outcome = DELIVERED
    monotonic.now += BREAKER_COOLDOWN_SECONDS + 1
    delivery.run_once()
    # Then the trial succeeded, the circuit closed, and every item not yet retried was delivered
    assert delivery.breaker is not None and delivery.breaker.state == "closed"
    assert all(store.get_item(event_id).status == "delivered" for event_id in ids[BREAKER_FAILURES:])


def test_a_failed_trial_opens_the_circuit_again_after_one_attempt(store):
    queue(store, BREAKER_FAILURES + 3)
    sender = RecordingSender(UNAVAILABLE)
    monotonic = Monotonic(100.0)
    delivery = breaker_worker(store, sender, Clock(NOW + 1), monotonic)
    delivery.run_once()
    monotonic.now += BREAKER_COOLDOWN_SECONDS + 1
    delivery.run_once()
    assert len(sender.bodies) == BREAKER_FAILURES + 1
    assert delivery.breaker is not None and delivery.breaker.state == "open"


def test_a_receiver_that_refuses_with_a_4xx_is_reachable_and_never_opens_the_circuit(store):
    queue(store, BREAKER_FAILURES + 3)
    sender = RecordingSender(REFUSED)
    delivery = breaker_worker(store, sender, Clock(NOW + 1), Monotonic(100.0))
    delivery.run_once()
    assert len(sender.bodies) == BREAKER_FAILURES + 3
    assert delivery.breaker is not None and delivery.breaker.state == "closed"


def test_a_trial_with_nothing_to_attempt_is_given_back_so_the_circuit_is_never_stuck_half_open(store):
    # Given an open circuit whose failed items are all waiting for their next retry (nothing is due)
    queue(store, BREAKER_FAILURES)
    sender = RecordingSender(UNAVAILABLE)
    monotonic = Monotonic(100.0)
    clock = Clock(NOW + 1)
    delivery = breaker_worker(store, sender, clock, monotonic)
    delivery.run_once()
    monotonic.now += BREAKER_COOLDOWN_SECONDS + 1
    # When the trial is granted but nothing is due, then an item becomes due
    assert delivery.run_once() is False
    sender.outcome = DELIVERED
    new = OutboxItem(event_id="msg_new", email_id="new", payload={"event_id": "msg_new", "subject": "n",
                                                                  "sender_email": "j@example.com",
                                                                  "delivery_links": []},
                     mailbox="INBOX", uidvalidity=7, uid=99, message_id=None, created_at=NOW + 2,
                     next_attempt_at=NOW + 2, mailbox_id="default", target_id="default")
    assert store.enqueue(new)
    clock.now = NOW + 3
    delivery.run_once()
    # Then the trial is attempted (the circuit was not left waiting for a trial nobody makes) and closes it
    assert store.get_item("msg_new").status == "delivered"
    assert delivery.breaker is not None and delivery.breaker.state == "closed"


def lanes_worker(store, sender, leases: dict[str, HeldLease]) -> DeliveryWorker:
    lanes = [Lane(mailbox_id, store, lease, OwnershipGuard(lease),  # type: ignore[arg-type]
                  threading.Event()) for mailbox_id, lease in leases.items()]
    first = lanes[0]
    return DeliveryWorker(target(), store, first.lease, first.guard, lambda: sender, wakeup=threading.Event(),
                          flag_wakeup=first.flag_wakeup, rng=random.Random(1), clock=Clock(NOW + 1), lanes=lanes)


class Actable(HeldLease):
    def backoff_remaining(self) -> float:
        return 0.0

    def report_outage(self) -> None:
        return None


class LostActable(LostLease, Actable):
    pass


def test_one_thread_serves_the_mailboxes_in_turn_so_a_deep_backlog_never_starves_another(store):
    # Given mailbox "a" with 20 due items and mailbox "b" with 2, both held here, and one delivery thread
    queue(store, 20, mailbox_id="a")
    small = queue(store, 2, mailbox_id="b")
    sender = RecordingSender(DELIVERED)
    delivery = lanes_worker(store, sender, {"a": Actable(), "b": Actable()})
    delivery.run_once()
    # Then every item was delivered, and b's two went out among the first four attempts
    order = [json.loads(body)["event_id"] for body in sender.bodies]
    assert len(order) == 22
    assert {order.index(event_id) for event_id in small} <= {0, 1, 2, 3}


def test_a_lease_lost_for_one_mailbox_stops_only_that_mailboxs_deliveries(store):
    lost = queue(store, 2, mailbox_id="a")
    kept = queue(store, 3, mailbox_id="b")
    sender = RecordingSender(DELIVERED)
    delivery = lanes_worker(store, sender, {"a": LostActable(), "b": Actable()})
    delivery.run_once()
    assert all(store.get_item(event_id).status == "delivered" for event_id in kept)
    assert [(store.get_item(e).status, store.get_item(e).attempts) for e in lost] == [("pending", 0)] * 2
