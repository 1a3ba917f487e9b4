"""The identity grammar (an interface): email ids, event ids and the address of a message without an email id.

- ``email_id``: exactly 32 lower-case hex characters, the first half of a SHA-256 of the lower-cased Message-ID
  (else of Date, From, Subject and the body's head). An email of mailbox ``default`` hashes exactly that, as every
  release did; an email of any other mailbox hashes ``<mailbox_id>`` and a newline first, so the same message in
  two mailboxes is two emails (deduplication is per mailbox) and their event ids never collide in the outbox.
- ``event_id`` (the ``webhook-id``): ``msg_<email_id>`` for target ``default``, ``msg_<email_id>_<target_id>`` for
  any other target. Ids match ``[a-z0-9-]{1,32}`` (no underscore), so an event id parses unambiguously.
- A Message-ID names one email only as long as its Date, From and Subject agree (their ``fingerprint``): the first
  email with a Message-ID keeps the id above; an email with the same Message-ID and another fingerprint (a templated
  notifier reusing Message-IDs) gets ``email_id_for_reused(...)``, the hash of the Message-ID, a newline and the
  fingerprint (with the mailbox prefix as above). The state store keeps each id's first fingerprint.
- A message that never got an email id (its headers could not be read) is addressed as
  ``<mailbox_id>:<uidvalidity>:<uid>``.
Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

from config import DEFAULT_ID, check_id
from email_processing.parsing import ParsedEmail

EMAIL_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
EVENT_ID_PATTERN = re.compile(r"msg_(?P<email_id>[0-9a-f]{32})(?:_(?P<target_id>[a-z0-9-]{1,32}))?")


class EventId(NamedTuple):
    email_id: str
    target_id: str


def email_id_for(parsed: ParsedEmail, mailbox_id: str = DEFAULT_ID) -> str:
    """The email id of ``parsed`` as read from mailbox ``mailbox_id`` (see the module docstring)."""
    if parsed.message_id:
        material = parsed.message_id.strip().strip("<>").lower().encode("utf-8", "surrogatepass")
    else:
        header_part = "\n".join((parsed.date_header or "", parsed.from_header, parsed.subject))
        material = header_part.encode("utf-8", "surrogatepass") + b"\n" + parsed.body_head[:1024]
    if mailbox_id != DEFAULT_ID:
        material = check_id("mailbox", mailbox_id).encode("ascii") + b"\n" + material
    return hashlib.sha256(material).hexdigest()[:32]


def fingerprint_of(parsed: ParsedEmail) -> str:
    """32 hex characters over the Date, From and Subject headers as written."""
    material = "\n".join((parsed.date_header or "", parsed.from_header, parsed.subject))
    return hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def email_id_for_reused(parsed: ParsedEmail, fingerprint: str, mailbox_id: str = DEFAULT_ID) -> str:
    """The id of an email whose Message-ID an earlier, different email (another fingerprint) already has."""
    if not parsed.message_id:
        raise ValueError("only an email with a Message-ID can reuse one")
    material = (parsed.message_id.strip().strip("<>").lower() + "\n" + fingerprint).encode("utf-8", "surrogatepass")
    if mailbox_id != DEFAULT_ID:
        material = check_id("mailbox", mailbox_id).encode("ascii") + b"\n" + material
    return hashlib.sha256(material).hexdigest()[:32]


def event_id_for(email_id: str, target_id: str = DEFAULT_ID) -> str:
    """``msg_<email_id>`` for target ``default``, ``msg_<email_id>_<target_id>`` for any other target."""
    if not EMAIL_ID_PATTERN.fullmatch(email_id):
        raise ValueError(f"email id {email_id!r} must be 32 lower-case hex characters")
    if target_id == DEFAULT_ID:
        return "msg_" + email_id
    return f"msg_{email_id}_{check_id('target', target_id)}"


def parse_event_id(event_id: str) -> EventId:
    """The email id and target id an event id names (``ValueError`` when it is not one)."""
    match = EVENT_ID_PATTERN.fullmatch(event_id)
    if match is None:
        raise ValueError(f"{event_id!r} is not an event id")
    return EventId(match["email_id"], match["target_id"] or DEFAULT_ID)


def message_address(mailbox_id: str, uidvalidity: int, uid: int) -> str:
    """``<mailbox_id>:<uidvalidity>:<uid>``: how a message without an email id is named (logs, status, state)."""
    return f"{check_id('mailbox', mailbox_id)}:{int(uidvalidity)}:{int(uid)}"
