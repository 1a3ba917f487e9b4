"""The state store's primitives for the operator console and alerts (issue 20), on both backends: here a real
SQLite file; tests/integration/test_state_store_contract_redis.py imports these tests and runs them on a
redis-server. Paused targets, filtered and atomic replays, the action history, window counters, records with a
compare-and-put, and every item of one email."""

from __future__ import annotations

import threading
import time
from typing import Callable

import pytest

from services.state_store import ACTIONS_KEEP, ACTIONS_TTL_SECONDS, OutboxItem, ParkedEmail, StateStore
from tests.unit.test_state_store_contract import an_item, an_item_for


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def at_once(count: int, call: Callable[[], object]) -> list[object]:
    """``call`` from ``count`` threads released together; their answers."""
    start = threading.Barrier(count)
    answers: list[object] = []
    lock = threading.Lock()

    def run() -> None:
        start.wait(10)
        answer = call()
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(answers) == count
    return answers


def dead_item(store: StateStore, item: OutboxItem, at: float, reason: str = "http_400") -> None:
    store.enqueue(item)
    (claimed,) = [found for found in store.claim_due("w", time.time(), 50, 30) if found.event_id == item.event_id]
    assert store.dead_letter(claimed.event_id, reason, 400, "no", now=at)


# --- paused targets -----------------------------------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_a_paused_target_hands_out_nothing_and_its_items_stay_pending_until_resumed(store: StateStore) -> None:
    # Given one email queued for targets a and b, and target a paused
    now = time.time()
    store.enqueue_all([an_item_for("a", 1), an_item_for("b", 1)])
    assert store.pause_target("a", now) is True
    assert store.pause_target("a", now + 5) is False         # paused already: its time stays
    assert store.paused_targets() == {"a": pytest.approx(now)}
    # When each target's owner claims, and an unfiltered claim runs
    assert store.claim_due("w", now + 1, 10, 30, mailbox_id="default", target_id="a") == []
    assert [item.event_id for item in store.claim_due("w", now + 1, 10, 30)] == ["msg_e1_b"]
    # Then a's item is still pending, with no attempt counted and its retry window not started
    item = store.get_item("msg_e1_a")
    assert (item.status, item.attempts, item.in_flight, item.first_attempt_at) == ("pending", 0, False, None)
    assert store.outbox_stats(now + 1)["pending"] == 2
    # And once resumed it is claimed as any other
    assert store.resume_target("a") is True
    assert store.resume_target("a") is False
    assert store.paused_targets() == {}
    claimed = store.claim_due("w", now + 2, 10, 30, mailbox_id="default", target_id="a")
    assert [item.event_id for item in claimed] == ["msg_e1_a"]


def test_a_pause_is_durable_across_reopening_the_store(make_store) -> None:
    now = time.time()
    first = make_store()
    first.enqueue(an_item_for("a", 1))
    first.pause_target("a", now)
    first.close()
    again = make_store()
    assert again.paused_targets() == {"a": pytest.approx(now)}
    assert again.claim_due("w", now + 1, 10, 30) == []


def test_an_unfiltered_claim_passes_over_due_items_of_a_paused_target(store: StateStore) -> None:
    # Given 30 due items of paused target a queued before one item of target b
    now = time.time()
    store.enqueue_all([an_item_for("a", n) for n in range(30)])
    store.enqueue(an_item_for("b", 99))
    store.pause_target("a", now)
    # When one item is claimed without an owner filter
    claimed = store.claim_due("w", now + 1, 1, 30)
    # Then it is b's; a's stay pending with no attempt
    assert [item.event_id for item in claimed] == ["msg_e99_b"]
    assert store.claim_due("w", now + 1, 5, 30) == []
    assert {item.attempts for item in store.list_items("pending", 100) if item.target_id == "a"} == {0}


# --- replays ------------------------------------------------------------------------------------------------------

def test_replay_takes_only_the_dead_letters_that_died_since_and_of_the_target_asked(store: StateStore) -> None:
    # Given dead letters of targets a and b, dead at 1000, 2000 and 3000 seconds ago
    now = time.time()
    dead_item(store, an_item_for("a", 1), now - 3000)
    dead_item(store, an_item_for("a", 2), now - 2000)
    dead_item(store, an_item_for("b", 3), now - 2000)
    dead_item(store, an_item_for("b", 4), now - 1000)
    # When replaying those since 2500 s ago of target a, then since 2000 s ago (any target)
    assert store.replay(since=now - 2500, target_id="a", now=now) == 1
    assert store.get_item("msg_e2_a").status == "pending"
    assert store.get_item("msg_e1_a").status == "dead"
    assert store.replay(since=now - 2000, now=now) == 2       # exactly at ``since`` counts
    # Then the oldest is still dead, and a filter that does not match one event id leaves it so
    assert store.replay("msg_e1_a", now=now, target_id="b") == 0
    assert store.replay("msg_e1_a", now=now, since=now - 10) == 0
    assert store.get_item("msg_e1_a").status == "dead"
    assert store.replay(target_id="a", now=now) == 1           # the existing forms still work
    assert store.replay(now=now) == 0
    assert [item.status for item in store.items_for_email("e1")] == ["pending"]


@pytest.mark.timeout(30)
def test_concurrent_replays_of_one_dead_letter_count_it_once(store: StateStore) -> None:
    # Given one dead letter
    now = time.time()
    dead_item(store, an_item(1), now - 10)
    # When eight threads replay it at the same moment
    answers = at_once(8, lambda: store.replay("msg_e1", now=now))
    # Then exactly one replay counts it, and it is claimable once
    assert sorted(answers) == [0] * 7 + [1]
    assert [item.event_id for item in store.claim_due("w", now + 1, 10, 30)] == ["msg_e1"]
    assert store.claim_due("w", now + 1, 10, 30) == []


def test_request_replay_since_takes_the_emails_parked_since(store: StateStore) -> None:
    now = time.time()
    for n, age in ((1, 3000), (2, 2000), (3, 1000)):
        store.park(ParkedEmail(parked_id=f"default:5:{n}", mailbox_id="default", mailbox="INBOX", uidvalidity=5,
                               uid=n, reason="parse_failed", parked_at=now - age))
    assert store.request_replay(since=now - 2000, now=now) == 2
    requested = {p.parked_id for p in store.list_parked(10) if p.replay_requested_at is not None}
    assert requested == {"default:5:2", "default:5:3"}
    assert store.request_replay("default:5:1", now=now, since=now - 10) == 0
    assert store.request_replay("default:5:1", now=now) == 1
    assert store.request_replay(now=now) == 3


# --- operator actions ---------------------------------------------------------------------------------------------

def test_actions_are_listed_newest_first_and_bounded_in_number_and_age(store: StateStore) -> None:
    now = time.time()
    store.record_action({"action": "pause", "subject": {"target": "a"}, "at": "old"}, now - ACTIONS_TTL_SECONDS - 60)
    for n in range(ACTIONS_KEEP + 5):
        store.record_action({"action": "replay", "subject": {"event_id": f"msg_{n}"}, "token": "admin_token",
                             "client": "127.0.0.1", "at": n, "result": {"count": 1}}, now)
    assert [entry["at"] for entry in store.actions(3)] == [ACTIONS_KEEP + 4, ACTIONS_KEEP + 3, ACTIONS_KEEP + 2]
    assert store.actions(1)[0] == {"action": "replay", "subject": {"event_id": f"msg_{ACTIONS_KEEP + 4}"},
                                   "token": "admin_token", "client": "127.0.0.1", "at": ACTIONS_KEEP + 4,
                                   "result": {"count": 1}}
    everything = store.actions(ACTIONS_KEEP * 2)
    assert len(everything) == ACTIONS_KEEP
    assert everything[-1]["at"] == 5                  # the oldest beyond the bound dropped
    assert store.actions(0) == []


def test_an_action_older_than_thirty_days_is_not_listed(store: StateStore) -> None:
    now = time.time()
    store.record_action({"action": "old"}, now - ACTIONS_TTL_SECONDS - 1)
    store.record_action({"action": "new"}, now)
    assert store.actions() == [{"action": "new"}]


# --- fixed-window counters ----------------------------------------------------------------------------------------

def test_hits_are_counted_per_key_and_fixed_window(store: StateStore) -> None:
    window_start = (int(time.time()) // 60) * 60.0
    assert [store.hit("login:1.2.3.4", 60, window_start + n) for n in range(3)] == [1, 2, 3]
    assert store.hit("login:5.6.7.8", 60, window_start + 1) == 1
    assert store.hit("login:1.2.3.4", 3600, window_start + 1) == 1      # another window size, its own count
    assert store.hit("login:1.2.3.4", 60, window_start + 60) == 1       # the next window starts again
    with pytest.raises(ValueError):
        store.hit("x", 0, window_start)


@pytest.mark.timeout(30)
def test_concurrent_hits_are_each_counted(store: StateStore) -> None:
    now = time.time()
    answers = at_once(8, lambda: store.hit("alerts:dead_letter", 3600, now))
    assert sorted(answers) == list(range(1, 9))


# --- records --------------------------------------------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_records_are_kept_per_namespace_for_their_ttl(store: StateStore) -> None:
    assert store.get_record("streak", "target:a") is None
    store.put_record("streak", "target:a", {"since": 1.5, "count": 2}, 60)
    store.put_record("other", "target:a", {"x": 1}, 0.3)
    assert store.get_record("streak", "target:a") == {"since": 1.5, "count": 2}
    time.sleep(0.5)
    assert store.get_record("other", "target:a") is None
    assert store.get_record("streak", "target:a") == {"since": 1.5, "count": 2}
    with pytest.raises(ValueError):
        store.get_record("a:b", "k")


def test_compare_and_put_writes_only_over_the_expected_record(store: StateStore) -> None:
    assert store.compare_and_put_record("streak", "k", None, {"n": 1}, 60) is True       # absent, as expected
    assert store.compare_and_put_record("streak", "k", None, {"n": 9}, 60) is False      # present now
    assert store.compare_and_put_record("streak", "k", {"n": 2}, {"n": 9}, 60) is False
    assert store.compare_and_put_record("streak", "k", {"n": 1}, {"n": 2}, 60) is True
    assert store.get_record("streak", "k") == {"n": 2}


@pytest.mark.timeout(30)
def test_of_concurrent_compare_and_puts_over_one_record_exactly_one_wins(store: StateStore) -> None:
    store.put_record("streak", "k", {"n": 0}, 60)
    counter = iter(range(100))
    answers = at_once(8, lambda: store.compare_and_put_record("streak", "k", {"n": 0}, {"n": next(counter) + 1}, 60))
    assert sorted(answers) == [False] * 7 + [True]
    assert store.get_record("streak", "k") != {"n": 0}


# --- every item of one email ----------------------------------------------------------------------------------------

def test_items_for_email_gives_every_item_of_the_email_in_any_status(store: StateStore) -> None:
    # Given one email fanned out to three targets: one delivered, one dead, one pending (and another email)
    now = time.time()
    store.enqueue_all([an_item_for(target, 1) for target in ("c", "a", "b")])
    store.enqueue(an_item_for("a", 2))
    for item in store.claim_due("w", now, 10, 30):
        if item.event_id == "msg_e1_a":
            store.mark_delivered(item.event_id, 200, now, attempt={"at": now, "status": 200})
        elif item.event_id == "msg_e1_b":
            store.dead_letter(item.event_id, "http_410", 410, "gone", now=now)
    # When every item of the email is asked for
    items = store.items_for_email("e1")
    # Then all three come, by target, each with its status and attempt log
    assert [(item.target_id, item.status) for item in items] == [("a", "delivered"), ("b", "dead"), ("c", "pending")]
    assert items[0].attempt_log == [{"at": now, "status": 200}]
    assert store.items_for_email("e404") == []
    # And a replayed item is still one of them
    store.replay("msg_e1_b", now=now)
    assert [item.status for item in store.items_for_email("e1")] == ["delivered", "pending", "pending"]


def test_a_closed_sqlite_store_raises_state_store_error_from_every_operator_primitive(tmp_path) -> None:
    from services.state_store import StateStoreError
    from services.state_store_sqlite import SqliteStateStore

    store = SqliteStateStore(str(tmp_path / "state.sqlite3"), retention_seconds=3600)
    store.close()
    calls: list[Callable[[], object]] = [
        lambda: store.pause_target("a", 1.0), lambda: store.resume_target("a"), store.paused_targets,
        lambda: store.record_action({}, 1.0), store.actions, lambda: store.hit("k", 60, 1.0),
        lambda: store.get_record("n", "k"), lambda: store.put_record("n", "k", {}, 60),
        lambda: store.compare_and_put_record("n", "k", None, {}, 60), lambda: store.items_for_email("e1"),
        lambda: store.replay(since=1.0, target_id="a"), lambda: store.request_replay(since=1.0)]
    for call in calls:
        with pytest.raises(StateStoreError):
            call()
