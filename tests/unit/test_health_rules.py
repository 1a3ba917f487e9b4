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
    circuit_states,
    cluster_state,
    health_checks,
    lease_held,
    local_poller_state,
    mailbox_stall,
    observed_view,
    other_mailbox_problems,
    outbox_stall,
    outbox_state,
    polling_states,
    problems_of,
    status_of,
    target_problems,
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
    ({"imap": "no_server_done_mark"}, ("mailbox", DEFAULT_ID, "no_server_done_mark")),
    ({"imap": "reauth_required"}, ("mailbox", DEFAULT_ID, "reauth_required")),
    ({"outbox": "backlog"}, ("outbox", None, "backlog")),
    ({"lease": "redis_unreachable"}, ("cluster", None, "redis_unreachable")),
    ({"cluster": "no_poller"}, ("cluster", None, "no_poller")),
    ({"cluster": "stale"}, ("cluster", None, "stale")),
    ({"cluster": "something_new"}, ("cluster", None, "something_new")),
], ids=["imap-unreachable", "imap-auth_failed", "imap-no_server_done_mark", "imap-reauth_required", "outbox-backlog",
        "lease-redis_unreachable", "cluster-no_poller",
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


# --- each mailbox's own stall limit -----------------------------------------------------------------------------------

def mailbox(mailbox_id: str, *, poll: float, timeout: float):
    from config import MailboxConfig, PasswordCredentials

    return MailboxConfig(id=mailbox_id, server="imap.test", user="u", credentials=PasswordCredentials("p"),
                         poll_interval_seconds=poll, timeout_seconds=timeout)


# The first mailbox polls every 10 s (stalled after 3 × 10 + 2 × 5 = 40 s), the second every 300 s (3 × 300 + 2 × 30
# = 960 s), the third every 10 s too.
FAST, SLOW, FAST_TOO = (mailbox("fast", poll=10, timeout=5), mailbox("slow", poll=300, timeout=30),
                        mailbox("fast-too", poll=10, timeout=5))
PER_MAILBOX = TIMINGS.for_mailboxes([FAST, SLOW, FAST_TOO])


def test_each_mailboxs_stall_limit_is_three_poll_intervals_and_two_imap_timeouts_of_its_own():
    assert PER_MAILBOX.stall_after_for("fast") == 40.0
    assert PER_MAILBOX.stall_after_for("slow") == 960.0
    assert PER_MAILBOX.stall_after_for("not-configured") == TIMINGS.stall_after


def test_a_slow_polling_mailbox_is_not_stalled_at_the_first_mailboxs_limit_and_a_fast_one_is():
    # Given every holder's last completed cycle 500 s ago: far past the fast mailboxes' 40 s, within the slow one's
    statuses = {"slow": published(last_success=NOW - 500), "fast-too": published(last_success=NOW - 500)}
    # When the observer's view is made
    view = observe(timings=PER_MAILBOX, first_mailbox="fast", published=published(last_success=NOW - 500),
                   other_mailboxes=("slow", "fast-too"), mailbox_statuses=statuses)
    # Then the two fast mailboxes are stalled and the slow one is not
    assert [(p["kind"], p["id"], p["state"]) for p in view["stalls"]] == [
        ("mailbox", "fast", "stalled"), ("mailbox", "fast-too", "stalled")]


def test_the_first_mailbox_is_stalled_by_its_own_limit_not_the_global_one():
    # Given a slow first mailbox (960 s) whose last cycle completed 500 s ago, past the global limit (100 s)
    view = observe(timings=TIMINGS.for_mailboxes([SLOW]), first_mailbox="slow",
                   published=published(last_success=NOW - 500))
    assert view["stalls"] == []
    # And a fast first mailbox (40 s) is stalled at 41 s, long before the global limit
    view = observe(timings=TIMINGS.for_mailboxes([FAST]), first_mailbox="fast",
                   published=published(last_success=NOW - 41))
    assert [(p["id"], p["state"]) for p in view["stalls"]] == [("fast", "stalled")]


@pytest.mark.parametrize("env", [{}, {"EMAIL_POLLING_INTERVAL_SECONDS": "7", "IMAP_TIMEOUT_SECONDS": "11"}],
                         ids=["defaults", "custom"])
def test_the_environment_forms_mailbox_keeps_the_global_stall_limit(env):
    from config import MailboxConfig

    settings = Settings.from_env(env)
    timings = HealthTimings.from_settings(settings, observe_interval=1.0)
    mailbox_default = MailboxConfig.from_settings(settings)
    assert timings.for_mailboxes([mailbox_default]).stall_after_for(DEFAULT_ID) == timings.stall_after
    assert timings.stall_after == 3 * settings.email_polling_interval_seconds + 2 * settings.imap_timeout_seconds


# --- targets: stalls and circuits -------------------------------------------------------------------------------------

def due(overdue: float, delay: float = 0.0, **extra: Any) -> dict:
    return {"pending": 1, "held": 0, "dead": 0, "oldest_pending_age_s": overdue, "oldest_due_at": NOW - overdue,
            "oldest_due_delay": delay, **extra}


def test_a_target_whose_oldest_due_item_is_overdue_past_the_outbox_limit_is_stalled_under_its_own_id():
    stats = {"make": due(61), "archive": due(59), "slow": due(3000, delay=3600.0), "late": due(7201, delay=3600.0)}
    problems = target_problems(("make", "archive", "slow", "late"), stats, {}, now=NOW)
    assert [(p["kind"], p["id"], p["state"]) for p in problems] == [
        ("target", "make", "stalled"), ("target", "late", "stalled")]
    # the same rule and the same words as the outbox's
    assert problems[0]["detail"] == outbox_stall(stats["make"], now=NOW) == "the oldest due webhook is 61 s overdue"


def test_a_target_with_only_held_items_is_never_stalled():
    # Given a target whose window is closed: its items are held (not due), however old
    stats = {"make": {"pending": 0, "held": 40, "dead": 0, "oldest_pending_age_s": None, "oldest_due_at": None,
                      "oldest_due_delay": None}}
    assert target_problems(("make",), stats, {}, now=NOW) == []


def test_target_stats_without_the_due_fields_report_no_stall():
    # (a store that does not yet give oldest_due_at / oldest_due_delay per target)
    stats = {"make": {"pending": 3, "held": 0, "dead": 0, "oldest_pending_age_s": 10_000.0}}
    assert target_problems(("make",), stats, {}, now=NOW) == []
    assert target_problems(("make",), None, {}, now=NOW) == []


@pytest.mark.parametrize("documents, expected", [
    ([], {}),
    ([None, {}, {"circuits": None}, {"circuits": {}}], {}),
    ([{"circuits": {"make": "closed"}}], {"make": "closed"}),
    ([{"circuits": {"make": "closed"}}, {"circuits": {"make": "half_open"}}], {"make": "half_open"}),
    ([{"circuits": {"make": "half_open"}}, {"circuits": {"make": "open"}}, {"circuits": {"make": "closed"}}],
     {"make": "open"}),
    ([{"circuits": {"make": "open", "n8n": "closed"}}, {"circuits": {"zap": "half_open", "n8n": "closed"}}],
     {"make": "open", "n8n": "closed", "zap": "half_open"}),
    ([{"circuits": {"make": "melted"}}, {"circuits": {"make": "closed"}}], {"make": "closed"}),
], ids=["nothing-published", "no-circuits", "one-closed", "half-open-beats-closed", "open-beats-all",
        "several-targets", "unknown-state-ignored"])
def test_a_targets_circuit_is_the_worst_any_published_status_reports(documents, expected):
    assert circuit_states(documents) == expected


def test_a_target_whose_circuit_is_open_anywhere_is_a_circuit_open_problem():
    problems = target_problems(("make", "n8n", "zap"), {}, {"make": "open", "n8n": "half_open", "zap": "closed"},
                               now=NOW)
    assert [(p["kind"], p["id"], p["state"]) for p in problems] == [("target", "make", "circuit_open")]
    assert "make" in problems[0]["detail"]


def test_without_configured_ids_every_target_the_stats_or_circuits_name_is_checked_in_order():
    problems = target_problems((), {"zap": due(100)}, {"make": "open"}, now=NOW)
    assert [(p["id"], p["state"]) for p in problems] == [("make", "circuit_open"), ("zap", "stalled")]


def test_target_problems_reach_health_as_degraded_never_down():
    # Given a holder that reports target make's circuit open, and target archive's oldest due item 120 s overdue
    view = observe(published={**published(last_success=NOW - 1), "circuits": {"make": "open", "archive": "closed"}},
                   target_stats={"archive": due(120), "make": due(1)}, targets=("make", "archive"))
    health = assess(mode="enabled", threads_dead=False, view=view)
    # Then /health is 200 degraded and names both targets
    assert (health.status, health.http_status) == ("degraded", 200)
    assert [(p["kind"], p["id"], p["state"]) for p in health.problem_dicts()] == [
        ("target", "make", "circuit_open"), ("target", "archive", "stalled")]


def test_the_circuit_of_another_mailboxs_holder_counts_too():
    view = observe(other_mailboxes=("studio",), targets=("make",),
                   mailbox_statuses={"studio": {**published(last_success=NOW - 1), "circuits": {"make": "open"}}})
    assert [(p["id"], p["state"]) for p in view["stalls"]] == [("make", "circuit_open")]


def test_a_stale_cluster_view_reports_no_target_problem():
    view = observe(read_ok=False, last_read_ok=NOW - 60, targets=("make",), target_stats={"make": due(500)},
                   published={"circuits": {"make": "open"}})
    assert view["cluster"] == "stale" and view["stalls"] == []


@pytest.mark.parametrize("imap", ["reauth_required", "auth_failed", "no_server_done_mark"])
def test_a_mailbox_other_than_the_first_whose_sign_in_needs_an_operator_is_named_in_problems(imap):
    statuses = {"sales": published(last_success=NOW - 1, published_at=NOW - 1, imap=imap),
                "studio": published(last_success=NOW - 1, published_at=NOW - 1)}
    problems = other_mailbox_problems(("sales", "studio"), statuses, now=NOW, started=NOW - 600, timings=TIMINGS)
    assert [(p["kind"], p["id"], p["state"]) for p in problems] == [("mailbox", "sales", imap)]
    assert problems[0]["detail"]
