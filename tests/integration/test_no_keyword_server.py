"""A server that stores no custom keywords, as Exchange Online (issue 18, "Servers without custom keywords"): real
Dovecot whose ACL grants every right but ``w`` (PERMANENTFLAGS ``\\Seen \\Deleted``, no ``\\*``), a real webhook
receiver, both state backends. The state store's done records and ``\\Seen`` carry the done state: every email is
delivered once, with no error loop, across a restart and a UIDVALIDITY change; with MARK_AS_READ=false the mailbox
stops in ``no_server_done_mark`` unless ALLOW_NO_SERVER_DONE_MARK=true."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Iterator

import pytest

from harness.dovecot import DovecotServer, ImapAccount, sample_message
from harness.mail import event_id_of, make_email
from harness.pipeline import service_env
from services.imap_mailbox import MailboxClient
from settings import Settings

pytestmark = pytest.mark.imap

DONE = "$RenderSignalDone"
SEEN = "\\Seen"
SESSION_LINE = "IMAP: server stores no custom keywords mailbox=default; done state from the state store and \\Seen"


@pytest.fixture(scope="module")
def keywordless_dovecot(dovecot_binary: str) -> Iterator[DovecotServer]:
    server = DovecotServer(dovecot_binary, acl_without_write=True).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def account(keywordless_dovecot: DovecotServer) -> ImapAccount:
    return keywordless_dovecot.new_account("nokw")


def imap_problems(caplog, *expected: str) -> list[str]:
    """Every IMAP or poller WARNING/ERROR line but the ``expected`` ones: an error loop shows up here."""
    return [record.getMessage() for record in caplog.records
            if record.levelno >= logging.WARNING and record.name in ("background.poller", "services.imap_mailbox")
            and not any(text in record.getMessage() for text in expected)]


def session_lines(caplog, text: str = SESSION_LINE) -> int:
    return sum(1 for record in caplog.records if record.getMessage().startswith(text))


def flags_of(account: ImapAccount, uids) -> dict[int, tuple[str, ...]]:
    return {uid: account.server.flags(account.user, uid) for uid in uids}


def all_seen(account: ImapAccount, uids) -> bool:
    return all(SEEN in flags for flags in flags_of(account, uids).values())


# --- the server itself -------------------------------------------------------------------------------------------

def test_the_acl_server_offers_no_custom_keywords_and_add_flags_says_so_once(account, caplog):
    caplog.set_level(logging.INFO)
    uid = account.server.append(account.user, sample_message(1), flags=[DONE])
    env = {**account.settings_env(), "ENABLE_BACKGROUND_TASKS": "false", "IMAP_TIMEOUT_SECONDS": "10"}
    from config import MailboxConfig

    with MailboxClient(MailboxConfig.from_settings(Settings.from_env(env))) as client:
        client.connect()
        state = client.select("INBOX")
        assert not state.keywords_allowed and "\\*" not in state.permanent_flags
        assert set(state.permanent_flags) == {SEEN, "\\Deleted"}
        for _ in range(3):
            assert client.add_flags([uid], [SEEN, DONE]) == (SEEN.encode(),)
    assert account.server.flags(account.user, uid) == (SEEN,)  # the APPEND's keyword was not stored either
    assert account.server.keywords(account.user) == ()
    assert caplog.text.count("IMAP: the server keeps no keyword $RenderSignalDone") == 1


# --- MARK_AS_READ=true (the default) ----------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_every_email_is_delivered_once_and_marked_seen_with_no_error_loop_across_a_restart(
        state_backend, account, webhook_receiver, pipeline_factory, caplog):
    caplog.set_level(logging.INFO)
    server, user = account.server, account.user
    # Given a mailbox holding a read email, an unseen one older than FIRST_START_MAX_AGE_HOURS and a fresh one
    server.append(user, make_email(subject="already read"), flags=[SEEN])
    old_uid = server.append(user, make_email(subject="ancient"),
                            internaldate=datetime.now(timezone.utc) - timedelta(hours=100))
    fresh = make_email(subject="fresh")
    fresh_uid = server.append(user, fresh)
    env = service_env(account, webhook_receiver, **state_backend)
    # When the service starts on it for the first time and 12 more emails arrive, one after the other
    pipeline = pipeline_factory(env)
    raws = [make_email(subject=f"delivery {n}") for n in range(12)]
    uids = [server.append(user, raw) for raw in raws]
    # Then the fresh one and the 12 are delivered, each once, and all of them end up \Seen, with no keyword
    webhook_receiver.wait_for(13, timeout=40)
    pipeline.wait_until(lambda: all_seen(account, [fresh_uid, *uids]), timeout=20, what="all \\Seen")
    pipeline.wait_until(lambda: not pipeline.store.pending_flags("INBOX", 10), what="no flag request left")
    time.sleep(1.5)
    expected = sorted(event_id_of(raw) for raw in [fresh, *raws])
    assert sorted(webhook_receiver.delivered_ids()) == expected
    assert all(DONE not in flags for flags in flags_of(account, [fresh_uid, *uids]).values())
    assert server.keywords(user) == ()
    # and the old unseen one is passed over (the first start's age limit), left as it was
    counters = pipeline.store.counters()
    assert counters["emails_skipped"]["older_than_first_start_window"] == 1
    assert SEEN not in server.flags(user, old_uid)
    # and nothing went wrong on the way: no IMAP warning or error, no dropped flag request, one line per session
    assert imap_problems(caplog) == []
    assert "flag_requests_dropped" not in counters
    assert session_lines(caplog) == 1
    snapshot = pipeline.runtime.poller_status.snapshot()
    assert (snapshot["imap"], snapshot["consecutive_errors"]) == ("ok", 0)
    pipeline.stop()
    # When the service restarts on the same state and one more email arrives
    pipeline = pipeline_factory(env)
    pipeline.wait_until(lambda: pipeline.runtime.poller_status.last_success_at is not None, what="first cycle")
    after = make_email(subject="after the restart")
    after_uid = server.append(user, after)
    # Then only that one is delivered; nothing is sent twice
    webhook_receiver.wait_for(14, timeout=20)
    pipeline.wait_until(lambda: all_seen(account, [after_uid]), what="the new one \\Seen")
    time.sleep(1.5)
    assert sorted(webhook_receiver.delivered_ids()) == sorted([*expected, event_id_of(after)])
    assert imap_problems(caplog) == []
    assert session_lines(caplog) == 2


@pytest.mark.timeout(120)
def test_a_uidvalidity_change_sends_nothing_the_state_store_knows_again(state_backend, account, webhook_receiver,
                                                                       pipeline_factory, caplog):
    caplog.set_level(logging.INFO)
    server, user = account.server, account.user
    env = service_env(account, webhook_receiver, **state_backend)
    pipeline = pipeline_factory(env)
    raws = [make_email(subject=f"before {n}") for n in range(4)]
    uids = [server.append(user, raw) for raw in raws]
    webhook_receiver.wait_for(4, timeout=20)
    pipeline.wait_until(lambda: all_seen(account, uids), what="all \\Seen")
    pipeline.wait_until(lambda: not pipeline.store.pending_flags("INBOX", 10), what="no flag request left")
    pipeline.stop()
    # Given the mailbox was recreated (same messages, new UIDVALIDITY, renumbered from 1), a person marked one of the
    # delivered emails unread again, and two new emails came meanwhile, one of them already read by a person
    old = server.uidvalidity(user)
    new = server.recreate_mailbox(user)
    assert new != old
    client = server.client(user, tls=False)
    try:
        client.select_folder("INBOX")
        client.remove_flags([1], [SEEN.encode()])
    finally:
        client.logout()
    unseen_new, read_new = make_email(subject="new, unseen"), make_email(subject="new, read by a person")
    server.append(user, unseen_new)
    server.append(user, read_new, flags=[SEEN])
    # When the service starts again on the same state
    pipeline = pipeline_factory(env)
    pipeline.wait_until(lambda: pipeline.runtime.poller_status.uidvalidity == new, what="new uidvalidity seen")
    # Then only the two new emails are delivered (the state store decides, not \Seen): nothing is sent twice
    webhook_receiver.wait_for(6, timeout=20)
    time.sleep(1.5)
    assert sorted(webhook_receiver.delivered_ids()) == sorted(event_id_of(raw) for raw in [*raws, unseen_new, read_new])
    # and every message is \Seen again, the one marked unread too (its done record queued its flag again)
    pipeline.wait_until(lambda: all_seen(account, server.mailbox_uids(user)), what="all \\Seen again")
    assert imap_problems(caplog, "IMAP: UIDVALIDITY of INBOX is now") == []
    assert "flag_requests_dropped" not in pipeline.store.counters()


# --- MARK_AS_READ=false -------------------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_mark_as_read_false_stops_the_mailbox_in_no_server_done_mark_logged_once(account, webhook_receiver,
                                                                                   pipeline_factory, caplog):
    caplog.set_level(logging.INFO)
    server, user = account.server, account.user
    uid = server.append(user, make_email(subject="waiting"))
    # When the service starts with MARK_AS_READ=false on a server that stores no custom keywords
    pipeline = pipeline_factory(service_env(account, webhook_receiver, MARK_AS_READ="false"))
    status = pipeline.runtime.poller_status
    pipeline.wait_until(lambda: status.snapshot()["imap"] == "no_server_done_mark", what="no_server_done_mark")
    # Then it looks again at the backoff's cap (1 s here), reading nothing, and says so once
    pipeline.wait_until(lambda: status.snapshot()["consecutive_errors"] >= 3, timeout=10, what="three sessions")
    snapshot = status.snapshot()
    assert snapshot["state"] == "backoff" and "no_server_done_mark" in snapshot["last_error"]["message"]
    errors = imap_problems(caplog)
    assert len(errors) == 1 and errors[0].startswith("IMAP: no_server_done_mark mailbox=default:")
    assert webhook_receiver.events == [] and pipeline.store.list_items("pending", 10) == []
    assert SEEN not in server.flags(user, uid)


@pytest.mark.timeout(120)
def test_allow_no_server_done_mark_delivers_once_on_the_state_store_alone_across_a_restart(
        state_backend, account, webhook_receiver, pipeline_factory, caplog):
    caplog.set_level(logging.INFO)
    server, user = account.server, account.user
    env = service_env(account, webhook_receiver, MARK_AS_READ="false", ALLOW_NO_SERVER_DONE_MARK="true",
                      **state_backend)
    pipeline = pipeline_factory(env)
    pipeline.wait_until(lambda: pipeline.runtime.poller_status.last_success_at is not None, what="first cycle")
    raws = [make_email(subject=f"store only {n}") for n in range(5)]
    uids = [server.append(user, raw) for raw in raws]
    webhook_receiver.wait_for(5, timeout=20)
    # The flag requests are cleared without a STORE: the server keeps no mark of any kind
    pipeline.wait_until(lambda: not pipeline.store.pending_flags("INBOX", 10), what="no flag request left")
    assert all(flags == () for flags in flags_of(account, uids).values())
    pipeline.stop()
    # When the service restarts on the same state
    pipeline = pipeline_factory(env)
    pipeline.wait_until(lambda: pipeline.runtime.poller_status.last_success_at is not None, what="first cycle")
    after = make_email(subject="after the restart")
    server.append(user, after)
    webhook_receiver.wait_for(6, timeout=20)
    time.sleep(1.5)
    # Then nothing is sent twice, nothing went wrong, and each session said once that the store alone decides
    assert sorted(webhook_receiver.delivered_ids()) == sorted(event_id_of(raw) for raw in [*raws, after])
    warned = "IMAP: server stores no custom keywords mailbox=default; done state from the state store only"
    assert imap_problems(caplog, warned) == []
    assert session_lines(caplog, warned) == 2
