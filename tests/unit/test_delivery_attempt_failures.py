"""Every attempt ends in a recorded outcome, whatever fails (issue 15 §4), and the claim outlives the attempt (§5).

``DeliveryWorker.deliver`` against a real SQLite state store: a payload that cannot be serialised becomes a dead
letter ``encode_error`` at once; any other failure of the attempt that is not a network outcome is a retry that
counts toward the retry window. Neither escapes to the loop, where the claim would lapse and the item be
re-claimed (a false possible duplicate) for ever.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from background.delivery import CLAIM_MARGIN_SECONDS, DeliveryWorker
from background.lease import OwnershipGuard
from config import RetryPolicy, TargetConfig
from services.state_store import OutboxItem
from services.state_store_sqlite import SqliteStateStore
from services.webhook import AttemptOutcome

NOW = float(int(time.time()))  # a store hides finished items past their retention in real time
MAILBOX = "INBOX"


class HeldLease:
    """A lease this process holds for the whole test."""

    token = "owner-token"

    def holds_locally(self) -> bool:
        return True

    def verify(self) -> None:
        return None


class RecordingSender:
    """Answers every attempt with ``outcome``, or raises ``error``; remembers the bodies it was handed."""

    def __init__(self, outcome: AttemptOutcome | None = None, error: Exception | None = None) -> None:
        self.outcome = outcome
        self.error = error
        self.bodies: list[bytes] = []

    def attempt(self, event_id: str, body: bytes, timestamp: int | None = None) -> AttemptOutcome:
        self.bodies.append(body)
        if self.error is not None:
            raise self.error
        assert self.outcome is not None
        return self.outcome


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStateStore]:
    store = SqliteStateStore(str(tmp_path / "state.sqlite3"), retention_seconds=3600)
    yield store
    store.close()


def target(hours: float = 24.0, timeout: float = 2.0) -> TargetConfig:
    return TargetConfig(id="default", url="http://127.0.0.1:9/hook/x", timeout_seconds=timeout,
                        retry=RetryPolicy(schedule=(5.0, 30.0), hours=hours))


def worker(store: SqliteStateStore, sender: RecordingSender, clock: Clock, **target_args: float) -> DeliveryWorker:
    lease = HeldLease()
    return DeliveryWorker(target(**target_args), store, lease, OwnershipGuard(lease),  # type: ignore[arg-type]
                          lambda: sender, wakeup=threading.Event(), flag_wakeup=threading.Event(),
                          rng=random.Random(1), clock=clock)


def queue(store: SqliteStateStore, subject: str, event_id: str = "msg_0123456789abcdef0123456789abcdef",
          at: float = NOW) -> str:
    payload = {"event_id": event_id, "subject": subject, "sender_email": "jane@example.com", "delivery_links": []}
    assert store.enqueue(OutboxItem(event_id=event_id, email_id=event_id[4:], payload=payload, mailbox=MAILBOX,
                                    uidvalidity=7, uid=42, message_id="m@example.com", created_at=at,
                                    next_attempt_at=at))
    return event_id


def test_a_stored_payload_with_a_lone_surrogate_is_a_dead_letter_encode_error_at_once(store):
    # Given an outbox item whose stored body holds a lone surrogate (it bypassed build_payload's cleaning)
    event_id = queue(store, "\ud83d Fichiers")
    sender = RecordingSender(AttemptOutcome("delivered", 200, None, None, 1, None))
    clock = Clock(NOW)
    delivery = worker(store, sender, clock)
    # When the delivery loop claims and attempts it
    assert delivery.run_once() is True
    # Then nothing was posted, and it is a dead letter encode_error, done and waiting to be flagged
    assert sender.bodies == []
    item = store.get_item(event_id)
    assert (item.status, item.dead_reason, item.attempts, item.in_flight) == ("dead", "encode_error", 1, False)
    assert "surrogates not allowed" in (item.response_excerpt or "")
    assert store.get_done(event_id[4:]) == "dead:encode_error"
    assert [(flag.uidvalidity, flag.uid) for flag in store.pending_flags(MAILBOX, 10)] == [(7, 42)]
    # And long after its claim would have lapsed, it is never claimed again nor counted as a possible duplicate
    clock.now = NOW + 3600
    assert delivery.run_once() is False
    assert store.get_item(event_id).attempts == 1
    assert store.counters().get("possible_duplicates", 0) == 0


def test_an_attempt_that_fails_outside_the_network_is_a_retry_that_counts_toward_the_window(store):
    # Given a sender that fails with an error that is no network outcome (a bug, a refused event id ...)
    event_id = queue(store, "Fichiers")
    clock = Clock(NOW)
    delivery = worker(store, RecordingSender(error=RuntimeError("boom")), clock, hours=1.0)
    # When the item is attempted
    assert delivery.run_once() is True
    # Then the failure is recorded as a retry on the schedule, not left in flight for the claim to lapse
    item = store.get_item(event_id)
    assert (item.status, item.last_error, item.in_flight, item.attempts) == ("pending", "attempt_error", False, 1)
    assert NOW + 4.5 <= item.next_attempt_at <= NOW + 5.5
    # And once the retry window has passed, it becomes a dead letter like any failing delivery
    clock.now = NOW + 3600 - 1
    assert delivery.run_once() is True
    item = store.get_item(event_id)
    assert (item.status, item.dead_reason, item.attempts) == ("dead", "retries_exhausted", 2)
    assert store.counters().get("possible_duplicates", 0) == 0


def test_the_claim_outlives_the_attempts_wall_clock_bound_by_the_margin(store):
    # The sender bounds a whole attempt to WEBHOOK_TIMEOUT_SECONDS; the claim must last longer than that.
    event_id = queue(store, "Fichiers")
    seen: list[OutboxItem] = []

    class Inspecting(RecordingSender):
        def attempt(self, event_id: str, body: bytes, timestamp: int | None = None) -> AttemptOutcome:
            seen.append(store.get_item(event_id))
            return super().attempt(event_id, body, timestamp)

    sender = Inspecting(AttemptOutcome("delivered", 200, None, None, 1, None))
    assert worker(store, sender, Clock(NOW), timeout=2.0).run_once() is True
    [during] = seen
    assert during.claimed_until == NOW + 2.0 + CLAIM_MARGIN_SECONDS
    assert CLAIM_MARGIN_SECONDS >= 5  # a margin that covers the time to record the outcome, not a rounding error
    assert store.get_item(event_id).status == "delivered"


class LostLease(HeldLease):
    """A lease that turns out lost when checked in the store, after the item was claimed."""

    def verify(self) -> None:
        from background.lease import LeaseLost

        raise LeaseLost("token mismatch")


def test_a_claim_that_ends_without_an_attempt_counts_no_attempt_and_no_possible_duplicate(store):
    from background.lease import LeaseLost

    event_id = queue(store, "Fichiers")
    lease = LostLease()
    sender = RecordingSender(AttemptOutcome("delivered", 200, None, None, 1, None))
    delivery = DeliveryWorker(target(), store, lease, OwnershipGuard(lease),  # type: ignore[arg-type]
                              lambda: sender, wakeup=threading.Event(), flag_wakeup=threading.Event(),
                              rng=random.Random(1), clock=Clock(NOW))
    with pytest.raises(LeaseLost):
        delivery.run_once()
    item = store.get_item(event_id)
    assert (item.attempts, item.in_flight, sender.bodies) == (0, False, [])
    # the next holder claims it as a first attempt, not as a possible duplicate
    (again,) = store.claim_due("next-holder", NOW + 1, 1, 30)
    assert again.attempts == 1 and store.counters().get("possible_duplicates", 0) == 0


def test_a_2xx_whose_recording_fails_once_is_recorded_again_not_sent_again(store, monkeypatch, caplog):
    import background.delivery as delivery_module
    from services.state_store import StateStoreError

    monkeypatch.setattr(delivery_module, "ACK_RETRY_PAUSES", (0.01, 0.01))
    event_id = queue(store, "Fichiers")
    real = store.mark_delivered
    failures = iter([StateStoreError("sqlite mark_delivered: database is locked")])

    def flaky(*args, **kwargs):
        error = next(failures, None)
        if error is not None:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "mark_delivered", flaky)
    sender = RecordingSender(AttemptOutcome("delivered", 200, None, None, 3, None))
    caplog.set_level("INFO")
    assert worker(store, sender, Clock(NOW)).run_once() is True
    item = store.get_item(event_id)
    assert item.status == "delivered" and len(sender.bodies) == 1
    # the attempt is in the item's log, and the end state is one EMAIL: line
    assert item.attempt_log == [{"at": NOW, "attempt": 1, "status": 200, "error": None, "ms": 3}]
    assert f"EMAIL: delivered mailbox=default uid=42 event_id={event_id} target=default" in caplog.text
