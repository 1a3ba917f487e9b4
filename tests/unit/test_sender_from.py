"""The sender allow-list reads the From header strictly (issue 16, CVE-2023-27043).

On Python 3.11.7 (what CI runs) ``email.utils`` reads ``boss@trusted.example <attacker@evil.example>`` as
``boss@trusted.example``. These tests prove the project's own parse on that runtime: an email counts as sent by an
allow-listed address only when it has exactly one From header naming exactly one mailbox, unambiguously; otherwise
an allow-list skips it with reason ``sender_ambiguous``. Without an allow-list such an email is still processed, with
an empty ``sender_email`` (the header as written stays in ``sender_address``).
"""

from __future__ import annotations

import email._parseaddr
import email.utils

import pytest

from email_processing.orchestrator import NullOffloader, process_email
from email_processing.parsing import parse_message

BOSS = "boss@trusted.example"
ATTACKER = "attacker@evil.example"
LINK = b"https://www.dropbox.com/scl/fi/aaaa/f.zip?rlkey=bbbb&dl=0"


def email_from(*from_values: bytes) -> bytes:
    head = b"".join(b"From: " + value + b"\r\n" for value in from_values)
    return head + b"Subject: files\r\nMessage-ID: <m1@example.com>\r\n\r\n" + LINK + b"\r\n"


def decide(raw: bytes, allowlist: tuple[str, ...] = (BOSS,)):
    return process_email(parse_message(raw), received_at="2025-06-03T08:00:00Z", sender_allowlist=allowlist,
                         allow_without_links=False, offloader=NullOffloader())


AMBIGUOUS = {
    # CVE-2023-27043: the address-looking display name wins in email.utils before 3.11.10
    "address as display name": [f"{BOSS} <{ATTACKER}>".encode()],
    "address glued to an angle address": [f"{BOSS}<{ATTACKER}>".encode()],
    "two angle addresses": [f"Boss <{BOSS}> <{ATTACKER}>".encode()],
    "angle address then a bare address": [f"<{BOSS}> {ATTACKER}".encode()],
    "two From headers": [BOSS.encode(), ATTACKER.encode()],
    "two From headers, the trusted one second": [ATTACKER.encode(), BOSS.encode()],
    "two identical From headers": [BOSS.encode(), BOSS.encode()],
    "two mailboxes": [f"{BOSS}, {ATTACKER}".encode()],
    "two named mailboxes": [f"Boss <{BOSS}>, Eve <{ATTACKER}>".encode()],
    "one mailbox and a trailing comma": [f"{BOSS},".encode()],
    "group syntax": [f"Team: {BOSS};".encode()],
    "group of two": [f"Team: {BOSS}, {ATTACKER};".encode()],
    "empty group then an address": [f"undisclosed-recipients:; {BOSS}".encode()],
    "encoded-word as the local part": [b"=?utf-8?q?boss?=@trusted.example"],
    "encoded-word smuggling an address": [b"=?x?q?boss=40trusted.example=3e=00?=attacker@evil.example"],
    "encoded-word in the domain": [b"boss@=?utf-8?q?trusted.example?="],
    "only an encoded-word": [b"=?utf-8?q?boss=40trusted.example?="],
    "two at signs (CVE-2019-16056)": [f"{BOSS}@evil.example".encode()],
    "comment inside the address": [b"boss(x)@trusted.example"],
    "comment between address and domain part": [f"{BOSS}(x)@evil.example".encode()],
    "unclosed comment": [f"{BOSS} (The Boss".encode()],
    "comment hiding an angle address": [f"{BOSS} (<{ATTACKER}>".encode()],
    "quoted local part carrying an address": [b'"boss@trusted.example"@evil.example'],
    "unclosed quoted string": [f'"Boss <{BOSS}>'.encode()],
    "domain literal": [b"boss@[192.0.2.1]"],
    "empty angle address": [b"Boss <>"],
    "no address at all": [b"Undisclosed"],
    "empty From header": [b""],
    "no From header": [],
    "space inside the address": [b"boss @trusted.example"],
    "no-break space inside the address": [b"boss\xc2\xa0@trusted.example"],
    "invisible character in the domain": [b"boss@trusted.example\xe2\x80\x8b"],
    "control character": [f"Boss\x01 <{BOSS}>".encode()],
}
# The separators of CPython's own CVE-2023-27043 tests, between an address and an angle address.
AMBIGUOUS.update({f"separator {sep!r}": [f"{BOSS}{sep}<{ATTACKER}>".encode()] for sep in '()<>[]@;:."\\'})


@pytest.mark.parametrize("from_values", AMBIGUOUS.values(), ids=AMBIGUOUS.keys())
def test_an_allow_list_skips_an_email_whose_from_header_is_ambiguous(from_values):
    # Given an allow-listed address somewhere in an ambiguous From header (or none at all)
    # When an allow-list applies
    result = decide(email_from(*from_values))
    # Then the email is skipped as ambiguous, and no address is claimed for it
    assert (result.decision, result.reason) == ("skip", "sender_ambiguous")
    assert result.payload["sender_email"] == ""


@pytest.mark.parametrize("from_values", AMBIGUOUS.values(), ids=AMBIGUOUS.keys())
def test_without_an_allow_list_an_ambiguous_email_is_still_processed_with_no_sender_email(from_values):
    result = decide(email_from(*from_values), allowlist=())
    assert (result.decision, result.reason) == ("send", None)
    assert result.payload["sender_email"] == ""


def test_the_ambiguous_header_stays_visible_as_written_in_sender_address():
    result = decide(email_from(f"{BOSS} <{ATTACKER}>".encode()), allowlist=())
    assert result.payload["sender_address"] == f"{BOSS} <{ATTACKER}>"
    parsed = parse_message(email_from(b"=?utf-8?q?Boss?= <boss@trusted.example>, eve@evil.example"))
    assert (parsed.from_header, parsed.sender_email) == ("Boss <boss@trusted.example>, eve@evil.example", "")


def test_the_parse_names_why_a_from_header_is_ambiguous():
    assert parse_message(email_from(f"{BOSS} <{ATTACKER}>".encode())).sender_problem == "an address outside <...>"
    assert parse_message(email_from(BOSS.encode(), BOSS.encode())).sender_problem == "2 From headers"
    assert parse_message(email_from(f"{BOSS}, {ATTACKER}".encode())).sender_problem == "more than one mailbox"
    assert parse_message(email_from(f"Team: {BOSS};".encode())).sender_problem == "group syntax"
    assert parse_message(email_from()).sender_problem == "no From header"
    assert parse_message(email_from(BOSS.encode())).sender_problem is None


UNAMBIGUOUS = [
    # (From value, from_header as every earlier release wrote it, sender_email)
    (b"boss@trusted.example", "boss@trusted.example", BOSS),
    (b"<boss@trusted.example>", "boss@trusted.example", BOSS),
    (b"Boss <boss@trusted.example>", "Boss <boss@trusted.example>", BOSS),
    (b"Boss<boss@trusted.example>", "Boss <boss@trusted.example>", BOSS),
    (b"Boss < boss@trusted.example >", "Boss <boss@trusted.example>", BOSS),
    (b"The   Big\r\n Boss <Boss@Trusted.Example>", "The Big Boss <Boss@Trusted.Example>", BOSS),
    (b'"Boss, The" <boss@trusted.example>', "Boss, The <boss@trusted.example>", BOSS),
    (b'"The \\"Big\\" Boss" <boss@trusted.example>', 'The "Big" Boss <boss@trusted.example>', BOSS),
    (b'"boss@trusted.example" <boss@trusted.example>', "boss@trusted.example <boss@trusted.example>", BOSS),
    (b"Boss Q. Public <boss@trusted.example>", "Boss Q. Public <boss@trusted.example>", BOSS),
    (b"=?utf-8?b?SsOpcsO0bWU=?= <boss@trusted.example>", "J\u00e9r\u00f4me <boss@trusted.example>", BOSS),
    (b"J\xc3\xa9r\xc3\xb4me <boss@trusted.example>", "J\u00e9r\u00f4me <boss@trusted.example>", BOSS),
    (b"J\xc3\xa9r\xc3\xb4me\xc2\xa0Dupont <boss@trusted.example>", "J\u00e9r\u00f4me Dupont <boss@trusted.example>",
     BOSS),
    (b"boss@trusted.example (The Boss)", "The Boss <boss@trusted.example>", BOSS),
    (b"boss@trusted.example (The (Big) Boss)", "The Big Boss <boss@trusted.example>", BOSS),
    (b"Boss (work) <boss@trusted.example>", "Boss (work) <boss@trusted.example>", BOSS),
    (b"Boss <boss@trusted.example> (work)", "Boss <boss@trusted.example>", BOSS),
    (b"First.Last+tag@mail.trusted.example", "First.Last+tag@mail.trusted.example",
     "first.last+tag@mail.trusted.example"),
]


@pytest.mark.parametrize("value, from_header, sender_email", UNAMBIGUOUS,
                         ids=[case[0].decode("latin-1") for case in UNAMBIGUOUS])
def test_one_unambiguous_mailbox_gives_its_address_and_the_display_earlier_releases_wrote(value, from_header,
                                                                                          sender_email):
    # The display feeds the identity fingerprint (Date, From, Subject): it must not change for these.
    parsed = parse_message(email_from(value))
    assert (parsed.from_header, parsed.sender_email, parsed.sender_problem) == (from_header, sender_email, None)


def test_an_allow_listed_sender_with_one_clear_mailbox_is_sent():
    assert decide(email_from(b"The Boss <Boss@Trusted.Example>")).decision == "send"
    assert decide(email_from(b"boss@trusted.example"), allowlist=("@trusted.example",)).decision == "send"


@pytest.mark.parametrize("value", [
    b'"boss@trusted.example" <attacker@evil.example>',
    b"=?utf-8?q?boss=40trusted.example?= <attacker@evil.example>",
    b"attacker@evil.example (boss@trusted.example)",
])
def test_a_display_name_or_comment_that_looks_allowed_is_not_the_address(value):
    result = decide(email_from(value))
    assert (result.decision, result.reason) == ("skip", "sender_not_allowed")
    assert result.payload["sender_email"] == ATTACKER


def test_the_runtime_address_parser_is_never_consulted(monkeypatch):
    # The decision must not depend on the runtime's email.utils, whose CVE-2023-27043 fix 3.11.7 lacks.
    def refuse(*args, **kwargs):
        raise AssertionError("email.utils address parsing used")

    # email.utils' getaddresses and parseaddr both build an _AddressList, however they were imported
    monkeypatch.setattr(email.utils, "_AddressList", refuse)
    monkeypatch.setattr(email._parseaddr, "AddressList", refuse)
    result = decide(email_from(f"{BOSS} <{ATTACKER}>".encode()))
    assert result.reason == "sender_ambiguous"
    assert decide(email_from(b"Boss <boss@trusted.example>")).decision == "send"
