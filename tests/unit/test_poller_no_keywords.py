"""Servers that store no custom keywords (issue 18, "Servers without custom keywords"): the poller never searches for
``$RenderSignalDone`` where PERMANENTFLAGS lacks ``\\*``, falls back once when a server refuses that search, flags
with ``\\Seen`` alone, and stops in ``no_server_done_mark`` when the server would keep no done mark at all.

Real Dovecot with a write-less ACL is in tests/integration/test_no_keyword_server.py; it accepts a search for an
unknown keyword and never answers NO to it, so the IMAP side here is a scripted client (it records every search),
and the state store is a real SQLite file.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone

import pytest

from background.poller import DONE_KEYWORD, NO_SERVER_DONE_MARK, MailboxPoller
from background.runner import PollerStatus
from config import MailboxConfig, PasswordCredentials
from email_processing.orchestrator import NullOffloader
from services.imap_mailbox import ImapError, MailboxState, MessageMeta
from services.state_store_sqlite import SqliteStateStore
from tests.unit.test_poller_refused_messages import Guard, _raw

UIDVALIDITY = 7
WITH_KEYWORDS = MailboxState(UIDVALIDITY, 4, ("\\Seen", "\\Deleted", "\\*"), keywords_allowed=True)
WITHOUT_KEYWORDS = MailboxState(UIDVALIDITY, 4, ("\\Seen", "\\Deleted"), keywords_allowed=False)



class ScriptedServer:
    """UIDs 1..3, all unseen. Records every SEARCH and STORE; ``refuse_keyword_search`` answers a search naming a
    keyword with NO, as some servers do for a keyword they do not know."""

    def __init__(self, state: MailboxState, refuse_keyword_search: bool = False) -> None:
        self.state = state
        self.refuse_keyword_search = refuse_keyword_search
        self.uids = [1, 2, 3]
        self.searches: list[list] = []
        self.stored: list[tuple[list[int], list]] = []
        self.connects = 0
        self.on_noop = lambda: None

    # session
    def connect(self) -> None:
        self.connects += 1

    def select(self, folder: str) -> MailboxState:
        return self.state

    def has_idle(self) -> bool:
        return False

    def close(self) -> None: ...

    # commands
    def noop(self) -> list:
        self.on_noop()
        return []

    def uids_after(self, last: int, limit: int) -> list[int]:
        return [uid for uid in self.uids if uid > last][:limit]

    def search_uids(self, criteria, charset=None) -> list[int]:
        criteria = list(criteria)
        self.searches.append(criteria)
        if self.refuse_keyword_search and any(c in ("KEYWORD", "UNKEYWORD") for c in criteria):
            raise ImapError("IMAP: search failed: BAD Error in IMAP command UID SEARCH: Invalid keyword", "search")
        if criteria[:1] == ["UID"]:
            return [int(criteria[1])] if int(criteria[1]) in self.uids else []
        return list(self.uids)

    def fetch_meta(self, uids) -> dict[int, MessageMeta]:
        return {uid: MessageMeta(uid, 300, datetime.now(timezone.utc), (), ("text", "plain"), _raw(uid))
                for uid in uids if uid in self.uids}

    def fetch_full(self, uid: int) -> bytes:
        return _raw(uid)

    def add_flags(self, uids, flags) -> tuple:
        self.stored.append((sorted(uids), list(flags)))
        return tuple(flags)


@pytest.fixture
def store(tmp_path):
    store = SqliteStateStore(str(tmp_path / "state.sqlite3"), retention_seconds=86400)
    yield store
    store.close()


def _poller(store, server: ScriptedServer | None = None, **mailbox) -> MailboxPoller:
    config = MailboxConfig(id="default", server="imap.example.test", user="u", credentials=PasswordCredentials("p"),
                           reconnect_max_seconds=5, **mailbox)
    return MailboxPoller(config, store, None, Guard(), PollerStatus(), offloader_factory=NullOffloader,
                         delivery_wakeup=threading.Event(), flag_wakeup=threading.Event(),
                         client_factory=(lambda *args, **kwargs: server))


def _keyword_searches(server: ScriptedServer) -> list[list]:
    return [criteria for criteria in server.searches if DONE_KEYWORD in criteria]


def _queued_uids(store) -> set[int]:
    return {item.uid for item in store.list_items("pending", 10)}


# --- the first pass ---------------------------------------------------------------------------------------------

def test_a_first_start_without_keywords_searches_unseen_only():
    server = ScriptedServer(WITHOUT_KEYWORDS)
    poller = _poller(None, server)
    assert poller._first_pass_search(server, WITHOUT_KEYWORDS, changed=False) == [1, 2, 3]
    assert server.searches == [["UNSEEN"]]


def test_a_uidvalidity_change_without_keywords_searches_every_message_for_the_store_to_decide():
    server = ScriptedServer(WITHOUT_KEYWORDS)
    poller = _poller(None, server)
    assert poller._first_pass_search(server, WITHOUT_KEYWORDS, changed=True) == [1, 2, 3]
    assert server.searches == [["ALL"]]


def test_a_server_with_keywords_is_still_searched_for_the_done_keyword():
    server = ScriptedServer(WITH_KEYWORDS)
    poller = _poller(None, server)
    poller._first_pass_search(server, WITH_KEYWORDS, changed=False)
    poller._first_pass_search(server, WITH_KEYWORDS, changed=True)
    assert server.searches == [["UNSEEN", "UNKEYWORD", DONE_KEYWORD], ["UNKEYWORD", DONE_KEYWORD]]


def test_a_first_start_on_a_keywordless_server_queues_every_unseen_email_and_never_names_the_keyword(store):
    server = ScriptedServer(WITHOUT_KEYWORDS)
    poller = _poller(store, server)
    assert poller.run_cycle(server, WITHOUT_KEYWORDS) == 3
    assert _queued_uids(store) == {1, 2, 3}
    assert store.get_checkpoint("INBOX", UIDVALIDITY) == 3
    assert _keyword_searches(server) == []


def test_a_refused_keyword_search_falls_back_once_and_the_mailbox_goes_on(store, caplog):
    caplog.set_level(logging.INFO)
    # Given a server that lists \* but answers BAD to a search for the keyword
    server = ScriptedServer(WITH_KEYWORDS, refuse_keyword_search=True)
    poller = _poller(store, server)
    # When the first start runs, then the mailbox is recreated (a second first pass)
    assert poller.run_cycle(server, WITH_KEYWORDS) == 3
    changed = MailboxState(UIDVALIDITY + 1, 4, WITH_KEYWORDS.permanent_flags, keywords_allowed=True)
    poller.run_cycle(server, changed)
    # Then the keyword was searched for once, each pass fell back (unseen, then every message), nothing looped
    assert _keyword_searches(server) == [["UNSEEN", "UNKEYWORD", DONE_KEYWORD]]
    assert server.searches[1] == ["UNSEEN"] and ["ALL"] in server.searches
    assert _queued_uids(store) == {1, 2, 3}
    assert store.get_checkpoint("INBOX", UIDVALIDITY + 1) == 3
    refusals = [r for r in caplog.records if "refused to search for" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.WARNING


# --- flags ------------------------------------------------------------------------------------------------------

def test_done_emails_on_a_keywordless_server_get_seen_alone(store):
    server = ScriptedServer(WITHOUT_KEYWORDS)
    poller = _poller(store, server)
    for uid in (1, 2):
        store.queue_flag("INBOX", UIDVALIDITY, uid, f"m{uid}@example.test")
    assert poller.apply_flags(server, WITHOUT_KEYWORDS) == 2
    assert server.stored == [([1, 2], ["\\Seen"])]
    assert store.pending_flags("INBOX", 10) == []


def test_without_keywords_and_mark_as_read_a_flag_request_is_cleared_without_a_store(store):
    server = ScriptedServer(WITHOUT_KEYWORDS)
    poller = _poller(store, server, mark_as_read=False, allow_no_server_done_mark=True)
    store.queue_flag("INBOX", UIDVALIDITY, 1, "m1@example.test")
    assert poller.apply_flags(server, WITHOUT_KEYWORDS) == 1
    assert server.stored == []
    assert store.pending_flags("INBOX", 10) == []


# --- the session ------------------------------------------------------------------------------------------------

def _stopped() -> threading.Event:
    stop = threading.Event()
    stop.set()  # the session connects and selects, then ends before its first cycle
    return stop


def test_each_session_on_a_keywordless_server_says_once_how_done_state_is_kept(store, caplog):
    caplog.set_level(logging.INFO)
    server = ScriptedServer(WITHOUT_KEYWORDS)
    poller = _poller(store, server)
    for _ in range(2):
        assert poller._session(_stopped()) == 0.0
    said = [r for r in caplog.records if r.getMessage() == "IMAP: server stores no custom keywords mailbox=default; "
                                                          "done state from the state store and \\Seen"]
    assert len(said) == 2 and all(r.levelno == logging.INFO for r in said)


def test_a_server_with_keywords_says_nothing_about_keywords(store, caplog):
    caplog.set_level(logging.INFO)
    server = ScriptedServer(WITH_KEYWORDS)
    _poller(store, server)._session(_stopped())
    assert "custom keywords" not in caplog.text


@pytest.mark.timeout(10)
def test_no_keywords_and_mark_as_read_false_stop_the_mailbox_in_no_server_done_mark_logged_once(store, caplog):
    caplog.set_level(logging.INFO)
    server = ScriptedServer(WITHOUT_KEYWORDS)
    poller = _poller(store, server, mark_as_read=False)
    stop = threading.Event()  # not set: a session that went on would cycle (search, fetch), then stop at its NOOP
    server.on_noop = stop.set
    # When three sessions start on such a server
    delays = [poller._session(stop) for _ in range(3)]
    # Then none reads anything, each waits the backoff's cap before looking again, and the error is logged once
    assert delays == [5, 5, 5] and server.connects == 3
    assert server.searches == [] and store.list_items("pending", 10) == []
    snapshot = poller.status.snapshot()
    assert snapshot["imap"] == NO_SERVER_DONE_MARK and snapshot["consecutive_errors"] == 3
    assert NO_SERVER_DONE_MARK in snapshot["last_error"]["message"]
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.levelno for r in errors] == [logging.ERROR]
    assert "ALLOW_NO_SERVER_DONE_MARK=true" in errors[0].getMessage()


def test_allow_no_server_done_mark_lets_the_mailbox_run_on_the_state_store_alone(store, caplog):
    caplog.set_level(logging.INFO)
    server = ScriptedServer(WITHOUT_KEYWORDS)
    poller = _poller(store, server, mark_as_read=False, allow_no_server_done_mark=True)
    assert poller._session(_stopped()) == 0.0
    assert poller.status.snapshot()["imap"] == "ok"
    assert "done state from the state store only" in caplog.text


def test_mark_as_read_false_is_fine_where_the_server_stores_keywords(store):
    server = ScriptedServer(WITH_KEYWORDS)
    poller = _poller(store, server, mark_as_read=False)
    assert poller._session(_stopped()) == 0.0
    assert poller.status.snapshot()["imap"] == "ok"
