"""One contract for the state store, run against both backends: here a real SQLite file (tests/integration/
test_state_store_contract_redis.py runs the same tests against a real redis-server).

Every test gets a fresh store from ``open_state_store(settings)``; the retention tests build one with a retention
of about a second (settings allow no less than 0.001 days) and wait for it to pass.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time

import pytest

from services.state_store import (
    EXCERPT_MAX_CHARS,
    RECENT_KEEP,
    OutboxItem,
    StateStore,
)


# The same tests run against a real redis-server in tests/integration/test_state_store_contract_redis.py, which
# imports them and overrides this fixture.
@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def an_item(n: int = 1, *, next_attempt_at: float = 0.0, mailbox: str = "INBOX",
            message_id: str | None = "<m{n}@example.com>") -> OutboxItem:
    return OutboxItem(
        event_id=f"msg_e{n}", email_id=f"e{n}", payload={"event_id": f"msg_e{n}", "subject": "Fichier prêt ✓",
                                                         "links": [{"url": f"https://x/{n}", "size": None}]},
        mailbox=mailbox, uidvalidity=77, uid=1000 + n,
        message_id=None if message_id is None else message_id.format(n=n), next_attempt_at=next_attempt_at)


# --- wiring -----------------------------------------------------------------------------------------------------

def test_it_picks_the_backend_from_settings_and_answers_ping(store: StateStore, backend: str, environ) -> None:
    assert store.backend == backend
    assert isinstance(store, StateStore)
    store.ping()
    db_file = os.path.join(environ["STATE_DIR"], "state.sqlite3")
    assert os.path.exists(db_file) == (backend == "sqlite")


# --- checkpoints --------------------------------------------------------------------------------------------------

def test_checkpoints_never_move_backwards_and_are_kept_per_uidvalidity(store: StateStore) -> None:
    assert store.get_checkpoint("INBOX", 5) is None
    assert store.has_any_checkpoint("INBOX") is False

    store.set_checkpoint("INBOX", 5, 10)
    store.set_checkpoint("INBOX", 5, 7)      # lower: ignored
    assert store.get_checkpoint("INBOX", 5) == 10
    store.set_checkpoint("INBOX", 5, 12)
    store.set_checkpoint("INBOX", 6, 1)
    assert store.get_checkpoint("INBOX", 5) == 12
    assert store.get_checkpoint("INBOX", 6) == 1

    assert store.has_any_checkpoint("INBOX") is True
    assert store.has_any_checkpoint("Archive") is False
    assert store.get_checkpoint("Archive", 5) is None


# --- done records -------------------------------------------------------------------------------------------------

def test_done_records_are_stored_by_email_id(store: StateStore) -> None:
    assert store.get_done("e1") is None
    store.mark_done("e1", "skipped:no_link")
    store.mark_done("e2", "skipped:sender_filtered")
    store.mark_done("e2", "delivered")
    assert store.get_done("e1") == "skipped:no_link"
    assert store.get_done("e2") == "delivered"


# --- outbox -------------------------------------------------------------------------------------------------------

def test_enqueue_is_idempotent_by_event_id_in_every_status(store: StateStore) -> None:
    # Given an item enqueued once
    assert store.enqueue(an_item(1)) is True
    assert store.get_done("e1") == "enqueued"
    # Then enqueueing it again, pending, delivered or dead, is refused
    assert store.enqueue(an_item(1)) is False
    store.claim_due("w", time.time(), 10, 30)
    store.mark_delivered("msg_e1", 200, time.time())
    assert store.enqueue(an_item(1)) is False
    assert store.get_item("msg_e1").status == "delivered"

    store.enqueue(an_item(2))
    store.dead_letter("msg_e2", "http_400", 400, "bad")
    assert store.enqueue(an_item(2)) is False
    assert store.get_item("msg_e2").status == "dead"
    assert store.outbox_stats(time.time())["pending"] == 0


def an_item_for(target_id: str, n: int = 1) -> OutboxItem:
    """Item ``n``'s email fanned out to ``target_id``."""
    base = an_item(n)
    return OutboxItem(**{**base.__dict__, "event_id": f"msg_e{n}_{target_id}", "target_id": target_id})


def test_an_email_fanned_out_is_done_and_flagged_only_when_every_item_has_ended(store: StateStore) -> None:
    # Given one email queued for three targets in one call
    items = [an_item_for(target) for target in ("a", "b", "c")]
    assert store.enqueue_all(items) == [True, True, True]
    assert store.enqueue_all(items) == [False, False, False]
    claimed = store.claim_due("w", time.time(), 10, 30)
    assert {item.event_id for item in claimed} == {item.event_id for item in items}
    # When two of them are delivered
    store.mark_delivered("msg_e1_a", 200, time.time())
    store.mark_delivered("msg_e1_b", 200, time.time())
    # Then the email is not done yet and not flagged
    assert store.get_done("e1") == "enqueued"
    assert store.pending_flags("INBOX", 10) == []
    # When the last one is delivered too, it is done and its flag request is queued once
    store.mark_delivered("msg_e1_c", 200, time.time())
    assert store.get_done("e1") == "delivered"
    assert [flag.uid for flag in store.pending_flags("INBOX", 10)] == [1001]


def test_an_email_with_a_dead_item_is_done_as_dead_once_the_others_end(store: StateStore) -> None:
    store.enqueue_all([an_item_for("a", 2), an_item_for("b", 2)])
    store.claim_due("w", time.time(), 10, 30)

    store.dead_letter("msg_e2_a", "http_400", 400, "bad")
    assert store.get_done("e2") == "enqueued" and store.pending_flags("INBOX", 10) == []
    store.mark_delivered("msg_e2_b", 200, time.time())

    assert store.get_done("e2") == "dead:http_400"
    assert [flag.uid for flag in store.pending_flags("INBOX", 10)] == [1002]


def test_a_single_item_email_ends_with_its_item_as_before(store: StateStore) -> None:
    store.enqueue(an_item(3))
    store.claim_due("w", time.time(), 10, 30)
    store.dead_letter("msg_e3", "http_410", 410, None)
    assert store.get_done("e3") == "dead:http_410"
    assert [flag.uid for flag in store.pending_flags("INBOX", 10)] == [1003]


def test_each_target_claims_its_own_due_items_whatever_the_backlog_of_another(store: StateStore) -> None:
    # Given 300 due items for a target that is down, queued before one item for another target
    now = time.time()
    store.enqueue_all([an_item_for("down", n) for n in range(1, 301)])
    store.enqueue_all([an_item_for("up", 999)])
    # When the healthy target claims
    claimed = store.claim_due("w", now, 10, 30, mailbox_id="default", target_id="up")
    # Then it gets its item at once, and only its own
    assert [item.event_id for item in claimed] == ["msg_e999_up"]
    assert store.claim_due("w", now, 10, 30, mailbox_id="default", target_id="up") == []
    down = store.claim_due("w", now, 500, 30, mailbox_id="default", target_id="down")
    assert len(down) == 300 and {item.target_id for item in down} == {"down"}


def test_a_claim_by_owner_sees_rescheduled_released_and_finished_items_as_they_are(store: StateStore) -> None:
    now = time.time()
    store.enqueue_all([an_item_for("t", n) for n in (1, 2, 3)])
    first = store.claim_due("w", now, 10, 30, mailbox_id="default", target_id="t")
    assert len(first) == 3
    store.reschedule("msg_e1_t", now + 100, "http_503", 503)   # due later
    store.release_claim("msg_e2_t")                            # due again now
    store.mark_delivered("msg_e3_t", 200, now)                 # ended

    again = store.claim_due("w", now + 1, 10, 1000, mailbox_id="default", target_id="t")
    assert [item.event_id for item in again] == ["msg_e2_t"]
    later = store.claim_due("w", now + 101, 10, 30, mailbox_id="default", target_id="t")
    assert [item.event_id for item in later] == ["msg_e1_t"]


def test_a_held_item_counts_no_attempt_is_due_when_its_window_opens_and_is_not_backlog(store: StateStore) -> None:
    now = time.time()
    store.enqueue_all([an_item_for("t", 8)])
    [claimed] = store.claim_due("w", now, 10, 30, mailbox_id="default", target_id="t")
    # When the claimed item is held for an hour (its target's window is closed)
    assert store.hold(claimed.event_id, now + 3600, now) is True
    # Then no attempt is counted, it shows when it is held until, and it is not pending backlog
    item = store.get_item(claimed.event_id)
    assert (item.attempts, item.in_flight, item.held_until) == (0, False, pytest.approx(now + 3600))
    stats = store.outbox_stats(now)
    assert (stats["pending"], stats["held"]) == (0, 1)
    assert store.claim_due("w", now + 10, 10, 30, mailbox_id="default", target_id="t") == []
    # and when the window opens it is claimable again, and backlog again
    assert store.outbox_stats(now + 3601)["pending"] == 1
    assert [i.event_id for i in store.claim_due("w", now + 3601, 10, 30, mailbox_id="default", target_id="t")] == [
        claimed.event_id]
    # holding an item that is not claimed changes nothing
    assert store.hold("msg_unknown", now + 10, now) is False


def test_target_stats_count_pending_held_and_dead_per_target(store: StateStore) -> None:
    now = time.time()
    store.enqueue_all([an_item_for("a", 1), an_item_for("b", 1)])
    store.enqueue_all([an_item_for("a", 2), an_item_for("c", 2)])
    claimed = {item.event_id: item for item in store.claim_due("w", now, 10, 30)}
    store.hold("msg_e2_c", now + 600, now)
    store.dead_letter("msg_e1_b", "http_400", 400, None)
    assert len(claimed) == 4
    stats = store.target_stats(now)
    assert {target: (entry["pending"], entry["held"], entry["dead"]) for target, entry in stats.items()} == {
        "a": (2, 0, 0), "b": (0, 0, 1), "c": (0, 1, 0)}
    assert stats["a"]["oldest_pending_age_s"] is not None and stats["a"]["oldest_pending_age_s"] >= 0


def _due_for(target_id: str, n: int, next_attempt_at: float) -> OutboxItem:
    return OutboxItem(**{**an_item_for(target_id, n).__dict__, "next_attempt_at": next_attempt_at})


def test_target_stats_give_each_target_its_oldest_due_item_and_its_scheduled_delay(store: StateStore) -> None:
    now = time.time()
    # Given target a with two never-tried items due 50 s and 100 s ago (the newer one queued first)
    store.enqueue_all([_due_for("a", 2, now - 50)])
    store.enqueue_all([_due_for("a", 1, now - 100)])
    # target b: an item tried 400 s ago and rescheduled 200 s later (now 200 s overdue), and one due later
    store.enqueue_all([_due_for("b", 3, now - 400), _due_for("b", 4, now + 500)])
    assert [i.event_id for i in store.claim_due("w", now - 400, 10, 30, mailbox_id="default", target_id="b")] == [
        "msg_e3_b"]
    store.reschedule("msg_e3_b", now - 200, "http_503", 503, attempt={"at": now - 400, "status": 503, "ms": 5})
    # target l: an item whose claim lapsed 370 s ago (due again since then)
    store.enqueue_all([_due_for("l", 5, now - 400)])
    store.claim_due("w", now - 400, 10, 30, mailbox_id="default", target_id="l")
    # target c: one item under a live claim and one held outside its window; d: a dead letter; e: enriching only
    store.enqueue_all([_due_for("c", 6, now - 10), _due_for("c", 7, now - 10), _due_for("d", 8, now - 10)])
    assert len(store.claim_due("w", now, 10, 30, mailbox_id="default", target_id="c")) == 2
    store.hold("msg_e7_c", now + 600, now)
    store.claim_due("w", now, 10, 30, mailbox_id="default", target_id="d")
    store.dead_letter("msg_e8_d", "http_400", 400, None, now)
    store.enqueue_all([OutboxItem(**{**an_enriching_item(9).__dict__, "event_id": "msg_e9_e", "target_id": "e"})])

    # When the per-target stats are read
    stats = store.target_stats(now)

    # Then each target names its oldest due item's due time and the delay it was scheduled to wait
    due = {target: (entry["oldest_due_at"], entry["oldest_due_delay"]) for target, entry in stats.items()}
    assert due == {"a": (pytest.approx(now - 100), 0.0), "b": (pytest.approx(now - 200), pytest.approx(200.0)),
                   "l": (pytest.approx(now - 370), 0.0), "c": (None, None), "d": (None, None), "e": (None, None)}
    # and the oldest of them is the outbox's own oldest due item, as outbox_stats reports it
    outbox = store.outbox_stats(now)
    oldest = min((entry for entry in stats.values() if entry["oldest_due_at"] is not None),
                 key=lambda entry: entry["oldest_due_at"])
    assert (oldest["oldest_due_at"], oldest["oldest_due_delay"]) == (outbox["oldest_due_at"],
                                                                      outbox["oldest_due_delay"])


def test_the_outbox_breakdown_is_target_stats_and_pending_mailboxes_in_one_answer(store: StateStore) -> None:
    now = time.time()
    # Given items of two mailboxes for three targets: due, held, claimed, enriching and dead
    work = [OutboxItem(**{**_due_for(target, 10 + n, now - 30).__dict__, "mailbox_id": "work"})
            for n, target in enumerate(("a", "b"))]
    store.enqueue_all([_due_for("a", 1, now - 100), _due_for("b", 1, now - 100), *work])
    store.enqueue_all([_due_for("c", 2, now - 60), _due_for("c", 3, now + 300)])
    store.claim_due("w", now, 10, 30, mailbox_id="work", target_id="b")
    store.claim_due("w", now, 10, 30, mailbox_id="default", target_id="c")
    store.hold("msg_e2_c", now + 600, now)
    store.claim_due("w", now, 10, 30, mailbox_id="default", target_id="a")
    store.dead_letter("msg_e1_a", "http_400", 400, None, now)
    store.enqueue_all([OutboxItem(**{**an_enriching_item(4).__dict__, "event_id": "msg_e4_d", "target_id": "d",
                                     "mailbox_id": "work"})])

    # When the breakdown is read, and the two answers it stands for
    breakdown = store.outbox_breakdown(now)
    targets, owners = store.target_stats(now), store.pending_owners()

    # Then it is exactly those two answers
    assert breakdown == {"targets": targets, "mailboxes": owners["mailboxes"]}
    assert breakdown["mailboxes"] == {"default": 3, "work": 3}
    assert {target: (entry["pending"], entry["held"], entry["dead"]) for target, entry in targets.items()} == {
        "a": (1, 0, 1), "b": (2, 0, 0), "c": (1, 1, 0), "d": (1, 0, 0)}
    assert store.outbox_breakdown(now) == breakdown   # reading changes nothing


def test_each_mailbox_holder_publishes_its_own_status(store: StateStore) -> None:
    store.publish_mailbox_status("studio", {"poller": {"state": "idle"}}, ttl_seconds=30)
    store.publish_mailbox_status("agency", {"poller": {"state": "polling"}}, ttl_seconds=0.2)
    time.sleep(0.3)
    statuses = store.read_mailbox_statuses(["studio", "agency", "other"])
    assert list(statuses) == ["studio"] and statuses["studio"]["poller"] == {"state": "idle"}
    assert statuses["studio"]["published_at"] > 0


def test_a_retry_due_before_its_claim_would_end_is_claimed_by_its_owner_when_due(store: StateStore) -> None:
    now = time.time()
    store.enqueue_all([an_item_for("t", 9)])
    [claimed] = store.claim_due("w", now, 10, 1000, mailbox_id="default", target_id="t")
    store.reschedule(claimed.event_id, now + 1, "http_503", 503)
    again = store.claim_due("w", now + 2, 10, 30, mailbox_id="default", target_id="t")
    assert [item.event_id for item in again] == [claimed.event_id]


def test_writes_fenced_with_a_stale_lease_epoch_are_refused_and_a_late_2xx_is_only_counted(store: StateStore) -> None:
    from services.state_store import StaleFence

    # Given a first holder of mailbox default's lease (epoch 1) and then a second one (epoch 2)
    old = ("default", store.advance_epoch("default"))
    new = ("default", store.advance_epoch("default"))
    assert new[1] == old[1] + 1
    now = time.time()
    # Then the old holder can no longer enqueue, claim or move the checkpoint
    with pytest.raises(StaleFence):
        store.enqueue_all([an_item_for("t", 1)], fence=old)
    with pytest.raises(StaleFence):
        store.set_checkpoint("INBOX", 5, 10, fence=old)
    assert store.get_item("msg_e1_t") is None and store.get_checkpoint("INBOX", 5) is None
    # while the new one can
    assert store.enqueue_all([an_item_for("t", 1)], fence=new) == [True]
    store.set_checkpoint("INBOX", 5, 10, fence=new)
    assert store.get_checkpoint("INBOX", 5) == 10
    with pytest.raises(StaleFence):
        store.claim_due("w", now, 10, 30, mailbox_id="default", target_id="t", fence=old)
    [claimed] = store.claim_due("w", now, 10, 30, mailbox_id="default", target_id="t", fence=new)
    # and a 2xx the old holder records late is kept (the receiver has it), only counted
    assert store.mark_delivered(claimed.event_id, 200, now, fence=old) is True
    assert store.get_item(claimed.event_id).status == "delivered"
    assert store.counters()["late_acknowledgements"] == 1
    # epochs are per mailbox
    assert store.advance_epoch("studio") == 1


def test_an_enqueued_item_reads_back_with_every_field(store: StateStore) -> None:
    before = time.time()
    item = an_item(1, next_attempt_at=before + 5)
    store.enqueue(item)

    stored = store.get_item("msg_e1")
    assert stored is not None
    assert (stored.event_id, stored.email_id, stored.payload) == (item.event_id, item.email_id, item.payload)
    assert (stored.mailbox, stored.uidvalidity, stored.uid) == ("INBOX", 77, 1001)
    assert stored.message_id == "<m1@example.com>"
    assert stored.status == "pending" and stored.attempts == 0 and stored.in_flight is False
    assert stored.next_attempt_at == pytest.approx(before + 5)
    assert before <= stored.created_at <= time.time()
    assert stored.first_attempt_at is None and stored.delivered_at is None and stored.dead_reason is None
    assert store.get_item("msg_unknown") is None


def test_claim_due_takes_only_due_unclaimed_items_up_to_the_limit(store: StateStore) -> None:
    now = time.time()
    for n in range(1, 6):
        store.enqueue(an_item(n, next_attempt_at=now - 10 + n))   # due at now-9 .. now-5
    store.enqueue(an_item(9, next_attempt_at=now + 60))           # not due yet

    first = store.claim_due("worker-a", now, 3, 30)
    assert [item.event_id for item in first] == ["msg_e1", "msg_e2", "msg_e3"]
    for item in first:
        assert item.in_flight is True and item.attempts == 1
        assert item.claim_owner == "worker-a" and item.claimed_until == pytest.approx(now + 30)
        assert item.first_attempt_at == pytest.approx(now)
    stored = store.get_item("msg_e1")
    assert stored.in_flight is True and stored.claim_owner == "worker-a" and stored.attempts == 1

    # A live claim is not claimed again; the rest of the due items are.
    second = store.claim_due("worker-b", now + 1, 10, 30)
    assert [item.event_id for item in second] == ["msg_e4", "msg_e5"]
    assert store.claim_due("worker-c", now + 2, 10, 30) == []
    assert store.claim_due("worker-c", now + 2, 0, 30) == []
    assert store.counters().get("possible_duplicates", 0) == 0


def test_an_item_reclaimed_while_still_in_flight_counts_a_possible_duplicate(store: StateStore) -> None:
    # Given a claimed item whose outcome was never recorded (its holder crashed or froze)
    now = time.time()
    store.enqueue(an_item(1))
    store.enqueue(an_item(2))
    store.claim_due("frozen", now, 10, 30)
    store.reschedule("msg_e2", now + 1, "timeout", None)   # e2's outcome was recorded

    # When the claims lapse and another worker claims again
    again = store.claim_due("new-holder", now + 31, 10, 30)

    # Then both are claimable again, but only e1 counts as a possible duplicate
    assert sorted(item.event_id for item in again) == ["msg_e1", "msg_e2"]
    assert {item.event_id: item.attempts for item in again} == {"msg_e1": 2, "msg_e2": 2}
    assert store.counters()["possible_duplicates"] == 1
    assert store.get_item("msg_e1").claim_owner == "new-holder"


def test_mark_delivered_finishes_the_item_marks_it_done_counts_it_and_queues_its_flag(store: StateStore) -> None:
    now = time.time()
    store.enqueue(an_item(1))
    store.claim_due("w", now, 1, 30)

    assert store.mark_delivered("msg_e1", 202, now + 1) is True

    item = store.get_item("msg_e1")
    assert item.status == "delivered" and item.in_flight is False and item.last_status == 202
    assert item.delivered_at == pytest.approx(now + 1)
    assert item.claimed_until is None and item.claim_owner is None
    assert store.get_done("e1") == "delivered"
    assert store.counters()["webhooks_delivered"] == 1
    [flag] = store.pending_flags("INBOX", 10)
    assert (flag.mailbox, flag.uidvalidity, flag.uid, flag.message_id) == ("INBOX", 77, 1001, "<m1@example.com>")
    assert [i.event_id for i in store.list_items("delivered")] == ["msg_e1"]
    assert store.claim_due("w", now + 1000, 10, 30) == []
    stats = store.outbox_stats(now + 2)
    assert stats["pending"] == 0 and stats["oldest_pending_age_s"] is None

    # A late second outcome (the frozen holder of a duplicate attempt) changes nothing.
    assert store.mark_delivered("msg_e1", 200, now + 5) is False
    assert store.reschedule("msg_e1", now + 60, "late", 500) is False
    assert store.dead_letter("msg_e1", "late", 400, None) is False
    assert store.counters()["webhooks_delivered"] == 1
    assert store.get_item("msg_e1").status == "delivered"
    assert store.mark_delivered("msg_unknown", 200, now) is False


def test_reschedule_keeps_the_item_pending_until_its_next_attempt(store: StateStore) -> None:
    now = time.time()
    store.enqueue(an_item(1))
    store.claim_due("w", now, 1, 30)

    assert store.reschedule("msg_e1", now + 30, "HTTP 503 " + "x" * 2000, 503) is True

    item = store.get_item("msg_e1")
    assert item.status == "pending" and item.in_flight is False
    assert item.next_attempt_at == pytest.approx(now + 30)
    assert item.last_status == 503 and item.last_error.startswith("HTTP 503")
    assert len(item.last_error) <= EXCERPT_MAX_CHARS
    assert store.counters()["webhook_retries"] == 1
    assert store.claim_due("w", now + 29, 10, 30) == []
    [again] = store.claim_due("w", now + 30, 10, 30)
    assert again.attempts == 2 and again.first_attempt_at == pytest.approx(now)
    assert store.counters().get("possible_duplicates", 0) == 0

    store.reschedule("msg_e1", now + 90, "connection refused", None)
    assert store.get_item("msg_e1").last_status is None


def test_dead_letter_parks_the_item_with_reason_and_bounded_excerpt(store: StateStore) -> None:
    now = time.time()
    store.enqueue(an_item(1, message_id=None))
    store.claim_due("w", now, 1, 30)

    assert store.dead_letter("msg_e1", "http_400", 400, "E" * 5000, now=now + 1) is True

    item = store.get_item("msg_e1")
    assert item.status == "dead" and item.dead_reason == "http_400" and item.last_status == 400
    assert item.response_excerpt == "E" * EXCERPT_MAX_CHARS
    assert item.in_flight is False and item.dead_at == pytest.approx(now + 1)
    assert store.get_done("e1") == "dead:http_400"
    assert store.counters()["dead_letters"] == 1
    [flag] = store.pending_flags("INBOX", 10)
    assert (flag.uidvalidity, flag.uid, flag.message_id) == (77, 1001, None)
    assert store.claim_due("w", now + 1000, 10, 30) == []
    assert [i.event_id for i in store.list_items("dead")] == ["msg_e1"]


def test_outbox_stats_report_pending_age_and_the_newest_dead_letters(store: StateStore) -> None:
    store.enqueue(an_item(1))
    time.sleep(0.05)
    store.enqueue(an_item(2))
    base = time.time()
    for n in range(3, 11):
        store.enqueue(an_item(n))
        store.dead_letter(f"msg_e{n}", f"reason_{n}", 400 + n, None, now=base + n)

    stats = store.outbox_stats(base + 100)

    assert stats["pending"] == 2
    assert stats["oldest_pending_age_s"] >= 100
    assert stats["dead"] == 8
    assert [d["event_id"] for d in stats["dead_recent"]] == ["msg_e10", "msg_e9", "msg_e8", "msg_e7", "msg_e6"]
    assert stats["dead_recent"][0] == {"event_id": "msg_e10", "reason": "reason_10", "status": 410,
                                       "at": pytest.approx(base + 10)}
    json.dumps(stats)  # the status route serialises it as is


def test_list_items_orders_pending_oldest_first_and_respects_the_limit(store: StateStore) -> None:
    for n in (3, 1, 2):
        store.enqueue(an_item(n))
        time.sleep(0.01)
    assert [i.event_id for i in store.list_items("pending")] == ["msg_e3", "msg_e1", "msg_e2"]
    assert len(store.list_items("pending", limit=2)) == 2
    assert store.list_items("delivered") == [] and store.list_items("dead") == []
    with pytest.raises(ValueError):
        store.list_items("bogus")


def test_replay_moves_dead_letters_back_to_pending_with_attempts_reset(store: StateStore) -> None:
    now = time.time()
    for n in (1, 2, 3):
        store.enqueue(an_item(n))
    store.claim_due("w", now, 10, 30)
    for n in (1, 2, 3):
        store.dead_letter(f"msg_e{n}", "http_404", 404, "not found", now=now)
    store.enqueue(an_item(4))

    # One by id
    assert store.replay("msg_e1", now=now + 5) == 1
    item = store.get_item("msg_e1")
    assert item.status == "pending" and item.attempts == 0 and item.event_id == "msg_e1"
    assert item.next_attempt_at == pytest.approx(now + 5) and item.dead_reason is None
    assert item.in_flight is False
    assert store.get_done("e1") == "enqueued"
    assert sorted(i.event_id for i in store.claim_due("w", now + 5, 10, 30)) == ["msg_e1", "msg_e4"]
    assert store.counters().get("possible_duplicates", 0) == 0

    # Unknown ids and items that are not dead replay nothing
    assert store.replay("msg_unknown") == 0
    assert store.replay("msg_e4") == 0

    # All the rest
    assert store.replay(None, now=now + 6) == 2
    assert store.outbox_stats(now + 6)["dead"] == 0
    assert {i.event_id for i in store.list_items("pending")} == {"msg_e1", "msg_e2", "msg_e3", "msg_e4"}
    assert store.replay() == 0


def test_a_replayed_item_can_be_delivered(store: StateStore) -> None:
    now = time.time()
    store.enqueue(an_item(1))
    store.claim_due("w", now, 1, 30)
    store.dead_letter("msg_e1", "http_400", 400, None, now=now)
    store.replay("msg_e1", now=now + 1)
    [item] = store.claim_due("w", now + 1, 1, 30)
    assert item.attempts == 1
    assert store.mark_delivered("msg_e1", 200, now + 2) is True
    assert store.counters()["webhooks_delivered"] == 1 and store.counters()["dead_letters"] == 1


# --- IMAP flag requests -------------------------------------------------------------------------------------------

def test_flag_requests_queue_per_mailbox_in_order_and_clear(store: StateStore) -> None:
    store.queue_flag("INBOX", 7, 10, "<a@x>")
    time.sleep(0.01)
    store.queue_flag("INBOX", 7, 11, None)
    store.queue_flag("INBOX", 7, 10, "<a@x>")   # again: still one request
    store.queue_flag("Other", 1, 1, "<b:c@x>")

    flags = store.pending_flags("INBOX", 10)
    assert [(f.uidvalidity, f.uid, f.message_id) for f in flags] == [(7, 10, "<a@x>"), (7, 11, None)]
    assert len(store.pending_flags("INBOX", 1)) == 1
    [other] = store.pending_flags("Other", 10)
    assert other.message_id == "<b:c@x>"

    store.clear_flag(flags[0])
    assert [f.uid for f in store.pending_flags("INBOX", 10)] == [11]
    store.clear_flag(flags[0])   # clearing twice is harmless
    store.clear_flag(flags[1])
    assert store.pending_flags("INBOX", 10) == []


# --- R2 reuse -----------------------------------------------------------------------------------------------------

def test_r2_reuse_records_expire_after_their_ttl(store: StateStore) -> None:
    url = "https://www.dropbox.com/s/abc/file.zip?dl=1"
    assert store.get_r2_copy(url) is None
    store.put_r2_copy(url, {"key": "r2/abc.zip", "size": 12}, ttl_seconds=0.4)
    store.put_r2_copy(url + "&x", {"key": "long"}, ttl_seconds=60)
    assert store.get_r2_copy(url) == {"key": "r2/abc.zip", "size": 12}
    time.sleep(0.6)
    assert store.get_r2_copy(url) is None
    assert store.get_r2_copy(url + "&x") == {"key": "long"}


# --- counters -----------------------------------------------------------------------------------------------------

def test_counters_add_up_with_and_without_labels(store: StateStore) -> None:
    assert store.counters() == {}
    store.incr("emails_seen")
    store.incr("emails_seen", 4)
    store.incr("emails_skipped", label="no_link")
    store.incr("emails_skipped", 2, label="sender_filtered")
    store.incr("emails_skipped", label="no_link")
    store.incr("r2_fallback", label="timeout: worker")   # labels may contain ':' and spaces
    assert store.counters() == {"emails_seen": 5, "emails_skipped": {"no_link": 2, "sender_filtered": 2},
                                "r2_fallback": {"timeout: worker": 1}}
    with pytest.raises(ValueError):
        store.incr("bad:name")


# --- status and history -------------------------------------------------------------------------------------------

def test_published_status_carries_published_at_and_expires(store: StateStore) -> None:
    assert store.read_status() is None
    before = time.time()
    store.publish_status({"lease": {"holder": "pid=1"}, "poller": {"state": "polling"}}, ttl_seconds=0.4)
    doc = store.read_status()
    assert doc["lease"] == {"holder": "pid=1"} and doc["poller"]["state"] == "polling"
    assert before <= doc["published_at"] <= time.time()
    time.sleep(0.6)
    assert store.read_status() is None


def test_recent_history_keeps_the_newest_hundred(store: StateStore) -> None:
    assert store.recent() == []
    for n in range(RECENT_KEEP + 5):
        store.record_recent({"n": n, "subject": "s"})
    assert [e["n"] for e in store.recent(3)] == [104, 103, 102]
    assert len(store.recent()) == 20
    everything = store.recent(1000)
    assert len(everything) == RECENT_KEEP and everything[-1]["n"] == 5


# --- retention ----------------------------------------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_finished_items_done_records_flags_and_history_expire_but_pending_work_stays(make_store) -> None:
    # Given a store keeping history for one second
    store = make_store(retention_seconds=1.0)
    now = time.time()
    for n in (1, 2, 3):
        store.enqueue(an_item(n))
    store.claim_due("w", now, 2, 30)
    store.mark_delivered("msg_e1", 200, now)
    store.dead_letter("msg_e2", "http_400", 400, "x", now=now)
    store.mark_done("e9", "skipped:no_link")
    store.record_recent({"n": 1})
    store.set_checkpoint("INBOX", 77, 1003)
    store.incr("emails_seen")

    # When the retention has passed and the store is trimmed
    time.sleep(1.3)
    later = time.time()
    store.trim(later)

    # Then the finished things are gone
    assert store.get_item("msg_e1") is None and store.get_item("msg_e2") is None
    assert store.get_done("e1") is None and store.get_done("e2") is None and store.get_done("e9") is None
    assert store.list_items("delivered") == [] and store.list_items("dead") == []
    assert store.pending_flags("INBOX", 10) == []
    assert store.recent() == []
    stats = store.outbox_stats(later)
    assert stats["dead"] == 0 and stats["dead_recent"] == [] and stats["pending"] == 1
    # And pending work, checkpoints and counters are kept
    [pending] = store.claim_due("w", later, 10, 30)
    assert pending.event_id == "msg_e3"
    assert store.get_checkpoint("INBOX", 77) == 1003
    assert store.counters()["emails_seen"] == 1
    assert store.replay() == 0


def test_sqlite_trim_deletes_expired_rows_from_the_file(tmp_path) -> None:
    from services.state_store_sqlite import SqliteStateStore

    path = str(tmp_path / "state.sqlite3")
    store = SqliteStateStore(path, retention_seconds=100)
    try:
        now = time.time()
        store.enqueue(an_item(1))
        store.enqueue(an_item(2))
        store.mark_delivered("msg_e1", 200, now)
        store.put_r2_copy("u", {}, ttl_seconds=10)
        store.publish_status({}, ttl_seconds=10)
        store.record_recent({})
        store.trim(now + 101)
        with sqlite3.connect(path) as raw:
            counts = {table: raw.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                      for table in ("outbox", "done", "flags", "r2_copies", "status", "recent")}
            mode = raw.execute("PRAGMA journal_mode").fetchone()[0]
        # only the pending item remains
        assert counts == {"outbox": 1, "done": 0, "flags": 0, "r2_copies": 0, "status": 0, "recent": 0}
        assert mode == "wal"
    finally:
        store.close()


# --- concurrency --------------------------------------------------------------------------------------------------

def test_threads_enqueueing_the_same_items_create_each_once(store: StateStore) -> None:
    created: list[str] = []
    lock = threading.Lock()

    def enqueue_all() -> None:
        for n in range(40):
            if store.enqueue(an_item(n)):
                with lock:
                    created.append(f"msg_e{n}")

    threads = [threading.Thread(target=enqueue_all) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert sorted(created) == sorted(f"msg_e{n}" for n in range(40))


# --- enrichment (items waiting for their R2 copies) ---------------------------------------------------------------

def an_enriching_item(n: int = 1) -> OutboxItem:
    item = an_item(n)
    item.status = "enriching"
    return item


def test_an_enriching_item_is_queued_work_that_no_claim_takes_until_it_is_finished(store: StateStore) -> None:
    now = time.time()
    assert store.enqueue(an_enriching_item(1)) is True
    assert store.enqueue(an_enriching_item(1)) is False        # idempotent like any item
    assert store.get_done("e1") == "enqueued"
    assert store.get_item("msg_e1").status == "enriching"
    assert store.claim_due("w1", now + 3600, 10, 30) == []     # never claimable while enriching
    stats = store.outbox_stats(now + 5)
    assert stats["pending"] == 1 and stats["enriching"] == 1   # counted as pending (a stall is visible)
    assert stats["oldest_pending_age_s"] is not None and stats["oldest_pending_age_s"] >= 4
    assert [item.event_id for item in store.list_items("enriching")] == ["msg_e1"]
    assert store.list_items("pending") == []
    assert store.pending_owners()["targets"] == {"default": 1}

    final = {"event_id": "msg_e1", "delivery_links": [{"r2_url": "https://r2.example/x"}]}
    assert store.finish_enrichment("msg_e1", final, now) is True
    assert store.finish_enrichment("msg_e1", {"other": 1}, now) is False   # finished once: the body is final
    item = store.get_item("msg_e1")
    assert item.status == "pending" and item.payload == final
    assert store.list_items("enriching") == []
    assert store.outbox_stats(now)["enriching"] == 0
    claimed = store.claim_due("w1", now + 1, 10, 30)
    assert [c.event_id for c in claimed] == ["msg_e1"] and claimed[0].payload == final


def test_finishing_enrichment_of_a_pending_or_unknown_item_changes_nothing(store: StateStore) -> None:
    store.enqueue(an_item(2))
    assert store.finish_enrichment("msg_e2", {"replaced": True}, time.time()) is False
    assert store.get_item("msg_e2").payload != {"replaced": True}
    assert store.finish_enrichment("msg_nope", {}, time.time()) is False


def test_a_mailboxs_newest_refresh_token_is_stored_and_replaced_per_mailbox(store: StateStore) -> None:
    assert store.read_refresh_token("studio") is None
    store.write_refresh_token("studio", "rt-1")
    store.write_refresh_token("agency", "rt-a")
    store.write_refresh_token("studio", "rt-2")  # rotated: the newest wins
    assert (store.read_refresh_token("studio"), store.read_refresh_token("agency")) == ("rt-2", "rt-a")


def test_the_refresh_lock_excludes_another_holder_of_the_same_mailbox_until_released(make_store) -> None:
    from services.state_store import StateStoreError

    # Given two stores on the same state (two processes' connections)
    first, second = make_store(), make_store()
    with first.refresh_lock("studio"):
        # Then while one holds the mailbox's lock the other cannot take it (but can take another mailbox's)
        started = time.monotonic()
        with pytest.raises(StateStoreError, match="busy"):
            with second.refresh_lock("studio", wait_seconds=0.3):
                pass
        assert time.monotonic() - started >= 0.15  # it waited for the lock (redis-py polls every 0.1 s)
        with second.refresh_lock("agency", wait_seconds=0.3):
            pass
    # and once it is released the other takes it at once
    with second.refresh_lock("studio", wait_seconds=0.3):
        pass
