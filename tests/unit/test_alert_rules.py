"""The operational alerts' rule core (``background.alerts.step``) against a fake clock: first event at once, at most
one summary per streak per 15 minutes and only when the count changed, one recovered after the condition has been
gone a while, each kind capped per hour; and what the evaluator reads from the observer's view."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from background.alerts import (
    DEAD_LETTERS_RISING,
    RECOVER_AFTER_SECONDS,
    SUMMARY_INTERVAL_SECONDS,
    AlertKind,
    AlertState,
    Condition,
    Rules,
    mailbox_conditions,
    state_from_record,
    state_record,
    step,
    target_conditions,
    view_is_usable,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"
T0 = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def allow_all(kind: str) -> bool:
    return True


def stalled(count: int = 1, mailbox: str = "default") -> Condition:
    return Condition(AlertKind.MAILBOX_STALLED, "mailbox", mailbox, {"reason": "no cycle"}, count=count)


def run(state: AlertState, conditions: list[Condition], now: float, allow=allow_all):
    # Through the stored form every round, as the evaluator does: what the core keeps must survive JSON.
    record = json.loads(json.dumps(state_record(state, {})))
    restored, _ = state_from_record(record)
    return step(restored, conditions, now, allow)


def test_the_first_event_of_a_streak_is_sent_at_once_with_count_and_subject():
    # Given no open streak, When a mailbox is seen stalled
    state, events = run(AlertState(), [stalled(count=4)], T0)
    # Then one event goes out now
    assert [event.kind for event in events] == ["mailbox_stalled"]
    body = events[0].body()
    assert body["subject"] == {"mailbox": "default"} and body["count"] == 4
    assert body["at"] == "2027-01-15T08:00:00Z" and body["event_id"].startswith("ops_mailbox_stalled_")
    assert set(body) == {"event_id", "kind", "subject", "at", "detail", "count"}


def test_a_lasting_condition_sends_nothing_more_until_fifteen_minutes_passed_and_its_count_changed():
    clock = Clock()
    state, _ = run(AlertState(), [stalled(count=1)], clock.now)
    # The count changes within 15 minutes: no summary yet
    for _ in range(59):
        state, events = run(state, [stalled(count=2)], clock.advance(15))
        assert events == []
    # At 15 minutes one summary with the new count
    state, events = run(state, [stalled(count=2)], clock.advance(15))
    assert [(event.kind, event.count, event.detail["summary"]) for event in events] == [("mailbox_stalled", 2, True)]
    # Unchanged afterwards: no summary however long it lasts
    for _ in range(200):
        state, events = run(state, [stalled(count=2)], clock.advance(15))
        assert events == []


def test_summaries_of_one_streak_have_distinct_ids_and_each_is_sent_once():
    clock = Clock()
    state, first = run(AlertState(), [stalled(count=1)], clock.now)
    ids = [first[0].event_id]
    for count in (2, 3):
        state, events = run(state, [stalled(count=count)], clock.advance(SUMMARY_INTERVAL_SECONDS))
        ids += [event.event_id for event in events]
    assert len(ids) == len(set(ids)) == 3


def test_recovered_is_sent_once_after_the_condition_is_gone_for_a_while():
    clock = Clock()
    state, first = run(AlertState(), [stalled()], clock.now)
    # Gone, but not for long enough: nothing (a flap is not a recovery)
    state, events = run(state, [], clock.advance(RECOVER_AFTER_SECONDS / 2))
    assert events == []
    state, events = run(state, [], clock.advance(RECOVER_AFTER_SECONDS))
    assert [(event.kind, event.subject_id) for event in events] == [("recovered", "default")]
    assert events[0].detail["recovered_kind"] == "mailbox_stalled"
    assert events[0].event_id == first[0].event_id[:-1] + "r"
    # Then nothing more
    for _ in range(10):
        state, events = run(state, [], clock.advance(60))
        assert events == []


def test_a_condition_back_within_the_grace_continues_its_streak_without_a_new_first_event():
    clock = Clock()
    state, _ = run(AlertState(), [stalled()], clock.now)
    state, _ = run(state, [], clock.advance(15))
    state, events = run(state, [stalled()], clock.advance(15))
    assert events == []


def test_a_new_streak_after_a_recovery_gets_new_event_ids():
    clock = Clock()
    state, first = run(AlertState(), [stalled()], clock.now)
    state, _ = run(state, [], clock.advance(1))
    state, recovered = run(state, [], clock.advance(RECOVER_AFTER_SECONDS))
    state, again = run(state, [stalled()], clock.advance(600))
    assert [event.kind for event in again] == ["mailbox_stalled"]
    assert again[0].event_id != first[0].event_id


def test_an_origin_token_makes_the_ids_independent_of_the_stored_numbers():
    # Two evaluators that know nothing of each other name the same dead letter alike: the outbox keeps one.
    condition = Condition(AlertKind.DEAD_LETTER, "email", "e1", {"event_ids": ["msg_e1"]}, origin="1800000000.000")
    _, one = step(AlertState(), [condition], T0, allow_all)
    _, other = step(AlertState(numbers={condition.key: 7}), [condition], T0 + 5, allow_all)
    assert one[0].event_id == other[0].event_id


def test_each_kind_is_capped_and_a_capped_first_event_goes_out_once_the_cap_allows():
    clock = Clock()
    budget = {"dead_letter": 2}

    def allow(kind: str) -> bool:
        budget[kind] = budget.get(kind, 0) - 1
        return budget[kind] >= 0

    conditions = [Condition(AlertKind.DEAD_LETTER, "email", f"e{n}", origin=str(n)) for n in range(3)]
    state, events = run(AlertState(), conditions, clock.now, allow)
    assert len(events) == 2
    # Capped while the budget is spent …
    state, events = run(state, conditions, clock.advance(15), allow)
    assert events == []
    # … and sent (once) when the next hour gives a new one
    budget["dead_letter"] = 5
    state, events = run(state, conditions, clock.advance(3600), allow)
    assert len(events) == 1 and events[0].detail["summary"] is False
    state, events = run(state, conditions, clock.advance(15), allow)
    assert events == []


def test_a_streak_that_sent_nothing_ends_without_a_recovered():
    def refuse(kind: str) -> bool:
        return False

    state, events = run(AlertState(), [stalled()], T0, refuse)
    assert events == []
    state, events = run(state, [], T0 + 1, allow_all)
    state, events = run(state, [], T0 + 1 + RECOVER_AFTER_SECONDS, allow_all)
    assert events == [] and not state.streaks


def test_custom_rules_change_the_summary_interval():
    rules = Rules(summary_seconds=60, recover_after_seconds=0)
    state, _ = step(AlertState(), [stalled(1)], T0, allow_all, rules)
    state, events = step(state, [stalled(2)], T0 + 60, allow_all, rules)
    assert [event.count for event in events] == [2]
    state, events = step(state, [], T0 + 61, allow_all, rules)
    assert [event.kind for event in events] == ["recovered"]


# --- what the evaluator reads from the observer's view --------------------------------------------------------------

def view(**changes) -> dict:
    base = {"stalls": [], "stale": False, "cluster": "ok", "published": {"poller": {"imap": "ok"}},
            "mailbox_statuses": {}, "target_stats": {}}
    return {**base, **changes}


def test_a_stale_or_placeholder_view_is_not_evaluated():
    assert view_is_usable(view())
    assert not view_is_usable(view(stale=True))
    assert not view_is_usable(view(cluster="stale"))
    assert not view_is_usable({"poller": "standby"})  # the observer's start-up placeholder has no stalls
    assert not view_is_usable(None)


def test_reauth_required_and_stalled_mailboxes_are_read_from_the_published_statuses_and_stalls():
    seen = view(published={"poller": {"imap": "reauth_required"}},
                mailbox_statuses={"two": {"poller": {"imap": "ok", "waiting": 7}}},
                stalls=[{"kind": "mailbox", "id": "two", "state": "stalled", "detail": "7 emails wait"},
                        {"kind": "outbox", "id": None, "state": "stalled", "detail": "x"}])
    found = {(c.kind, c.subject_id, c.count) for c in mailbox_conditions(seen, "default")}
    assert found == {("reauth_required", "default", 1), ("mailbox_stalled", "two", 7)}


def test_a_target_fails_when_its_circuit_is_open_but_never_the_ops_target():
    seen = view(stalls=[{"kind": "target", "id": "default", "state": "circuit_open", "detail": ""},
                        {"kind": "target", "id": "ops", "state": "circuit_open", "detail": ""}])
    found = target_conditions(seen, {}, T0, ("default", "ops"), {})
    assert [(c.kind, c.subject_id, c.detail["circuit_open"]) for c in found] == [("target_failing", "default", True)]


def test_a_target_fails_when_its_dead_letters_rise_and_the_dead_letters_before_the_first_round_do_not_count():
    memory: dict = {}
    # Given 50 old dead letters at the first round: a baseline, not a rise
    assert target_conditions(view(target_stats={"default": {"dead": 50}}), memory, T0, ("default",), {}) == []
    # When fewer than the threshold arrive: not failing yet
    rises = view(target_stats={"default": {"dead": 50 + DEAD_LETTERS_RISING - 1}})
    assert target_conditions(rises, memory, T0 + 15, ("default",), {}) == []
    # Then one more within the window makes it failing, counting the recent ones
    rises = view(target_stats={"default": {"dead": 50 + DEAD_LETTERS_RISING}})
    found = target_conditions(rises, memory, T0 + 30, ("default",), {})
    assert [(c.subject_id, c.count) for c in found] == [("default", DEAD_LETTERS_RISING)]
    # And once the window has passed without a new one, it is no longer failing
    assert target_conditions(rises, memory, T0 + 30 + 901, ("default",), {}) == []


# --- the documented body --------------------------------------------------------------------------------------------

def test_every_event_body_matches_the_published_schema_and_the_example_does_too():
    schema = json.loads((DOCS / "ops-event.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    validator.validate(json.loads((DOCS / "ops-event.example.json").read_text()))
    clock = Clock()
    state, events = run(AlertState(), [stalled(), Condition(AlertKind.DEAD_LETTER, "email", "e1", origin="1")],
                        clock.now)
    state, more = run(state, [], clock.advance(RECOVER_AFTER_SECONDS + 1))
    for event in events + more:
        validator.validate(event.body())
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**events[0].body(), "subject": {"mailbox": "a", "target": "b"}})
