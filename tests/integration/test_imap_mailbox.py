"""services/imap_mailbox.py against a real Dovecot: TLS modes, auth errors, UID verbs, PEEK, body structure,
flags, IDLE, and the timeouts of a stalled server (paused with SIGSTOP, master and children)."""

import logging
import socket
import threading
import time

import pytest

from config import MailboxConfig
from harness.dovecot import DONE_KEYWORD, sample_message
from harness.ports import free_port
from services.imap_mailbox import (
    ImapAuthError,
    ImapConnectionError,
    ImapError,
    ImapMessageGone,
    ImapTimeout,
    MailboxClient,
    MailboxState,
    PartInfo,
    text_parts,
    walk_parts,
)
from settings import Settings

pytestmark = pytest.mark.imap

DONE = "$RenderSignalDone"

NESTED = b"""\
From: sender@example.com\r
To: inbox@example.com\r
Subject: nested\r
Message-ID: <nested@example.com>\r
MIME-Version: 1.0\r
Content-Type: multipart/mixed; boundary="outer"\r
\r
--outer\r
Content-Type: multipart/alternative; boundary="alt"\r
\r
--alt\r
Content-Type: text/plain; charset=utf-8\r
Content-Transfer-Encoding: quoted-printable\r
\r
Plain body caf=C3=A9\r
--alt\r
Content-Type: text/html; charset=utf-8\r
\r
<p>HTML body with a <a href=3D"https://www.dropbox.com/s/x">link</a></p>\r
--alt--\r
--outer\r
Content-Type: application/pdf; name="doc.pdf"\r
Content-Disposition: attachment; filename="doc.pdf"\r
Content-Transfer-Encoding: base64\r
\r
JVBERi0xLjQK\r
--outer\r
Content-Type: text/plain; charset=us-ascii\r
Content-Disposition: attachment; filename="notes.txt"\r
\r
attached notes, not a body\r
--outer\r
Content-Type: message/rfc822\r
\r
From: other@example.com\r
Subject: forwarded\r
MIME-Version: 1.0\r
Content-Type: multipart/alternative; boundary="inner"\r
\r
--inner\r
Content-Type: text/plain\r
\r
forwarded plain\r
--inner\r
Content-Type: text/html\r
\r
<p>forwarded html</p>\r
--inner--\r
--outer\r
Content-Type: text/html; charset=iso-8859-1\r
Content-Disposition: inline\r
\r
<p>second inline html</p>\r
--outer\r
Content-Type: text/plain; charset=utf-8\r
Content-Disposition: inline; filename="readme.txt"\r
\r
an inline file is still a file\r
--outer--\r
"""


def make_mailbox(account, mode: str = "ssl", timeout: float = 10, **changes) -> MailboxConfig:
    """The MailboxConfig of the test account's environment (``changes`` are Settings fields, e.g. imap_port)."""
    env = {**account.settings_env(mode), "ENABLE_BACKGROUND_TASKS": "false", "IMAP_TIMEOUT_SECONDS": str(timeout)}
    settings = Settings.from_env(env)
    return MailboxConfig.from_settings(settings.replace(**changes) if changes else settings)


@pytest.fixture
def mailbox(imap_account):
    client = MailboxClient(make_mailbox(imap_account))
    client.connect()
    yield client
    client.close()


class LeaseLostForTest(Exception):
    pass


class CountingGuard:
    def __init__(self) -> None:
        self.calls = 0
        self.lost = False

    def check_local(self) -> None:
        self.calls += 1
        if self.lost:
            raise LeaseLostForTest("lease gone")


# --- connection and TLS ---------------------------------------------------------------------------------------

def test_it_connects_over_imaps_verifying_the_configured_ca(imap_account):
    with MailboxClient(make_mailbox(imap_account, "ssl")) as client:
        client.connect()
        assert client.connected and client.has_idle()
        assert "IMAP4REV1" in client.capabilities()
    assert not client.connected


def test_it_connects_with_starttls(imap_account, caplog):
    caplog.set_level(logging.INFO, logger="services.imap_mailbox")
    with MailboxClient(make_mailbox(imap_account, "starttls")) as client:
        client.connect()
        assert client.select("INBOX").uidnext == 1
    assert "STARTTLS" in caplog.text
    assert "plain-text" not in caplog.text


def test_a_plain_connection_works_and_warns_at_connect(imap_account, caplog):
    caplog.set_level(logging.WARNING, logger="services.imap_mailbox")
    with MailboxClient(make_mailbox(imap_account, "plain")) as client:
        client.connect()
        client.select("INBOX")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"IMAP: plain-text connection to 127.0.0.1:{imap_account.port} (no TLS): the password and "
                        f"mail cross the network unencrypted"]


def test_imaps_without_the_ca_file_fails_certificate_verification(imap_account):
    # The system store does not trust the throw-away CA: verification is on by default.
    client = MailboxClient(make_mailbox(imap_account, "ssl", imap_ca_file=None))
    with pytest.raises(ImapConnectionError, match="not trusted") as caught:
        client.connect()
    assert caught.value.op == "tls"
    assert not client.connected


def test_a_wrong_password_raises_auth_error_naming_server_and_user_never_the_password(imap_account, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, imapclient's protocol trace included
    secret = "Wrong-Secret-5f1c9a"
    client = MailboxClient(make_mailbox(imap_account, "ssl", email_password=secret))
    with pytest.raises(ImapAuthError) as caught:
        client.connect()
    message = str(caught.value)
    assert imap_account.user in message and f"127.0.0.1:{imap_account.ssl_port}" in message
    assert caught.value.op == "login"
    assert secret not in message and secret not in repr(caught.value.__cause__)
    assert secret not in caplog.text
    assert not client.connected


def test_a_refused_connection_raises_connection_error(imap_account):
    client = MailboxClient(make_mailbox(imap_account, "plain", imap_port=free_port()))
    with pytest.raises(ImapConnectionError) as caught:
        client.connect()
    assert caught.value.op == "connect"


def test_verbs_on_a_closed_client_raise_and_close_never_raises(imap_account):
    client = MailboxClient(make_mailbox(imap_account))
    client.close()
    with pytest.raises(ImapConnectionError):
        client.select("INBOX")
    client.connect()
    client.close()
    client.close()
    with pytest.raises(ImapConnectionError):
        client.noop()


def test_the_guard_is_checked_before_every_command_and_its_error_propagates(imap_account, dovecot_server):
    dovecot_server.append(imap_account.user, sample_message(1))
    guard = CountingGuard()
    client = MailboxClient(make_mailbox(imap_account), guard=guard)
    try:
        client.connect()
        after_connect = guard.calls
        assert after_connect >= 2  # connection, LOGIN
        client.select("INBOX")
        client.search_uids(["ALL"])
        client.fetch_meta([1])
        client.add_flags([1], ["\\Flagged"])
        client.noop()
        assert guard.calls == after_connect + 5
        guard.lost = True
        with pytest.raises(LeaseLostForTest):
            client.add_flags([1], ["\\Seen"])
    finally:
        client.close()
    assert "\\Seen" not in dovecot_server.flags(imap_account.user, 1)


# --- mailbox verbs --------------------------------------------------------------------------------------------

def test_select_reports_uidvalidity_uidnext_exists_and_that_keywords_are_allowed(mailbox, imap_account,
                                                                                 dovecot_server):
    dovecot_server.append(imap_account.user, sample_message(1))
    dovecot_server.append(imap_account.user, sample_message(2))
    state = mailbox.select("INBOX")
    assert isinstance(state, MailboxState)
    assert state.uidvalidity == dovecot_server.uidvalidity(imap_account.user)
    assert state.uidnext == 3 and mailbox.search_uids(["ALL"]) == [1, 2]
    assert "\\Seen" in state.permanent_flags and "\\*" in state.permanent_flags
    assert state.keywords_allowed
    assert mailbox.mailbox_state == state


def test_select_of_a_missing_mailbox_raises_imap_error_and_keeps_the_connection(mailbox):
    with pytest.raises(ImapError) as caught:
        mailbox.select("NoSuchFolder")
    assert caught.value.op == "select" and not isinstance(caught.value, ImapConnectionError)
    assert mailbox.select("INBOX").uidnext == 1


def test_uids_after_filters_the_star_range_quirk_and_respects_the_limit(mailbox, imap_account, dovecot_server):
    uids = [dovecot_server.append(imap_account.user, sample_message(n)) for n in range(5)]
    mailbox.select("INBOX")
    last = uids[-1]
    # `UID n:*` with n above every UID still matches the highest message:
    assert mailbox.search_uids(["UID", f"{last + 1}:*"]) == [last]
    assert mailbox.uids_after(last, 100) == []
    assert mailbox.uids_after(0, 100) == uids
    assert mailbox.uids_after(uids[1], 2) == uids[2:4]
    assert mailbox.uids_after(0, 0) == []


def test_search_by_message_id_and_for_unseen_not_done(mailbox, imap_account, dovecot_server):
    plain = dovecot_server.append(imap_account.user, sample_message(1))
    done = dovecot_server.append(imap_account.user, sample_message(2), flags=["\\Seen", DONE])
    read_by_a_person = dovecot_server.append(imap_account.user, sample_message(3), flags=["\\Seen"])
    mailbox.select("INBOX")
    assert mailbox.search_uids(["HEADER", "Message-ID", "<m2@example.com>"]) == [done]
    assert mailbox.search_uids(["UNSEEN", "UNKEYWORD", DONE]) == [plain]
    assert mailbox.search_uids(["UNKEYWORD", DONE]) == [plain, read_by_a_person]


def test_fetching_uses_peek_and_leaves_seen_unset(mailbox, imap_account, dovecot_server):
    uid = dovecot_server.append(imap_account.user, sample_message(7))
    mailbox.select("INBOX")
    meta = mailbox.fetch_meta([uid, 999])[uid]
    assert list(mailbox.fetch_meta([uid, 999])) == [uid]  # a UID that does not exist is simply absent
    assert meta.uid == uid and meta.size == len(sample_message(7))
    assert meta.internaldate.tzinfo is not None and meta.internaldate.utcoffset().total_seconds() == 0
    assert b"Message-ID: <m7@example.com>" in meta.header_bytes
    assert "\\Seen" not in meta.flags
    assert mailbox.fetch_full(uid) == sample_message(7)
    assert mailbox.fetch_partial(uid, "1", 4) == b"body"
    assert "\\Seen" not in dovecot_server.flags(imap_account.user, uid)
    with pytest.raises(ImapMessageGone):
        mailbox.fetch_full(999)


def test_fetch_partial_returns_at_most_max_bytes(mailbox, imap_account, dovecot_server):
    body = b"x" * 5000
    raw = b"Subject: big\r\nMessage-ID: <big@example.com>\r\n\r\n" + body
    uid = dovecot_server.append(imap_account.user, raw)
    mailbox.select("INBOX")
    assert mailbox.fetch_partial(uid, "1", 1000) == body[:1000]
    assert mailbox.fetch_partial(uid, "1", 10_000) == body
    with pytest.raises(ImapError):
        mailbox.fetch_partial(uid, "1]<0.1> BODY[", 10)  # sections are validated, never pasted raw


def test_text_parts_of_a_nested_multipart_skip_attachments_and_forwarded_messages(mailbox, imap_account,
                                                                                   dovecot_server):
    uid = dovecot_server.append(imap_account.user, NESTED)
    mailbox.select("INBOX")
    structure = mailbox.fetch_meta([uid])[uid].bodystructure
    leaves = [(p.part, p.content_type, p.is_attachment) for p in walk_parts(structure)]
    assert leaves == [("1.1", "text/plain", False), ("1.2", "text/html", False),
                      ("2", "application/pdf", True), ("3", "text/plain", True),
                      ("4", "message/rfc822", False), ("5", "text/html", False), ("6", "text/plain", True)]
    parts = text_parts(structure)
    assert [p.part for p in parts] == ["1.1", "1.2", "5"]
    plain, html, second = parts
    assert plain == PartInfo(part="1.1", content_type="text/plain", charset="utf-8",
                             transfer_encoding="quoted-printable", size=plain.size, is_attachment=False)
    assert plain.size > 0
    assert html.charset == "utf-8" and second.charset == "iso-8859-1"
    assert mailbox.text_parts(structure) == parts
    assert mailbox.fetch_partial(uid, "1.2", 4096).startswith(b"<p>HTML body")
    assert mailbox.fetch_partial(uid, "1.1", 4096).startswith(b"Plain body caf=C3=A9")


def test_text_parts_of_a_single_part_message_is_part_1(mailbox, imap_account, dovecot_server):
    uid = dovecot_server.append(imap_account.user, sample_message(1))
    mailbox.select("INBOX")
    parts = text_parts(mailbox.fetch_meta([uid])[uid].bodystructure)
    assert parts == [PartInfo(part="1", content_type="text/plain", charset="utf-8", transfer_encoding="7bit",
                              size=len(b"body 1\r\n"), is_attachment=False)]


def test_add_flags_sets_seen_and_the_done_keyword(mailbox, imap_account, dovecot_server):
    first = dovecot_server.append(imap_account.user, sample_message(1))
    second = dovecot_server.append(imap_account.user, sample_message(2))
    mailbox.select("INBOX")
    sent = mailbox.add_flags([first], [b"\\Seen", DONE])
    assert sent == (b"\\Seen", DONE.encode())
    assert set(dovecot_server.flags(imap_account.user, first)) >= {"\\Seen", DONE}
    assert "\\Seen" not in dovecot_server.flags(imap_account.user, second)
    assert mailbox.search_uids(["UNSEEN", "UNKEYWORD", DONE]) == [second]


def test_add_flags_stores_no_keyword_where_the_mailbox_allows_none(mailbox, imap_account, dovecot_server):
    # Dovecot always allows keywords; a server that does not is simulated by narrowing the selected state.
    uid = dovecot_server.append(imap_account.user, sample_message(1))
    state = mailbox.select("INBOX")
    mailbox._state = MailboxState(state.uidvalidity, state.uidnext,
                                  ("\\Seen", "\\Deleted"), keywords_allowed=False)
    assert mailbox.add_flags([uid], [b"\\Seen", DONE]) == (b"\\Seen",)
    assert dovecot_server.flags(imap_account.user, uid) == ("\\Seen",)


# --- IDLE -----------------------------------------------------------------------------------------------------

def test_idle_wait_returns_exists_soon_after_an_append_from_another_connection(mailbox, imap_account,
                                                                               dovecot_server):
    mailbox.select("INBOX")
    mailbox.idle_start()
    uid = dovecot_server.append(imap_account.user, sample_message(1))
    appended_at = time.monotonic()
    responses = mailbox.idle_wait(10)
    latency = time.monotonic() - appended_at
    print(f"\nIDLE: EXISTS {latency * 1000:.0f} ms after APPEND")
    assert (1, b"EXISTS") in responses
    assert latency < 5
    mailbox.idle_done()
    assert mailbox.uids_after(0, 10) == [uid]


def test_short_quiet_idle_waits_cost_no_round_trip_until_the_alive_check_is_due(imap_account, dovecot_server):
    # The guard is consulted before every command sent, so it counts DONE/IDLE round trips.
    guard = CountingGuard()
    client = MailboxClient(make_mailbox(imap_account), guard=guard, idle_alive_after=0.6)
    client.connect()
    try:
        client.select("INBOX")
        client.idle_start()
        sent = guard.calls
        started = time.monotonic()
        assert client.idle_wait(0.2) == []
        assert client.idle_wait(0.2, check_alive=False) == []
        assert guard.calls == sent  # silent for less than idle_alive_after: nothing sent
        time.sleep(0.3)
        assert client.idle_wait(0.1) == []  # silent for 0.6 s now: DONE → OK → IDLE proves it alive
        assert guard.calls == sent + 2 and client.idling
        assert time.monotonic() - started < 3
        dovecot_server.append(imap_account.user, sample_message(1))
        assert (1, b"EXISTS") in client.idle_wait(10)
        with pytest.raises(ImapError):
            client.search_uids(["ALL"])  # no command while idling
        client.idle_done()
        assert not client.idling
        assert isinstance(client.noop(), list)
        assert client.uids_after(0, 10) == [1]
    finally:
        client.close()


@pytest.mark.timeout(30)
def test_a_connection_lost_during_idle_raises_connection_error_promptly(private_dovecot):
    import psutil

    account = private_dovecot.new_account()
    client = MailboxClient(make_mailbox(account, "plain"))
    # Given an idling session whose server process dies (EOF without a word)
    client.connect()
    client.select("INBOX")
    client.idle_start()
    killed = 0
    for child in psutil.Process(private_dovecot.proc.pid).children(recursive=True):
        if child.name().split("/")[-1] == "imap":
            child.kill()
            killed += 1
    assert killed == 1
    started = time.monotonic()
    with pytest.raises(ImapConnectionError) as caught:
        client.idle_wait(5)
    assert caught.value.op == "idle" and time.monotonic() - started < 2 and not client.connected
    # Given an idling session the server ends with BYE
    client.connect()
    client.select("INBOX")
    client.idle_start()
    private_dovecot.kick(account.user)
    with pytest.raises(ImapConnectionError, match="BYE") as caught:
        client.idle_wait(5)
    assert caught.value.op == "idle" and not client.connected
    client.close()


# --- timeouts (private server, paused) ------------------------------------------------------------------------

@pytest.fixture
def stalled(private_dovecot):
    """A private server and an account on it; the server is resumed after the test whatever happens."""
    account = private_dovecot.new_account()
    yield private_dovecot, account
    if private_dovecot.paused:
        private_dovecot.resume()


def _timeout_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.getMessage().startswith("IMAP: timeout")]


@pytest.mark.timeout(30)
def test_a_server_paused_during_fetch_times_out_with_the_exact_log_line(stalled, caplog):
    server, account = stalled
    caplog.set_level(logging.WARNING, logger="services.imap_mailbox")
    uid = server.append(account.user, sample_message(1))
    client = MailboxClient(make_mailbox(account, timeout=1))
    client.connect()
    client.select("INBOX")
    server.pause()
    started = time.monotonic()
    with pytest.raises(ImapTimeout) as caught:
        client.fetch_full(uid)
    elapsed = time.monotonic() - started
    assert (caught.value.op, caught.value.seconds) == ("fetch", 1.0)
    assert str(caught.value) == "IMAP: timeout after 1s during fetch"
    assert _timeout_warnings(caplog) == ["IMAP: timeout after 1s during fetch"]
    assert 0.9 < elapsed < 3
    assert not client.connected  # the socket was closed hard
    client.close()


@pytest.mark.timeout(30)
def test_a_server_paused_during_idle_wait_times_out_in_idle(stalled, caplog):
    server, account = stalled
    caplog.set_level(logging.WARNING, logger="services.imap_mailbox")
    # a reconciliation interval of 1 s: idle_wait checks liveness after 1 s of silence
    client = MailboxClient(make_mailbox(account, timeout=1, email_polling_interval_seconds=1.0))
    client.connect()
    client.select("INBOX")
    client.idle_start()
    server.pause()
    started = time.monotonic()
    with pytest.raises(ImapTimeout) as caught:
        client.idle_wait(1)
    elapsed = time.monotonic() - started
    assert caught.value.op == "idle"
    assert _timeout_warnings(caplog) == ["IMAP: timeout after 1s during idle"]
    assert elapsed < 1 + 2 * 1 + 1  # wait + bounded DONE/IDLE round trip + grace
    assert not client.connected


@pytest.mark.timeout(30)
def test_a_paused_server_times_out_idle_done(stalled):
    server, account = stalled
    client = MailboxClient(make_mailbox(account, timeout=1))
    client.connect()
    client.select("INBOX")
    client.idle_start()
    server.pause()
    assert client.idle_wait(0.2, check_alive=False) == []
    with pytest.raises(ImapTimeout) as caught:
        client.idle_done()
    assert caught.value.op == "idle"


@pytest.mark.timeout(30)
def test_connecting_to_a_listener_that_never_speaks_tls_times_out(imap_account, caplog):
    caplog.set_level(logging.WARNING, logger="services.imap_mailbox")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)  # the kernel completes the TCP handshake; nobody ever answers
        port = listener.getsockname()[1]
        client = MailboxClient(make_mailbox(imap_account, "ssl", timeout=1, imap_port=port))
        started = time.monotonic()
        with pytest.raises(ImapTimeout) as caught:
            client.connect()
        elapsed = time.monotonic() - started
        plain = MailboxClient(make_mailbox(imap_account, "plain", timeout=1, imap_port=port))
        with pytest.raises(ImapTimeout) as caught_plain:
            plain.connect()  # no greeting either
    assert caught.value.op == "tls" and elapsed < 3
    assert caught_plain.value.op == "connect"
    assert _timeout_warnings(caplog) == ["IMAP: timeout after 1s during tls", "IMAP: timeout after 1s during connect"]


@pytest.mark.timeout(30)
def test_connecting_to_a_paused_server_times_out(stalled):
    server, account = stalled
    server.pause()
    with pytest.raises(ImapTimeout) as caught:
        MailboxClient(make_mailbox(account, "ssl", timeout=1)).connect()
    assert caught.value.op == "tls"
    with pytest.raises(ImapTimeout) as caught:
        MailboxClient(make_mailbox(account, "plain", timeout=1)).connect()
    assert caught.value.op == "connect"


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_thread_count_is_unchanged_over_three_pause_resume_rounds_of_fetch_and_idle(stalled):
    server, account = stalled
    uid = server.append(account.user, sample_message(1))
    mailbox = make_mailbox(account, timeout=1)
    client = MailboxClient(mailbox, idle_alive_after=0.5)
    threads_before = threading.active_count()
    for _ in range(3):
        client.connect()
        client.select("INBOX")
        server.pause()
        with pytest.raises(ImapTimeout):
            client.fetch_full(uid)
        server.resume()
        client.connect()
        client.select("INBOX")
        client.idle_start()
        server.pause()
        with pytest.raises(ImapTimeout):
            client.idle_wait(0.5)
        server.resume()
        # after SIGCONT the server works again
        client.connect()
        client.select("INBOX")
        assert client.fetch_full(uid) == sample_message(1)
        assert threading.active_count() == threads_before
    client.close()
    assert threading.active_count() == threads_before


# --- a large mailbox ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_checkpoint_and_unseen_not_done_searches_stay_fast_on_10000_done_messages(done_mailbox_10k):
    client = MailboxClient(make_mailbox(done_mailbox_10k.account))
    client.connect()
    try:
        state = client.select("INBOX")
        assert len(client.search_uids(["ALL"])) == 10_000
        checkpoint = state.uidnext - 1
        started = time.monotonic()
        assert client.uids_after(checkpoint, 100) == []
        after_checkpoint = time.monotonic() - started
        started = time.monotonic()
        assert client.search_uids(["UNSEEN", "UNKEYWORD", DONE_KEYWORD]) == []
        unseen_not_done = time.monotonic() - started
        started = time.monotonic()
        tail = client.uids_after(checkpoint - 5, 100)
        five_new = time.monotonic() - started
    finally:
        client.close()
    assert tail == list(range(checkpoint - 4, checkpoint + 1))
    print(f"\n10,000 done messages: uids_after(checkpoint) {after_checkpoint * 1000:.1f} ms, "
          f"UNSEEN UNKEYWORD {unseen_not_done * 1000:.1f} ms, last 5 {five_new * 1000:.1f} ms")
    assert after_checkpoint < 5 and unseen_not_done < 5  # generous; the figures are printed
