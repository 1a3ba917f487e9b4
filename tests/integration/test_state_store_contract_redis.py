"""The state store contract of tests/unit/test_state_store_contract.py against a real redis-server, and the
contract tests that need a server or OS processes (for both backends)."""

from __future__ import annotations

import json
import multiprocessing
import time

import pytest

from services.state_store import StateStore, open_state_store
from settings import Settings

# The contract's tests, collected here a second time: their ``store`` comes from the ``backend`` fixture below.
from tests.unit.test_state_store_contract import (  # noqa: F401 - the contract tests, run again on Redis
    an_enriching_item,
    an_item,
    an_item_for,
    test_a_claim_by_owner_sees_rescheduled_released_and_finished_items_as_they_are,
    test_a_held_item_counts_no_attempt_is_due_when_its_window_opens_and_is_not_backlog,
    test_a_mailboxs_newest_refresh_token_is_stored_and_replaced_per_mailbox,
    test_a_replayed_item_can_be_delivered,
    test_a_retry_due_before_its_claim_would_end_is_claimed_by_its_owner_when_due,
    test_a_single_item_email_ends_with_its_item_as_before,
    test_an_email_fanned_out_is_done_and_flagged_only_when_every_item_has_ended,
    test_an_email_with_a_dead_item_is_done_as_dead_once_the_others_end,
    test_an_enqueued_item_reads_back_with_every_field,
    test_an_enriching_item_is_queued_work_that_no_claim_takes_until_it_is_finished,
    test_an_item_reclaimed_while_still_in_flight_counts_a_possible_duplicate,
    test_checkpoints_never_move_backwards_and_are_kept_per_uidvalidity,
    test_claim_due_takes_only_due_unclaimed_items_up_to_the_limit,
    test_counters_add_up_with_and_without_labels,
    test_dead_letter_parks_the_item_with_reason_and_bounded_excerpt,
    test_done_records_are_stored_by_email_id,
    test_each_mailbox_holder_publishes_its_own_status,
    test_each_target_claims_its_own_due_items_whatever_the_backlog_of_another,
    test_enqueue_is_idempotent_by_event_id_in_every_status,
    test_finished_items_done_records_flags_and_history_expire_but_pending_work_stays,
    test_finishing_enrichment_of_a_pending_or_unknown_item_changes_nothing,
    test_flag_requests_queue_per_mailbox_in_order_and_clear,
    test_it_picks_the_backend_from_settings_and_answers_ping,
    test_list_items_orders_pending_oldest_first_and_respects_the_limit,
    test_mark_delivered_finishes_the_item_marks_it_done_counts_it_and_queues_its_flag,
    test_outbox_stats_report_pending_age_and_the_newest_dead_letters,
    test_published_status_carries_published_at_and_expires,
    test_r2_reuse_records_expire_after_their_ttl,
    test_recent_history_keeps_the_newest_hundred,
    test_replay_moves_dead_letters_back_to_pending_with_attempts_reset,
    test_reschedule_keeps_the_item_pending_until_its_next_attempt,
    test_target_stats_count_pending_held_and_dead_per_target,
    test_target_stats_give_each_target_its_oldest_due_item_and_its_scheduled_delay,
    test_the_outbox_breakdown_is_target_stats_and_pending_mailboxes_in_one_answer,
    test_the_refresh_lock_excludes_another_holder_of_the_same_mailbox_until_released,
    test_threads_enqueueing_the_same_items_create_each_once,
    test_writes_fenced_with_a_stale_lease_epoch_are_refused_and_a_late_2xx_is_only_counted,
)
from tests.unit.test_state_store_mailboxes import (  # noqa: F401 - several mailboxes and targets, again on Redis
    test_an_item_from_no_imap_message_queues_no_flag_request,
    test_counters_take_several_labels_in_one_key_format,
    test_items_name_their_mailbox_and_target_and_default_to_default,
    test_pending_work_is_counted_per_mailbox_and_target,
    test_the_store_records_the_schema_version_it_writes,
    test_two_mailboxes_with_the_same_folder_keep_separate_state,
)
from tests.unit.test_state_store_operator import (  # noqa: F401 - operator primitives (issue 20), again on Redis
    test_a_pause_is_durable_across_reopening_the_store,
    test_a_paused_target_hands_out_nothing_and_its_items_stay_pending_until_resumed,
    test_actions_are_listed_newest_first_and_bounded_in_number_and_age,
    test_an_action_older_than_thirty_days_is_not_listed,
    test_an_unfiltered_claim_passes_over_due_items_of_a_paused_target,
    test_compare_and_put_writes_only_over_the_expected_record,
    test_concurrent_hits_are_each_counted,
    test_concurrent_replays_of_one_dead_letter_count_it_once,
    test_hits_are_counted_per_key_and_fixed_window,
    test_items_for_email_gives_every_item_of_the_email_in_any_status,
    test_of_concurrent_compare_and_puts_over_one_record_exactly_one_wins,
    test_records_are_kept_per_namespace_for_their_ttl,
    test_replay_takes_only_the_dead_letters_that_died_since_and_of_the_target_asked,
    test_request_replay_since_takes_the_emails_parked_since,
)
from tests.unit.test_state_store_poison import (  # noqa: F401 - poison-proofing records, again on Redis
    test_a_claim_released_without_an_attempt_counts_no_attempt_and_no_possible_duplicate,
    test_a_replay_request_reaches_the_mailbox_and_ends_unparked_or_refused,
    test_every_outcome_appends_to_a_bounded_attempt_log,
    test_fetch_failures_are_a_durable_retry_set_per_mailbox_and_uidvalidity,
    test_flag_failures_are_counted_per_request_and_cleared_with_it,
    test_parked_emails_are_listed_newest_first_and_re_parking_updates_the_reason,
    test_the_first_identity_under_an_email_id_is_kept,
)
from tests.unit.test_stranded import (  # noqa: F401 - removed targets' items, again on Redis
    test_a_removed_targets_pending_items_become_replayable_dead_letters,
    test_with_no_target_configured_nothing_is_dead_lettered,
)

pytestmark = pytest.mark.redis


@pytest.fixture(params=["redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def test_redis_keys_live_under_the_prefix_and_only_open_work_has_no_ttl(redis_url, redis_server) -> None:
    store = open_state_store(Settings.from_env({"REDIS_URL": redis_url}))
    raw = redis_server.client()
    try:
        now = time.time()
        store.enqueue(an_item(1))
        store.enqueue(an_item(2))
        store.enqueue(an_item(3))
        store.mark_delivered("msg_e1", 200, now)
        store.dead_letter("msg_e2", "http_400", 400, None)
        store.mark_done("e9", "skipped:no_link")
        store.put_r2_copy("https://x", {}, 60)
        store.publish_status({}, 60)
        store.record_recent({})
        store.set_checkpoint("INBOX", 77, 5)
        store.incr("emails_seen")

        keys = set(raw.keys("*"))
        assert all(key.startswith("render_signal:v1:") for key in keys)
        retention_ms = 30 * 86400 * 1000
        for key in ("item:msg_e1", "item:msg_e2", "done:e1", "done:e2", "done:e3", "done:e9", "flags:INBOX",
                    "recent"):
            assert 0 < raw.pttl("render_signal:v1:" + key) <= retention_ms, key
        for key in ("r2:" + __import__("hashlib").sha256(b"https://x").hexdigest(), "status"):
            assert 0 < raw.pttl("render_signal:v1:" + key) <= 60_000, key
        for key in ("item:msg_e3", "checkpoint:INBOX", "counters", "outbox:pending", "outbox:pending_since"):
            assert raw.pttl("render_signal:v1:" + key) == -1, key
    finally:
        raw.close()
        store.close()


def test_items_queued_by_an_older_release_are_adopted_by_their_owners_claim(redis_url, redis_server) -> None:
    # Given an item an older release queued: in outbox:pending only, in no owner's due set
    store = open_state_store(Settings.from_env({"REDIS_URL": redis_url}))
    raw = redis_server.client()
    try:
        store.enqueue(an_item_for("t", 7))
        raw.delete("render_signal:v1:outbox:due:default:t")
        # When its owner claims
        claimed = store.claim_due("w", time.time(), 10, 30, mailbox_id="default", target_id="t")
        # Then the item is found all the same
        assert [item.event_id for item in claimed] == ["msg_e7_t"]
    finally:
        raw.close()
        store.close()


def test_an_emails_item_set_lives_as_long_as_its_items_and_older_items_are_found_without_it(
        redis_url, redis_server) -> None:
    store = open_state_store(Settings.from_env({"REDIS_URL": redis_url}))
    raw = redis_server.client()
    key = "render_signal:v1:email_items:e1"
    try:
        # Given an email fanned out to two targets: its item set has no TTL while an item is open
        now = time.time()
        store.enqueue_all([an_item_for("a", 1), an_item_for("b", 1)])
        for item in store.claim_due("w", now, 10, 30):
            if item.target_id == "a":
                store.mark_delivered(item.event_id, 200, now)
            else:
                store.dead_letter(item.event_id, "http_400", 400, None, now=now)
        # Then once both ended it expires with them, and a replay keeps it again
        assert 0 < raw.pttl(key) <= 30 * 86400 * 1000
        store.replay("msg_e1_b", now=now)
        assert raw.pttl(key) == -1
        # And items an older release queued (no item set) are found by their keys
        store.enqueue(an_item(2))
        raw.delete("render_signal:v1:email_items:e2")
        assert [item.event_id for item in store.items_for_email("e2")] == ["msg_e2"]
        assert [item.target_id for item in store.items_for_email("e1")] == ["a", "b"]
    finally:
        raw.close()
        store.close()


def test_the_outbox_breakdown_reads_each_pending_item_once(redis_url, redis_server) -> None:
    # Given 30 pending items (10 of them held) and 5 enriching ones
    store = open_state_store(Settings.from_env({"REDIS_URL": redis_url}))
    raw = redis_server.client()
    try:
        now = time.time()
        store.enqueue_all([an_item_for(f"t{n % 3}", n) for n in range(30)])
        for item in store.claim_due("w", now, 10, 30):
            store.hold(item.event_id, now + 600, now)
        store.enqueue_all([an_enriching_item(n) for n in range(100, 105)])

        def item_reads(read) -> int:
            raw.config_resetstat()
            read()
            return int(raw.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0))

        # When the breakdown is read, and then the two answers it replaces
        once = item_reads(lambda: store.outbox_breakdown(now))
        twice = item_reads(lambda: (store.target_stats(now), store.pending_owners()))
        # Then the breakdown reads each queued item's fields once, where the two answers read them twice
        assert (once, twice) == (35, 70)
    finally:
        raw.close()
        store.close()


def _claim_in_process(environ: dict[str, str], owner: str, start, out_path: str) -> None:
    """Child process: claim in a loop until the outbox is empty, delivering each item; write what it claimed."""
    store = open_state_store(Settings.from_env(environ))
    claims: list[list] = []
    start.wait(20)  # a barrier: every process has opened its store before any claims
    deadline = time.monotonic() + 40
    try:
        while time.monotonic() < deadline:
            now = time.time()
            items = store.claim_due(owner, now, 3, 60)
            for item in items:
                claims.append([item.event_id, now, item.claimed_until])
            for item in items:
                store.mark_delivered(item.event_id, 200, time.time())
            time.sleep(0.002)  # roughly a webhook's worth of work, so the processes interleave
            if not items and store.outbox_stats(time.time())["pending"] == 0:
                break
    finally:
        store.close()
        with open(out_path, "w") as handle:
            json.dump(claims, handle)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", ["redis", "sqlite"])
def test_processes_claiming_concurrently_never_claim_an_item_twice(store: StateStore, environ, tmp_path) -> None:
    # Given 200 due items
    for n in range(200):
        store.enqueue(an_item(n))
    # When 4 OS processes claim (and deliver) in a loop at the same time
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(5)
    outputs = [str(tmp_path / f"claims-{i}.json") for i in range(4)]
    procs = [ctx.Process(target=_claim_in_process, args=(environ, f"proc-{i}", start, outputs[i]))
             for i in range(4)]
    for proc in procs:
        proc.start()
    try:
        start.wait(30)
        for proc in procs:
            proc.join(60)
        assert [proc.exitcode for proc in procs] == [0, 0, 0, 0]
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    # Then every item was claimed exactly once, and more than one process took part
    per_process = []
    for path in outputs:
        with open(path) as handle:
            per_process.append(json.load(handle))
    claimed = [event_id for claims in per_process for event_id, _, _ in claims]
    assert len(claimed) == 200
    assert sorted(claimed) == sorted(f"msg_e{n}" for n in range(200))
    assert sum(1 for claims in per_process if claims) >= 2
    assert store.counters()["webhooks_delivered"] == 200
    assert store.counters().get("possible_duplicates", 0) == 0
    assert store.outbox_stats(time.time())["pending"] == 0
