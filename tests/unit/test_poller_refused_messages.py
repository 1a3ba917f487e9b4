"""Messages the server refuses with NO while the connection stays up (Exchange answers NO for a message it cannot
convert; a BODYSTRUCTURE the client cannot parse ends the same way): the poller isolates them UID by UID, moves the
checkpoint past them, retries them after the new mail and parks them after IMAP_FETCH_MAX_FAILURES (issue 15 #2).

Real Dovecot cannot produce a NO that keeps the session (tests/integration/test_poison.py covers the message that
breaks the connection), so the IMAP side here is a scripted client; the state store is a real SQLite file.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest

from background.poller import MailboxPoller
from background.runner import PollerStatus
from config import MailboxConfig, PasswordCredentials
from email_processing.orchestrator import NullOffloader
from services.imap_mailbox import ImapError, MailboxState, MessageMeta
from services.state_store_sqlite import SqliteStateStore

UIDVALIDITY = 9
POISON = 3


def _raw(uid: int) -> bytes:
    return (f"From: client@example.com\r\nSubject: files {uid}\r\nMessage-ID: <m{uid}@example.test>\r\n"
            "Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nContent-Type: text/plain\r\n\r\n"
            f"https://www.dropbox.com/scl/fi/u{uid}/f.zip?rlkey=k&dl=0\r\n").encode()


class Guard:
    def check_remote(self) -> None: ...
    def check_local(self) -> None: ...
    def record_action(self) -> None: ...


class ScriptedServer:
    """UIDs 1..5; any FETCH that includes POISON answers NO (the connection stays usable)."""

    def __init__(self) -> None:
        self.uids = [1, 2, 3, 4, 5]
        self.fetches: list[list[int]] = []
        self.flagged: set[int] = set()

    def noop(self) -> list:
        return []

    def uids_after(self, last: int, limit: int) -> list[int]:
        return [uid for uid in self.uids if uid > last][:limit]

    def search_uids(self, criteria, charset=None) -> list[int]:
        if criteria[:1] == ["UID"]:
            return [int(criteria[1])] if int(criteria[1]) in self.uids else []
        return []

    def fetch_meta(self, uids) -> dict[int, MessageMeta]:
        uids = list(uids)
        self.fetches.append(uids)
        if POISON in uids:
            raise ImapError("IMAP: fetch failed: NO [UNAVAILABLE] the message cannot be converted", "fetch")
        return {uid: MessageMeta(uid, 300, datetime.now(timezone.utc), (), ("text", "plain"), _raw(uid))
                for uid in uids if uid in self.uids}

    def fetch_full(self, uid: int) -> bytes:
        return _raw(uid)

    def add_flags(self, uids, flags) -> tuple:
        self.flagged.update(uids)
        return ()


@pytest.fixture
def store(tmp_path):
    store = SqliteStateStore(str(tmp_path / "state.sqlite3"), retention_seconds=86400)
    yield store
    store.close()


def test_a_message_refused_with_no_is_isolated_retried_after_new_mail_and_parked(store):
    mailbox = MailboxConfig(id="default", server="imap.example.test", user="u", credentials=PasswordCredentials("p"),
                            fetch_max_failures=2)
    poller = MailboxPoller(mailbox, store, None, Guard(), PollerStatus(), offloader_factory=NullOffloader,
                           delivery_wakeup=threading.Event(), flag_wakeup=threading.Event())
    server = ScriptedServer()
    state = MailboxState(UIDVALIDITY, 6, (), True)
    store.set_checkpoint("INBOX", UIDVALIDITY, 0)
    # When a cycle runs over a batch holding the refused message
    poller.run_cycle(server, state)
    # Then the batch was taken UID by UID, every other email is queued, the checkpoint is past all of them
    assert server.fetches[0] == [1, 2, 3, 4, 5] and [3] in server.fetches
    queued = {item.uid for item in store.list_items("pending", 10)}
    assert queued == {1, 2, 4, 5}
    assert store.get_checkpoint("INBOX", UIDVALIDITY) == 5
    assert store.fetch_retries("INBOX", UIDVALIDITY, 10) == [(POISON, 1)]
    assert store.parked_count() == 0
    # When new mail arrives, the next cycle takes it first, then retries the refused one, which is parked now
    server.uids.append(6)
    server.fetches.clear()
    poller.run_cycle(server, state)
    assert server.fetches.index([6]) < server.fetches.index([POISON])
    assert 6 in {item.uid for item in store.list_items("pending", 10)}
    (parked,) = store.list_parked()
    assert (parked.parked_id, parked.reason) == (f"default:{UIDVALIDITY}:{POISON}", "fetch_failed")
    assert "cannot be converted" in (parked.detail or "")
    assert store.fetch_retries("INBOX", UIDVALIDITY, 10) == []
    assert POISON not in server.flagged        # parked: its flags are left as they are
    assert poller.status.snapshot()["retry_set"] == 0
