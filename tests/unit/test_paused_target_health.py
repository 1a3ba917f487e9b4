"""A target an operator paused (issue 20) is not failing: its waiting items are neither a target stall, nor an
outbox stall, nor a backlog; a circuit left open before the pause is no problem either (the health rules, pure)."""

from __future__ import annotations

from background.health import HealthTimings, observed_view, outbox_state, target_problems, without_paused

NOW = 10_000.0
TIMINGS = HealthTimings(publish_ttl=30.0, stale_after=3.0, stall_after=100.0)


def entry(pending: int, age: float | None, due_at: float | None, delay: float = 0.0) -> dict:
    return {"pending": pending, "held": 0, "dead": 0, "oldest_pending_age_s": age, "oldest_due_at": due_at,
            "oldest_due_delay": None if due_at is None else delay}


TARGETS = {"make": entry(150, 3600.0, NOW - 600), "archive": entry(3, 20.0, NOW - 5, 2.0)}
STATS = {"pending": 153, "oldest_pending_age_s": 3600.0, "oldest_due_at": NOW - 600, "oldest_due_delay": 0.0,
         "dead": 0, "dead_recent": []}


def view(paused: dict[str, float] | None) -> dict:
    published = {"lease": {"state": "held"}, "poller": {"last_success_epoch": NOW - 1}, "published_at": NOW - 1,
                 "circuits": {"make": "open"}}
    return observed_view(lease_state="standby", held=False, own_poller={"state": "standby", "imap": "n/a"},
                         published=published, stats=STATS, read_ok=True, now=NOW, last_read_ok=NOW,
                         started=NOW - 1000, timings=TIMINGS, target_stats=TARGETS, targets=("make", "archive"),
                         paused_targets=paused)


def test_a_paused_targets_waiting_items_are_neither_a_stall_nor_a_backlog_nor_an_open_circuit() -> None:
    running = view(None)
    assert running["outbox"] == "backlog"
    assert {(s["kind"], s["id"], s["state"]) for s in running["stalls"]} == {
        ("outbox", None, "stalled"), ("target", "make", "stalled"), ("target", "make", "circuit_open")}
    paused = view({"make": NOW - 700})
    assert (paused["outbox"], paused["stalls"]) == ("ok", [])
    assert paused["paused_targets"] == {"make": NOW - 700}


def test_the_outbox_figures_without_paused_targets_come_from_the_other_targets() -> None:
    figures = without_paused(STATS, TARGETS, {"make": 1.0})
    assert (figures["pending"], figures["oldest_pending_age_s"], figures["oldest_due_at"],
            figures["oldest_due_delay"]) == (3, 20.0, NOW - 5, 2.0)
    assert outbox_state(figures) == "ok"
    assert without_paused(STATS, TARGETS, {}) is STATS
    assert without_paused(STATS, None, {"make": 1.0}) is STATS      # no per-target figures: judged as a whole
    everything = without_paused(STATS, TARGETS, {"make": 1.0, "archive": 2.0})
    assert (everything["pending"], everything["oldest_pending_age_s"], everything["oldest_due_at"]) == (0, None, None)


def test_target_problems_skip_a_paused_target_only() -> None:
    problems = target_problems(("make", "archive"), {"make": entry(1, 600.0, NOW - 600),
                                                     "archive": entry(1, 600.0, NOW - 600)},
                               {"make": "open"}, now=NOW, paused={"make": NOW - 700})
    assert [(p["id"], p["state"]) for p in problems] == [("archive", "stalled")]
