"""The alerts' evaluator on an in-memory store (the real stores and a real receiver: tests/integration/
test_ops_alerts.py): what it enqueues as target ops, that two evaluators racing over one state enqueue the same
ids (the outbox keeps one), and that the ops target's own items never raise alerts."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

from background.alerts import STATE_KEY, STATE_NAMESPACE, AlertEvaluator, Rules
from services.state_store import OutboxItem, ParkedEmail

T0 = 1_800_000_000.0


class MemoryStore:
    """The few store verbs the evaluator uses, with the contract's semantics (enqueue idempotent by event id,
    compare-and-put atomic on the whole value, fixed-window hits)."""

    def __init__(self) -> None:
        self.items: dict[str, OutboxItem] = {}
        self.parked: dict[str, ParkedEmail] = {}
        self.records: dict[tuple[str, str], dict] = {}
        self.hits: dict[tuple[str, int], int] = {}

    def enqueue(self, item: OutboxItem) -> bool:
        if item.event_id in self.items:
            return False
        self.items[item.event_id] = item
        return True

    def get_item(self, event_id: str) -> OutboxItem | None:
        return self.items.get(event_id)

    def list_items(self, status: str, limit: int = 100) -> list[OutboxItem]:
        found = [item for item in self.items.values() if item.status == status]
        return sorted(found, key=lambda item: item.dead_at or 0.0, reverse=True)[:limit]

    def list_parked(self, limit: int = 20) -> list[ParkedEmail]:
        return sorted(self.parked.values(), key=lambda entry: entry.parked_at, reverse=True)[:limit]

    def get_parked(self, parked_id: str) -> ParkedEmail | None:
        return self.parked.get(parked_id)

    def get_record(self, namespace: str, key: str) -> dict | None:
        record = self.records.get((namespace, key))
        return copy.deepcopy(record)

    def compare_and_put_record(self, namespace, key, expected, record, ttl_seconds) -> bool:
        if self.records.get((namespace, key)) != expected:
            return False
        self.records[(namespace, key)] = json.loads(json.dumps(record))
        return True

    def hit(self, key: str, window_seconds: float, now: float) -> int:
        slot = (key, int(now // window_seconds))
        self.hits[slot] = self.hits.get(slot, 0) + 1
        return self.hits[slot]

    def ops_bodies(self) -> list[dict]:
        """The alerts enqueued (an ops item a test planted as a dead letter is not one)."""
        return [item.payload for item in self.items.values() if item.target_id == "ops" and item.status != "dead"]


def healthy_view() -> dict:
    return {"stalls": [], "stale": False, "cluster": "ok", "published": {"poller": {"imap": "ok"}},
            "mailbox_statuses": {}, "target_stats": {}}


def dead_item(event_id: str, email_id: str, dead_at: float, target_id: str = "default") -> OutboxItem:
    return OutboxItem(event_id=event_id, email_id=email_id, payload={}, mailbox="INBOX", uidvalidity=1, uid=1,
                      message_id=None, status="dead", dead_at=dead_at, dead_reason="http_400", target_id=target_id)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def evaluator(store: MemoryStore, clock: Clock, view=healthy_view, **kwargs) -> AlertEvaluator:
    return AlertEvaluator(store, mailbox_id="default", view=view, target_ids=("default",), clock=clock,
                          rules=Rules(summary_seconds=900, recover_after_seconds=30), **kwargs)


def test_a_new_dead_letter_is_enqueued_once_as_an_ops_item_and_its_delivery_after_a_replay_as_one_recovered():
    store, clock = MemoryStore(), Clock()
    alerts = evaluator(store, clock)
    store.items["msg_e1"] = dead_item("msg_e1", "e1", T0 - 5)
    for _ in range(5):
        alerts.evaluate_once()
        clock.now += 15
    bodies = store.ops_bodies()
    assert [(body["kind"], body["subject"]) for body in bodies] == [("dead_letter", {"email": "e1"})]
    item = store.items[bodies[0]["event_id"]]
    assert (item.target_id, item.mailbox_id, item.uid, item.status) == ("ops", "default", 0, "pending")
    # While a replay has it pending, it has not recovered yet
    store.items["msg_e1"] = replace(store.items["msg_e1"], status="pending", dead_at=None)
    for _ in range(6):
        alerts.evaluate_once()
        clock.now += 15
    assert [body["kind"] for body in store.ops_bodies()] == ["dead_letter"]
    # When it is delivered, one recovered follows (once the grace has passed)
    store.items["msg_e1"] = replace(store.items["msg_e1"], status="delivered")
    for _ in range(6):
        alerts.evaluate_once()
        clock.now += 15
    assert [body["kind"] for body in store.ops_bodies()] == ["dead_letter", "recovered"]


def test_dead_letters_and_parked_emails_older_than_an_hour_at_start_raise_nothing():
    store, clock = MemoryStore(), Clock()
    store.items["msg_old"] = dead_item("msg_old", "old", T0 - 7200)
    store.parked["default:1:9"] = ParkedEmail("default:1:9", "default", "INBOX", 1, 9, "fetch_failed",
                                              parked_at=T0 - 7200)
    evaluator(store, clock).evaluate_once()
    assert store.ops_bodies() == []


def test_a_parked_email_is_announced_with_its_parked_id_and_recovers_when_unparked():
    store, clock = MemoryStore(), Clock()
    alerts = evaluator(store, clock)
    store.parked["default:1:9"] = ParkedEmail("default:1:9", "default", "INBOX", 1, 9, "pipeline_error",
                                              email_id="e9", parked_at=T0 - 1)
    alerts.evaluate_once()
    body = store.ops_bodies()[0]
    assert (body["kind"], body["subject"], body["detail"]["parked_id"]) == ("email_parked", {"email": "e9"},
                                                                           "default:1:9")
    del store.parked["default:1:9"]
    for _ in range(4):
        clock.now += 15
        alerts.evaluate_once()
    assert [body["kind"] for body in store.ops_bodies()] == ["email_parked", "recovered"]


def test_the_ops_targets_own_dead_letters_and_circuit_raise_no_alert():
    store, clock = MemoryStore(), Clock()

    def view() -> dict:
        return {**healthy_view(), "stalls": [{"kind": "target", "id": "ops", "state": "circuit_open", "detail": ""}],
                "target_stats": {"ops": {"dead": 10}}}

    store.items["ops_x"] = dead_item("ops_x", "ops_x", T0 - 1, target_id="ops")
    alerts = AlertEvaluator(store, mailbox_id="default", view=view, target_ids=("default", "ops"), clock=clock)
    for _ in range(3):
        alerts.evaluate_once()
        clock.now += 15
    assert store.ops_bodies() == []


def test_two_evaluators_racing_over_one_state_enqueue_the_same_ids_and_only_one_round_is_kept():
    store, clock = MemoryStore(), Clock()
    store.items["msg_e1"] = dead_item("msg_e1", "e1", T0 - 1)
    first, second = evaluator(store, clock), evaluator(store, clock)
    # Both read the same (empty) state before either writes: the second's write is refused …
    original_get = store.get_record
    snapshot = original_get(STATE_NAMESPACE, STATE_KEY)
    store.get_record = lambda namespace, key: copy.deepcopy(snapshot)  # type: ignore[method-assign]
    events_one = first.evaluate_once()
    clock.now += 1
    events_two = second.evaluate_once()
    store.get_record = original_get  # type: ignore[method-assign]
    # … and they named the event alike, so the outbox holds it once
    assert [event.event_id for event in events_one] == [event.event_id for event in events_two]
    assert len(store.ops_bodies()) == 1
    # The next rounds, from the winner's state, send nothing more
    for _ in range(3):
        clock.now += 15
        second.evaluate_once()
    assert len(store.ops_bodies()) == 1


def test_an_unusable_view_evaluates_nothing_and_keeps_the_streaks_open():
    store, clock = MemoryStore(), Clock()
    stalled = {**healthy_view(), "stalls": [{"kind": "mailbox", "id": "default", "state": "stalled", "detail": "x"}]}
    views = [stalled]
    alerts = evaluator(store, clock, view=lambda: views[-1])
    alerts.evaluate_once()
    views.append({**stalled, "stalls": [], "stale": True})  # the store cannot be read: not a recovery
    for _ in range(10):
        clock.now += 15
        assert alerts.evaluate_once() == []
    assert [body["kind"] for body in store.ops_bodies()] == ["mailbox_stalled"]


def test_the_hourly_cap_holds_back_a_flood_of_dead_letters():
    store, clock = MemoryStore(), Clock()
    for n in range(30):
        store.items[f"msg_e{n}"] = dead_item(f"msg_e{n}", f"e{n}", T0 - 1 - n)
    evaluator(store, clock, hourly_cap=5).evaluate_once()
    assert len(store.ops_bodies()) == 5
