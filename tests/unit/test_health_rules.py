"""The health rules of ``background.health``: pure functions of the observer's inputs and the local state."""

from __future__ import annotations

from typing import Any

import pytest

from background.health import (
    DEFAULT_ID,
    OUTBOX_BACKLOG_AGE_SECONDS,
    OUTBOX_BACKLOG_ITEMS,
    PROBLEM_RULES,
    HealthTimings,
    Problem,
    ProblemRule,
    assess,
    cluster_state,
    health_checks,
    lease_held,
    local_poller_state,
    mailbox_stall,
    observed_view,
    outbox_stall,
    outbox_state,
    polling_states,
    problems_of,
    status_of,
)
from settings import Settings

NOW = 1_800_000_000.0
TIMINGS = HealthTimings(publish_ttl=30.0, stale_after=3.0, stall_after=100.0)
HEALTHY_VIEW = {"poller": "polling", "lease": "held", "imap": "ok", "outbox": "ok", "cluster": "ok"}


def view_with(**changes: str) -> dict:
    return {**HEALTHY_VIEW, **changes}


def published(*, last_success: float | None = None, acquired_at: str | None = None,
              published_at: float | None = None, imap: str = "ok") -> dict:
    return {"poller": {"imap": imap, "last_success_epoch": last_success}, "lease": {"acquired_at": acquired_at},
            "published_at": published_at}


# --- timings ----------------------------------------------------------------------------------------------------------

def test_timings_come_from_the_settings_and_the_observe_interval():
    settings = Settings.from_env({})
    timings = HealthTimings.from_settings(settings, observe_interval=1.0)
    assert timings.publish_ttl == settings.redis_lock_ttl_seconds + settings.lease_retry_interval
    assert timings.stale_after == max(3.0, 3 * settings.redis_timeout_seconds)
    assert timings.stall_after == (3 * settings.email_polling_interval_seconds
                                   + 2 * settings.imap_timeout_seconds)


def test_stale_after_is_at_least_three_observe_intervals():
    settings = Settings.from_env({"REDIS_TIMEOUT_SECONDS": "0.1"})
    assert HealthTimings.from_settings(settings, observe_interval=2.0).stale_after == 6.0


# --- outbox -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stats, state", [
    (None, "n/a"),
    ({"pending": 0, "oldest_pending_age_s": None}, "ok"),
    ({"pending": OUTBOX_BACKLOG_ITEMS, "oldest_pending_age_s": 1.0}, "ok"),
    ({"pending": OUTBOX_BACKLOG_ITEMS + 1, "oldest_pending_age_s": 1.0}, "backlog"),
    ({"pending": 1, "oldest_pending_age_s": OUTBOX_BACKLOG_AGE_SECONDS}, "ok"),
    ({"pending": 1, "oldest_pending_age_s": OUTBOX_BACKLOG_AGE_SECONDS + 1}, "backlog"),
], ids=["unread", "empty", "at-item-limit", "over-item-limit", "at-age-limit", "over-age-limit"])
def test_the_outbox_is_a_backlog_over_100_pending_or_an_item_older_than_15_minutes(stats, state):
    assert outbox_state(stats) == state


# --- poller and imap ------------------------------------------------------------------------------------------------

def test_the_holder_reports_its_own_poller_and_imap_state():
    own = {"state": "backoff", "imap": "unreachable"}
    assert polling_states(held=True, own_poller=own, published=published(imap="ok")) == ("backoff", "unreachable")


def test_a_standby_repeats_the_imap_state_the_holder_published():
    own = {"state": "polling", "imap": "ok"}
    assert polling_states(held=False, own_poller=own, published=published(imap="auth_failed")) == (
        "standby", "auth_failed")


def test_a_standby_without_a_published_holder_says_imap_na():
    assert polling_states(held=False, own_poller={"state": "standby", "imap": "n/a"}, published=None) == (
        "standby", "n/a")


# --- cluster --------------------------------------------------------------------------------------------------------

def test_without_a_published_holder_the_cluster_is_ok_until_the_publish_ttl_has_passed():
    assert cluster_state(None, now=NOW, started=NOW - 29, timings=TIMINGS) == "ok"
    assert cluster_state(None, now=NOW, started=NOW - 31, timings=TIMINGS) == "no_poller"


def test_a_published_holder_keeps_the_cluster_ok_however_old_its_last_success():
    # (the one stall rule decides about progress: see the mailbox stall tests below)
    assert cluster_state(published(last_success=NOW - 10_000), now=NOW, started=0, timings=TIMINGS) == "ok"


# --- stalls -----------------------------------------------------------------------------------------------------------

def test_a_holder_whose_last_success_is_older_than_the_stall_limit_has_a_stalled_mailbox():
    assert mailbox_stall(published(last_success=NOW - 99), now=NOW, timings=TIMINGS) is None
    assert "no poller cycle completed for 101 s" == mailbox_stall(published(last_success=NOW - 101), now=NOW,
                                                                  timings=TIMINGS)


def test_a_holder_that_never_succeeded_is_measured_from_when_it_acquired_the_lease():
    recent = published(acquired_at="2027-01-15T08:00:00Z")   # 1_800_000_000 − 0 s
    assert mailbox_stall(recent, now=NOW + 50, timings=TIMINGS) is None
    assert mailbox_stall(recent, now=NOW + 150, timings=TIMINGS) is not None


def test_a_holder_without_success_or_acquisition_is_measured_from_its_publication():
    assert mailbox_stall(published(published_at=NOW - 50), now=NOW, timings=TIMINGS) is None
    assert mailbox_stall(published(published_at=NOW - 150), now=NOW, timings=TIMINGS) is not None


def test_a_holder_with_no_reference_time_at_all_is_not_stalled():
    assert mailbox_stall(published(), now=NOW, timings=TIMINGS) is None


def test_mail_waiting_past_a_checkpoint_that_does_not_move_is_a_stalled_mailbox():
    def doc(waiting: int, moved: float) -> dict:
        return {"poller": {"last_success_epoch": NOW - 1, "waiting": waiting, "checkpoint_moved_epoch": moved}}

    assert mailbox_stall(doc(0, NOW - 10_000), now=NOW, timings=TIMINGS) is None          # nothing waits
    assert mailbox_stall(doc(5, NOW - 50), now=NOW, timings=TIMINGS) is None              # it moves
    assert mailbox_stall(doc(5, NOW - 101), now=NOW, timings=TIMINGS) == (
        "5 emails wait past the checkpoint, which has not moved for 101 s")


def test_an_outbox_whose_oldest_due_item_is_overdue_past_the_limit_is_stalled():
    assert outbox_stall(None, now=NOW) is None
    assert outbox_stall({"oldest_due_at": None}, now=NOW) is None
    assert outbox_stall({"oldest_due_at": NOW - 59, "oldest_due_delay": 0.0}, now=NOW) is None
    assert outbox_stall({"oldest_due_at": NOW - 61, "oldest_due_delay": 0.0}, now=NOW) is not None
    # an item scheduled an hour out may be late by up to two of its delays
    assert outbox_stall({"oldest_due_at": NOW - 3000, "oldest_due_delay": 3600.0}, now=NOW) is None
    assert outbox_stall({"oldest_due_at": NOW - 7201, "oldest_due_delay": 3600.0}, now=NOW) is not None


def test_a_stall_is_a_problem_that_degrades_but_never_takes_the_instance_down():
    view = observed_view(lease_state="held", held=True, own_poller={"state": "polling", "imap": "ok"},
                         published=published(last_success=NOW - 500), stats={"pending": 0}, read_ok=True, now=NOW,
                         last_read_ok=NOW, started=0, timings=TIMINGS)
    health = assess(mode="enabled", threads_dead=False, view=view)
    assert (health.status, health.http_status) == ("degraded", 200)
    assert health.problem_dicts() == [{"kind": "mailbox", "id": "default", "state": "stalled",
                                       "detail": "no poller cycle completed for 500 s"}]
    assert health.checks["cluster"] == "ok"


# --- the observer's view ----------------------------------------------------------------------------------------------

def observe(**overrides) -> dict:
    arguments: dict[str, Any] = {"lease_state": "held", "held": True, "own_poller": {"state": "polling", "imap": "ok"},
                 "published": published(last_success=NOW - 1), "stats": {"pending": 0}, "read_ok": True,
                 "now": NOW, "last_read_ok": NOW, "started": NOW - 1000, "timings": TIMINGS}
    arguments.update(overrides)
    return observed_view(**arguments)


def test_a_healthy_holders_view_has_every_check_ok_and_keeps_what_it_read():
    view = observe()
    assert {key: view[key] for key in HEALTHY_VIEW} == HEALTHY_VIEW
    assert view["published"] == published(last_success=NOW - 1) and view["outbox_stats"] == {"pending": 0}
    assert view["stale"] is False


def test_a_failed_read_is_stale_at_once_but_the_cluster_only_after_stale_after():
    recent = observe(read_ok=False, last_read_ok=NOW - 2)
    assert recent["stale"] is True and recent["cluster"] == "ok"
    old = observe(read_ok=False, last_read_ok=NOW - 4)
    assert old["stale"] is True and old["cluster"] == "stale"


def test_the_view_says_standby_when_no_lease_state_is_known():
    assert observe(lease_state="", held=False)["lease"] == "standby"


# --- checks -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["not_configured", "disabled"])
def test_without_a_background_the_checks_name_the_mode_and_the_status_is_ok(mode):
    health = assess(mode=mode, threads_dead=False, view=None)
    assert health.checks == {"poller": mode, "lease": "n/a", "imap": "n/a", "outbox": "n/a", "cluster": "ok"}
    assert (health.status, health.problems, health.http_status) == ("ok", (), 200)


def test_dead_threads_are_down_with_503_and_say_why():
    health = assess(mode="enabled", threads_dead=True, view=HEALTHY_VIEW)
    assert health.checks == {"poller": "down", "lease": "n/a", "imap": "n/a", "outbox": "n/a", "cluster": "stale"}
    assert health.status == "down" and health.http_status == 503
    assert [(p.kind, p.id, p.state) for p in health.problems] == [
        ("mailbox", DEFAULT_ID, "down"), ("cluster", None, "stale")]


def test_before_the_observer_ran_the_checks_are_a_standbys():
    assert health_checks(mode="enabled", threads_dead=False, view=None) == {
        "poller": "standby", "lease": "standby", "imap": "n/a", "outbox": "n/a", "cluster": "ok"}


def test_the_checks_are_the_views_five_and_nothing_else():
    view = {**HEALTHY_VIEW, "published": {"secret": "x"}, "outbox_stats": {}, "stale": False}
    assert health_checks(mode="enabled", threads_dead=False, view=view) == HEALTHY_VIEW


# --- status and problems ----------------------------------------------------------------------------------------------

def test_a_healthy_view_is_ok_with_no_problems():
    health = assess(mode="enabled", threads_dead=False, view=HEALTHY_VIEW)
    assert (health.status, health.problem_dicts(), health.http_status) == ("ok", [], 200)


@pytest.mark.parametrize("change, problem", [
    ({"imap": "unreachable"}, ("mailbox", DEFAULT_ID, "unreachable")),
    ({"imap": "auth_failed"}, ("mailbox", DEFAULT_ID, "auth_failed")),
    ({"outbox": "backlog"}, ("outbox", None, "backlog")),
    ({"lease": "redis_unreachable"}, ("cluster", None, "redis_unreachable")),
    ({"cluster": "no_poller"}, ("cluster", None, "no_poller")),
    ({"cluster": "stale"}, ("cluster", None, "stale")),
    ({"cluster": "something_new"}, ("cluster", None, "something_new")),
], ids=["imap-unreachable", "imap-auth_failed", "outbox-backlog", "lease-redis_unreachable", "cluster-no_poller",
        "cluster-stale", "cluster-any-other-state"])
def test_each_degraded_state_is_200_degraded_with_one_problem_naming_it(change, problem):
    health = assess(mode="enabled", threads_dead=False, view=view_with(**change))
    assert health.status == "degraded" and health.http_status == 200
    assert [(p.kind, p.id, p.state) for p in health.problems] == [problem]
    assert health.problems[0].detail


@pytest.mark.parametrize("change", [
    {"poller": "standby"}, {"poller": "backoff"}, {"poller": "redis_unavailable"}, {"lease": "standby"},
    {"lease": "lost"}, {"imap": "n/a"}, {"outbox": "n/a"},
], ids=lambda value: "-".join(f"{k}={v}" for k, v in value.items()))
def test_states_that_are_not_problems_stay_ok(change):
    assert assess(mode="enabled", threads_dead=False, view=view_with(**change)).status == "ok"


def test_several_problems_are_all_reported_in_check_order():
    checks = view_with(imap="unreachable", outbox="backlog", lease="redis_unreachable", cluster="stale")
    assert [(p.kind, p.state) for p in problems_of(checks)] == [
        ("cluster", "redis_unreachable"), ("mailbox", "unreachable"), ("outbox", "backlog"), ("cluster", "stale")]
    assert status_of(checks) == "degraded"


def test_only_a_restartable_problem_is_down_whatever_else_is_wrong():
    # The 503 rule: down (so the platform restarts the instance) only when a restart would help.
    everything_else = view_with(imap="auth_failed", outbox="backlog", lease="redis_unreachable", cluster="stale")
    assert status_of(everything_else) == "degraded"
    assert status_of({**everything_else, "poller": "down"}) == "down"
    assert [rule for rule in PROBLEM_RULES if rule.down] == [rule for rule in PROBLEM_RULES if rule.check == "poller"]


def test_a_problem_serialises_with_kind_id_state_and_detail():
    problem = Problem("mailbox", DEFAULT_ID, "unreachable", "the IMAP server cannot be reached")
    assert problem.as_dict() == {"kind": "mailbox", "id": "default", "state": "unreachable",
                                 "detail": "the IMAP server cannot be reached"}


def test_a_new_problem_state_is_one_more_rule():
    # Given one extra row (a state a later issue adds)
    rules = (ProblemRule("outbox", "paused", "target", DEFAULT_ID, "deliveries paused"), *PROBLEM_RULES)
    # Then it is reported and degrades, without touching anything else
    checks = view_with(outbox="paused")
    assert [p.as_dict() for p in problems_of(checks, rules)] == [
        {"kind": "target", "id": DEFAULT_ID, "state": "paused", "detail": "deliveries paused"}]
    assert status_of(checks, rules) == "degraded" and status_of(checks) == "ok"


def test_every_rule_kind_is_a_documented_kind_and_ids_are_valid():
    import re

    for rule in PROBLEM_RULES:
        assert rule.kind in {"mailbox", "target", "outbox", "cluster"}
        assert rule.subject is None or re.fullmatch(r"[a-z0-9-]{1,32}", rule.subject)


# --- the status document's poller rules -------------------------------------------------------------------------------

@pytest.mark.parametrize("poller, lease, expected", [
    ("standby", "redis_unreachable", "redis_unavailable"),
    ("polling", "redis_unreachable", "redis_unavailable"),
    ("polling", "held", "polling"),
    ("standby", None, "standby"),
])
def test_a_worker_that_cannot_reach_redis_says_its_poller_is_redis_unavailable(poller, lease, expected):
    assert local_poller_state(poller, lease) == expected


@pytest.mark.parametrize("document, held", [
    (None, False), ({}, False), ({"lease": {"state": "standby"}}, False), ({"lease": {"state": "held"}}, True),
])
def test_the_lease_is_held_when_a_holder_published_a_held_lease(document, held):
    assert lease_held(document) is held
