"""The state vocabularies are enums whose values are the strings every answer, log line and stored record carries."""

from __future__ import annotations

import json

import pytest

from background.lease import LeaseState
from background.runner import ImapState, PollerState, PollerStatus
from services.state_store import OUTBOX_STATUSES, OutboxItem, OutboxStatus, check_status


@pytest.mark.parametrize("enum, values", [
    (PollerState, ["standby", "polling", "backoff", "redis_unavailable"]),
    (ImapState, ["ok", "unreachable", "auth_failed", "no_server_done_mark", "reauth_required", "n/a"]),
    (LeaseState, ["held", "standby", "redis_unreachable"]),
    (OutboxStatus, ["pending", "enriching", "delivered", "dead"]),
])
def test_each_state_enum_carries_exactly_the_documented_strings(enum, values):
    assert [member.value for member in enum] == values
    # A member is its string: equal to it, formatted as it, and serialised as it.
    for member, value in zip(enum, values, strict=True):
        assert member == value and str(member) == value and f"{member}" == value and "%s" % member == value
        assert json.dumps({"state": member}) == json.dumps({"state": value})


def test_a_poller_status_snapshot_serialises_as_before():
    # Given a poller that failed once against an unreachable server
    status = PollerStatus(mailbox="INBOX")
    status.error("boom", imap_state=ImapState.UNREACHABLE)
    # When its snapshot is serialised
    document = json.loads(json.dumps(status.snapshot()))
    # Then the states are the plain strings of the interface
    assert document["state"] == "backoff" and document["imap"] == "unreachable"
    assert json.loads(json.dumps(PollerStatus().snapshot()))["state"] == "standby"


def test_outbox_statuses_are_checked_against_the_enum_and_plain_strings_still_pass():
    assert OUTBOX_STATUSES == ("pending", "enriching", "delivered", "dead")
    assert OutboxItem(event_id="msg_a", email_id="a", payload={}, mailbox="INBOX", uidvalidity=1, uid=1,
                      message_id=None).status == "pending"
    for status in ("pending", OutboxStatus.DEAD):
        check_status(status)
    with pytest.raises(ValueError, match="unknown outbox status 'parked'"):
        check_status("parked")
