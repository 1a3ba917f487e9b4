"""The page's Mailboxes and Targets rows: what an operator reads for each ``mailboxes[]`` / ``targets[]`` entry of
the status document (pure: no app, no store)."""

from __future__ import annotations

import pytest

from routes.operator import NOT_KNOWN, human_age, human_bytes, mailbox_row, target_row


def held_mailbox(**changes) -> dict:
    entry = {"id": "studio", "folder": "Clients/Studio", "state": "idle", "imap": "ok",
             "lease": {"held": True, "holder": "pid=7 host=a nonce=1f", "state": "held", "expires_in_s": 20.0},
             "checkpoint": {"uidvalidity": 1700000007, "last_uid": 77}, "idle": True,
             "last_success_at": "2026-12-04T18:00:00.000Z", "backlog": 3}
    entry.update(changes)
    return entry


def no_holder_mailbox() -> dict:
    # exactly what routes.status_view gives a mailbox nobody published within TTL + retry
    return {"id": "agency", "folder": None, "state": "no_holder", "imap": None,
            "lease": {"held": False, "holder": None, "state": None, "expires_in_s": None},
            "checkpoint": {"uidvalidity": None, "last_uid": None}, "idle": None, "last_success_at": None, "backlog": 0}


def configured_target(**changes) -> dict:
    entry = {"id": "make-folders", "profile": "make", "pending": 2, "held": 1, "oldest_pending_age_s": 185.2,
             "dead": 0, "window": None, "rate_per_second": 2.5, "body_cap_bytes": 4_000_000}
    entry.update(changes)
    return entry


@pytest.mark.parametrize(("seconds", "shown"), [
    (None, NOT_KNOWN), (0, "0 s"), (0.4, "0 s"), (59.9, "59 s"), (60, "1 min"), (185.2, "3 min"), (3599, "59 min"),
    (3600, "1 h"), (3600 + 5 * 60 + 30, "1 h 5 min"), (86400, "1 d"), (3 * 86400 + 4 * 3600 + 59, "3 d 4 h"),
    (-5, "0 s"),
])
def test_an_age_reads_in_the_largest_unit_that_fits(seconds, shown):
    assert human_age(seconds) == shown


@pytest.mark.parametrize(("count", "shown"), [
    (None, NOT_KNOWN), (999, "999 B"), (1000, "1 kB"), (50_000, "50 kB"), (1_500_000, "1.5 MB"),
    (4_000_000, "4 MB"), (2 * 10**9, "2 GB"),
])
def test_a_body_cap_reads_in_the_decimal_units_the_configuration_uses(count, shown):
    assert human_bytes(count) == shown


def test_a_held_mailbox_shows_its_holder_checkpoint_backlog_and_last_success():
    row = mailbox_row(held_mailbox())
    assert (row.id, row.folder, row.state, row.mark) == ("studio", "Clients/Studio", "idle", None)
    assert row.holder == "held by pid=7 host=a nonce=1f"
    assert (row.checkpoint, row.backlog, row.last_success) == ("1700000007/77", "3", "2026-12-04T18:00:00.000Z")


def test_a_mailbox_nobody_holds_is_marked_no_holder_in_words():
    row = mailbox_row(no_holder_mailbox())
    assert (row.state, row.mark, row.holder) == ("no holder", "warn", "none")
    assert row.folder == row.checkpoint == row.last_success == NOT_KNOWN
    assert row.backlog == "0"


def test_a_mailbox_whose_backlog_could_not_be_read_shows_no_number():
    # the store was unreadable (stale): the document has no backlog rather than a false 0
    assert mailbox_row(held_mailbox(backlog=None)).backlog == NOT_KNOWN


def test_a_held_lease_without_a_holder_name_still_says_held():
    entry = held_mailbox(lease={"held": True, "holder": None, "state": "held", "expires_in_s": None})
    assert mailbox_row(entry).holder == "held"


def test_a_target_shows_its_counts_oldest_age_rate_and_body_cap():
    row = target_row(configured_target())
    assert (row.id, row.profile, row.pending, row.held, row.dead) == ("make-folders", "make", "2", "1", "0")
    assert (row.oldest_pending, row.rate_limit, row.body_cap) == ("3 min", "2.5/s", "4 MB")
    assert (row.window, row.window_opens_at) == ("always open", None)


def test_a_target_without_a_rate_limit_is_unlimited():
    assert target_row(configured_target(rate_per_second=None)).rate_limit == "unlimited"


@pytest.mark.parametrize(("circuit", "shown", "mark"), [
    ("closed", "closed", None), ("open", "open", "bad"), ("half_open", "half-open", "warn"), (None, NOT_KNOWN, None),
])
def test_the_circuit_is_shown_and_an_open_one_is_marked(circuit, shown, mark):
    row = target_row(configured_target(circuit=circuit))
    assert (row.circuit, row.circuit_mark) == (shown, mark)


def test_a_document_without_circuits_shows_none_for_them():
    # targets[] before the circuit field existed (or a store that does not report it)
    row = target_row(configured_target())
    assert (row.circuit, row.circuit_mark) == (NOT_KNOWN, None)


def test_a_closed_window_says_when_it_opens_in_the_targets_own_time_zone():
    # 2026-12-05T21:00:00Z is 22:00 in Paris (CET, UTC+1) on a Saturday
    window = {"open": False, "opens_at": "2026-12-05T21:00:00.000Z", "timezone": "Europe/Paris"}
    row = target_row(configured_target(window=window))
    assert row.window == "opens Sat 2026-12-05 22:00 Europe/Paris"
    assert row.window_opens_at == "2026-12-05T21:00:00.000Z"


def test_a_closed_window_in_summer_time_uses_that_days_offset():
    window = {"open": False, "opens_at": "2026-07-01T04:30:00.000Z", "timezone": "Europe/Paris"}
    assert target_row(configured_target(window=window)).window == "opens Wed 2026-07-01 06:30 Europe/Paris"


def test_an_open_window_says_open():
    window = {"open": True, "opens_at": None, "timezone": "Europe/Paris"}
    assert target_row(configured_target(window=window)).window == "open"


def test_the_single_target_entry_without_configuration_fields_shows_dashes():
    # routes.status_view's entry when no target is configured: counts only
    row = target_row({"id": "default", "pending": 0, "oldest_pending_age_s": None, "dead": 0})
    assert (row.pending, row.oldest_pending, row.dead) == ("0", NOT_KNOWN, "0")
    assert row.profile == row.held == row.window == row.rate_limit == row.body_cap == row.circuit == NOT_KNOWN
