"""A target's delivery window holds its items, and its body cap is never exceeded (issue 17).

``DeliveryWorker`` against a real SQLite state store with a fake clock: outside the window an item is held (no
attempt counted, due when the window opens, shown as ``held`` and ``held_until``, not as a backlog), held time does
not count toward the retry window, and at the opening it is delivered. A body over the target's cap is shrunk
(the same bytes on every attempt) or, when it cannot fit, a dead letter ``body_too_large``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
from pathlib import Path
from typing import Iterator
from zoneinfo import ZoneInfo

import pytest

from config import DeliveryWindow, RetryPolicy, TargetProfile
from services.state_store import OutboxItem
from services.state_store_sqlite import SqliteStateStore
from services.webhook import AttemptOutcome
from tests.unit.test_delivery_attempt_failures import Clock, RecordingSender, queue, target, worker

PARIS = ZoneInfo("Europe/Paris")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStateStore]:
    store = SqliteStateStore(str(tmp_path / "state.sqlite3"), retention_seconds=3600)
    yield store
    store.close()

DELIVERED = AttemptOutcome("delivered", 200, None, None, 1, None)
FAILED = AttemptOutcome("retry", 503, None, "busy", 1, "http_503")


# A Friday at least a week after today: the fake clock stays ahead of the store's real-time retention, and the
# items are queued at the fake clock's time, so the tests hold whatever day they run on.
_TODAY = datetime.date.today()
FRIDAY = _TODAY + datetime.timedelta(days=7 + (4 - _TODAY.weekday()) % 7)


def paris(day_offset: int, hour: int, minute: int) -> float:
    """Paris wall-clock time on ``FRIDAY + day_offset``."""
    day = FRIDAY + datetime.timedelta(days=day_offset)
    return datetime.datetime(day.year, day.month, day.day, hour, minute, tzinfo=PARIS).timestamp()


OFFICE_HOURS = DeliveryWindow(timezone="Europe/Paris", days=(0, 1, 2, 3, 4), opens=datetime.time(8, 0),
                              closes=datetime.time(19, 0))


def windowed(delivery, window=OFFICE_HOURS):
    delivery.target = dataclasses.replace(delivery.target, window=window)
    return delivery


def test_an_item_queued_outside_the_window_is_held_until_it_opens_then_delivered(store):
    # Given a target open on weekdays 08:00-19:00 Paris time, and an item queued on a Friday at 21:30
    clock = Clock(paris(0, 21, 30))
    event_id = queue(store, "après l'heure", at=clock.now)
    sender = RecordingSender(DELIVERED)
    delivery = windowed(worker(store, sender, clock))
    # When the delivery loop runs
    delivery.run_once()
    # Then nothing is sent: the item is held until Monday 08:00, with no attempt counted
    item = store.get_item(event_id)
    monday = paris(3, 8, 0)
    assert sender.bodies == []
    assert (item.status, item.attempts, item.held_until, item.next_attempt_at) == ("pending", 0, monday, monday)
    # and it is held, not backlog
    stats = store.outbox_stats(clock.now)
    assert (stats["pending"], stats["held"]) == (0, 1)
    # When Saturday comes, it is still held (not due); when Monday 08:00 comes, it is delivered
    clock.now = paris(1, 12, 0)
    assert delivery.run_once() is False
    clock.now = monday + 1
    delivery.run_once()
    assert len(sender.bodies) == 1 and store.get_item(event_id).status == "delivered"


def test_held_time_does_not_count_toward_the_retry_window(store):
    # Given a target retrying for 1 hour, whose first attempt failed at 18:50 on a Friday
    clock = Clock(paris(0, 18, 50))
    event_id = queue(store, "retry across the weekend", at=clock.now)
    sender = RecordingSender(FAILED)
    delivery = windowed(worker(store, sender, clock, hours=1.0))
    delivery.run_once()
    assert store.get_item(event_id).attempts == 1
    # When the retry comes due after the window closed, it is held over the weekend
    clock.now = paris(0, 19, 30)
    delivery.run_once()
    held = store.get_item(event_id)
    assert held.held_until == paris(3, 8, 0) and held.attempts == 1
    # Then on Monday 08:00 it is attempted again, not a dead letter for a retry window long past
    clock.now = paris(3, 8, 0) + 1
    delivery.run_once()
    item = store.get_item(event_id)
    assert item.status == "pending" and item.attempts == 2 and len(sender.bodies) == 2


def test_a_body_over_the_targets_cap_is_shrunk_to_fit_and_the_same_bytes_go_on_every_attempt(store):
    # Given an item whose body (20 kB of text) is over its target's 4 kB cap, and a target that answers 503
    clock = Clock(time.time())
    payload = {"event_id": "msg_big", "subject": "big", "sender_email": "jane@example.com", "delivery_links": [],
               "email_content": "mot " * 5000, "email_content_truncated": False, "bodyPreview": "mot mot"}
    store.enqueue(OutboxItem(event_id="msg_big", email_id="big", payload=payload, mailbox="INBOX", uidvalidity=7,
                             uid=43, message_id=None, created_at=clock.now, next_attempt_at=clock.now))
    sender = RecordingSender(FAILED)
    delivery = worker(store, sender, clock)
    delivery.target = dataclasses.replace(delivery.target, max_body_bytes=4096)
    # When it is attempted twice
    delivery.run_once()
    clock.now += 10
    delivery.run_once()
    # Then both attempts sent the same shrunk body, within the cap, saying its text was truncated
    assert len(sender.bodies) == 2 and sender.bodies[0] == sender.bodies[1]
    assert len(sender.bodies[0]) <= 4096
    assert json.loads(sender.bodies[0])["email_content_truncated"] is True


def test_a_body_that_cannot_fit_the_cap_is_a_dead_letter_body_too_large_and_never_sent(store):
    clock = Clock(time.time())
    event_id = queue(store, "x" * 3000)  # the subject is never cut
    sender = RecordingSender(DELIVERED)
    delivery = worker(store, sender, clock)
    delivery.target = dataclasses.replace(delivery.target, max_body_bytes=1024)

    delivery.run_once()

    item = store.get_item(event_id)
    assert sender.bodies == []
    assert (item.status, item.dead_reason) == ("dead", "body_too_large")


def test_the_profile_sets_the_default_cap():
    base = target()
    assert dataclasses.replace(base, profile=TargetProfile.MAKE).body_cap == 5_000_000
    assert dataclasses.replace(base, profile=TargetProfile.ZAPIER).body_cap == 10_000_000
    assert dataclasses.replace(base, profile=TargetProfile.N8N).body_cap == 16_000_000
    assert dataclasses.replace(base, profile=TargetProfile.MAKE, max_body_bytes=2048).body_cap == 2048
    assert RetryPolicy().hours == 24.0
