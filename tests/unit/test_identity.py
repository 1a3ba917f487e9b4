"""The identity grammar (issue 14): email ids per mailbox, event ids per target, addresses of id-less messages."""

from __future__ import annotations

import pytest

from email_processing.identity import EventId, email_id_for, event_id_for, message_address, parse_event_id
from email_processing.parsing import parse_message

RAW = b"Message-ID: <Abc@Example.com>\r\nFrom: a@example.test\r\nSubject: s\r\n\r\nbody\r\n"


def test_the_default_mailbox_keeps_the_historic_email_id():
    import hashlib

    expected = hashlib.sha256(b"abc@example.com").hexdigest()[:32]
    assert email_id_for(parse_message(RAW)) == expected == email_id_for(parse_message(RAW), "default")


def test_another_mailbox_gives_the_same_message_another_email_id():
    parsed = parse_message(RAW)
    ids = {email_id_for(parsed), email_id_for(parsed, "work"), email_id_for(parsed, "work-2")}
    assert len(ids) == 3 and all(len(i) == 32 and i == i.lower() for i in ids)
    assert email_id_for(parsed, "work") == email_id_for(parse_message(RAW), "work")  # stable


def test_event_ids_name_the_target_except_for_default_and_parse_back():
    email_id = "0123456789abcdef0123456789abcdef"
    assert event_id_for(email_id) == "msg_" + email_id
    assert event_id_for(email_id, "crm-2") == f"msg_{email_id}_crm-2"
    assert parse_event_id("msg_" + email_id) == EventId(email_id, "default")
    assert parse_event_id(f"msg_{email_id}_crm-2") == EventId(email_id, "crm-2")


@pytest.mark.parametrize("bad", ["msg_", "msg_XYZ", "evt_0123456789abcdef0123456789abcdef",
                                 "msg_0123456789abcdef0123456789abcdef_", "msg_0123456789abcdef0123456789abcdef_A",
                                 "msg_0123456789abcdef0123456789abcdef_a_b"])
def test_anything_else_is_not_an_event_id(bad):
    with pytest.raises(ValueError):
        parse_event_id(bad)


@pytest.mark.parametrize("target", ["", "Crm", "crm_1", "x" * 33])
def test_a_target_id_outside_the_grammar_is_refused(target):
    with pytest.raises(ValueError):
        event_id_for("0123456789abcdef0123456789abcdef", target)


def test_an_email_id_outside_the_grammar_is_refused():
    with pytest.raises(ValueError):
        event_id_for("ABC")


def test_a_message_without_an_email_id_is_addressed_by_mailbox_uidvalidity_and_uid():
    assert message_address("default", 1700000000, 42) == "default:1700000000:42"
    with pytest.raises(ValueError):
        message_address("Work", 1, 2)
