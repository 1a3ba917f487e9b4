"""The state store's records for poison-proofing (issue 15), on both backends: here a real SQLite file;
tests/integration/test_state_store_contract_redis.py imports these tests and runs them on a redis-server."""

from __future__ import annotations

import time

import pytest

from services.state_store import ATTEMPT_LOG_KEEP, FlagRequest, OutboxItem, ParkedEmail, StateStore


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def _item(n: int = 1) -> OutboxItem:
    email_id = f"{n:032x}"
    return OutboxItem(event_id=f"msg_{email_id}", email_id=email_id, payload={"n": n}, mailbox="INBOX",
                      uidvalidity=5, uid=n, message_id=f"m{n}@example.test")


def test_a_claim_released_without_an_attempt_counts_no_attempt_and_no_possible_duplicate(store: StateStore):
    store.enqueue(_item())
    (claimed,) = store.claim_due("me", time.time(), 1, 60)
    assert claimed.attempts == 1
    assert store.release_claim(claimed.event_id)
    item = store.get_item(claimed.event_id)
    assert (item.attempts, item.in_flight, item.first_attempt_at, item.claim_owner) == (0, False, None, None)
    (again,) = store.claim_due("me", time.time(), 1, 60)      # due again at once
    assert again.attempts == 1
    assert store.counters().get("possible_duplicates") is None
    assert not store.release_claim("msg_" + "f" * 32)           # nothing to release


def test_every_outcome_appends_to_a_bounded_attempt_log(store: StateStore):
    store.enqueue(_item())
    event_id = _item().event_id
    for n in range(ATTEMPT_LOG_KEEP + 3):
        store.claim_due("me", time.time() + 10_000, 1, 60)
        store.reschedule(event_id, 0.0, "timeout", None, attempt={"at": float(n), "error": "timeout", "ms": n})
    store.claim_due("me", time.time() + 10_000, 1, 60)
    store.mark_delivered(event_id, 200, time.time(), attempt={"at": 99.0, "status": 200, "ms": 7})
    log = store.get_item(event_id).attempt_log
    assert len(log) == ATTEMPT_LOG_KEEP
    assert log[-1] == {"at": 99.0, "status": 200, "ms": 7}
    assert log[0]["at"] == 4.0          # the oldest ones dropped
    assert store.list_items("delivered")[0].attempt_log == log


def test_flag_failures_are_counted_per_request_and_cleared_with_it(store: StateStore):
    store.queue_flag("INBOX", 5, 1, "a@example.test")
    (request,) = store.pending_flags("INBOX", 10)
    assert [store.flag_failed(request) for _ in range(3)] == [1, 2, 3]
    store.clear_flag(request)
    assert store.flag_failed(request) == 0
    store.queue_flag("INBOX", 5, 1, "a@example.test")
    assert store.flag_failed(FlagRequest("INBOX", 5, 1, "a@example.test")) == 1  # a new request starts at 1


def test_fetch_failures_are_a_durable_retry_set_per_mailbox_and_uidvalidity(store: StateStore):
    assert store.record_fetch_failure("INBOX", 5, 40, "NO FETCH failed") == 1
    assert store.record_fetch_failure("INBOX", 5, 40, "NO FETCH failed") == 2
    assert store.record_fetch_failure("INBOX", 5, 12, "bad BODYSTRUCTURE") == 1
    assert store.record_fetch_failure("work:INBOX", 5, 12, "x") == 1
    assert store.fetch_retries("INBOX", 5, 10) == [(12, 1), (40, 2)]
    assert store.fetch_retries("INBOX", 6, 10) == []
    store.clear_fetch_failure("INBOX", 5, 40)
    assert store.fetch_retries("INBOX", 5, 10) == [(12, 1)]
    assert store.fetch_retries("work:INBOX", 5, 10) == [(12, 1)]


def test_the_first_identity_under_an_email_id_is_kept(store: StateStore):
    assert store.get_identity("e1") is None
    store.remember_identity("e1", "fp-a", 5, 10)
    store.remember_identity("e1", "fp-b", 5, 11)
    assert store.get_identity("e1") == {"fingerprint": "fp-a", "uidvalidity": 5, "uid": 10}


def _parked(uid: int, mailbox_id: str = "default", reason: str = "fetch_failed") -> ParkedEmail:
    return ParkedEmail(parked_id=f"{mailbox_id}:5:{uid}", mailbox_id=mailbox_id,
                       mailbox="INBOX" if mailbox_id == "default" else f"{mailbox_id}:INBOX", uidvalidity=5, uid=uid,
                       reason=reason, subject=f"s{uid}", detail="NO FETCH failed")


def test_parked_emails_are_listed_newest_first_and_re_parking_updates_the_reason(store: StateStore):
    store.park(_parked(1))
    time.sleep(0.01)
    store.park(_parked(2, reason="parse_failed"))
    assert store.parked_count() == 2
    assert [p.parked_id for p in store.list_parked(10)] == ["default:5:2", "default:5:1"]
    store.park(_parked(1, reason="processing_failed"))
    again = store.get_parked("default:5:1")
    assert (again.reason, again.subject, again.uid) == ("processing_failed", "s1", 1)
    assert store.parked_count() == 2 and store.get_parked("default:5:9") is None
    # nothing of a parked email is in the outbox or the done records
    assert store.list_items("dead") == [] and store.list_items("pending") == []


def test_a_replay_request_reaches_the_mailbox_and_ends_unparked_or_refused(store: StateStore):
    store.park(_parked(1))
    store.park(_parked(2))
    store.park(_parked(3, mailbox_id="work"))
    assert store.replay_requests("default", 10) == []
    assert store.request_replay("default:5:1") == 1
    assert [p.parked_id for p in store.replay_requests("default", 10)] == ["default:5:1"]
    assert store.request_replay() == 3
    assert {p.parked_id for p in store.replay_requests("default", 10)} == {"default:5:1", "default:5:2"}
    assert [p.parked_id for p in store.replay_requests("work", 10)] == ["work:5:3"]
    store.unpark("default:5:1")
    store.refuse_replay("default:5:2", "the email is gone from the mailbox")
    assert store.get_parked("default:5:1") is None
    refused = store.get_parked("default:5:2")
    assert (refused.replay_requested_at, refused.replay_refused) == (None, "the email is gone from the mailbox")
    assert store.replay_requests("default", 10) == []
    assert store.parked_count() == 2
    assert store.request_replay("default:5:404") == 0
