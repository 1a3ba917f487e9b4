"""Building realistic test emails (bytes) with delivery links."""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import format_datetime

_counter = itertools.count(1)

DROPBOX_FILE = "https://www.dropbox.com/scl/fi/abc{n}/render_{n}.mov?rlkey=key{n}&dl=0"
WETRANSFER = "https://wetransfer.com/downloads/{n}aa11bb22cc33/dd44ee{n}"


def make_email(*, subject: str | None = None, sender: str = "Client <client@example.com>",
               to: str = "bot@example.com", links: list[str] | None = None, message_id: str | None = None,
               html: bool = True, extra_text: str = "", date: datetime | None = None) -> bytes:
    n = next(_counter)
    links = [DROPBOX_FILE.format(n=n)] if links is None else links
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject or f"Delivery {n}"
    message["Date"] = format_datetime(date or datetime.now(timezone.utc))
    message["Message-ID"] = message_id or f"<{uuid.uuid4().hex}@test.example>"
    text = "Hello,\n\nyour files are ready:\n" + "\n".join(links) + "\n" + extra_text
    message.set_content(text)
    if html:
        anchors = "".join(f'<p><a href="{link}">Download</a></p>' for link in links)
        message.add_alternative(f"<html><body><p>Hello,</p>{anchors}<p>{extra_text}</p></body></html>",
                                subtype="html")
    return message.as_bytes()


def message_id_of(raw: bytes) -> str:
    """The Message-ID of a raw email, without angle brackets (raw UTF-8 in it, RFC 6532, read as UTF-8)."""
    import re

    match = re.search(rb"^Message-ID:[ \t]*<?([^>\r\n]+)>?", raw, re.MULTILINE | re.IGNORECASE)
    if match is None:
        raise ValueError("the email has no Message-ID")
    return match.group(1).strip().decode("utf-8")


def event_id_of(raw: bytes) -> str:
    import hashlib

    digest = hashlib.sha256(message_id_of(raw).lower().encode()).hexdigest()[:32]
    return "msg_" + digest
