"""Self-tests of the Dovecot fixture (harness/dovecot.py): the rig must be right before anything is proven
with it."""

import datetime as dt
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from imapclient import IMAPClient

from harness.dovecot import DONE_KEYWORD, DovecotServer, sample_message
from settings import Settings

pytestmark = pytest.mark.imap

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


_message = sample_message


def _greeting(sock: socket.socket) -> bytes:
    return sock.recv(256)


def test_plain_listener_greets_and_offers_starttls_and_idle(dovecot_server):
    with socket.create_connection((dovecot_server.host, dovecot_server.port), timeout=5) as sock:
        greeting = _greeting(sock)
    assert greeting.startswith(b"* OK")
    assert b"STARTTLS" in greeting and b"IDLE" in greeting


def test_imaps_listener_verifies_with_the_fixture_ca(dovecot_server):
    context = ssl.create_default_context(cafile=dovecot_server.ca_pem_path)
    with socket.create_connection((dovecot_server.host, dovecot_server.ssl_port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            assert _greeting(sock).startswith(b"* OK")
            assert sock.version() in ("TLSv1.2", "TLSv1.3")
    # the certificate also names localhost
    with socket.create_connection((dovecot_server.host, dovecot_server.ssl_port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            assert _greeting(sock).startswith(b"* OK")


def test_a_default_ssl_context_rejects_the_fixture_certificate(dovecot_server):
    # The system store does not know the throw-away CA: verification must fail, or the TLS tests prove nothing.
    context = ssl.create_default_context()
    with socket.create_connection((dovecot_server.host, dovecot_server.ssl_port), timeout=5) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            context.wrap_socket(raw, server_hostname="127.0.0.1")


def test_append_returns_the_new_uid_and_the_helpers_read_it_back(dovecot_server, imap_account):
    user = imap_account.user
    when = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
    first = dovecot_server.append(user, _message(1))
    second = dovecot_server.append(user, _message(2), flags=["\\Seen", DONE_KEYWORD], internaldate=when)
    assert second > first >= 1
    assert dovecot_server.mailbox_uids(user) == [first, second]
    assert "\\Seen" not in dovecot_server.flags(user, first)
    assert set(dovecot_server.flags(user, second)) >= {"\\Seen", DONE_KEYWORD}
    assert DONE_KEYWORD in dovecot_server.keywords(user)


def test_imap_account_is_a_fresh_user_with_settings_for_the_service(imap_account):
    env = imap_account.settings_env()
    assert env["IMAP_SERVER"] == "127.0.0.1" and env["IMAP_PORT"] == str(imap_account.ssl_port)
    assert env["IMAP_USE_SSL"] == "true" and env["IMAP_CA_FILE"] == imap_account.ca_file
    settings = Settings.from_env({**env, "ENABLE_BACKGROUND_TASKS": "false"})
    assert settings.email_address == imap_account.user and settings.imap_use_ssl
    env = {**imap_account.settings_env("starttls"), "ENABLE_BACKGROUND_TASKS": "false"}
    assert Settings.from_env(env).imap_starttls
    assert imap_account.server.mailbox_uids(imap_account.user) == []


@pytest.mark.slow
def test_build_maildir_writes_10000_done_messages_in_seconds(dovecot_server, done_mailbox_10k):
    user = done_mailbox_10k.account.user
    client = dovecot_server.client(user)
    try:
        started = time.monotonic()
        info = client.select_folder("INBOX", readonly=True)
        first_select = time.monotonic() - started
        done = client.search(["KEYWORD", DONE_KEYWORD])
        unseen_not_done = client.search(["UNSEEN", "UNKEYWORD", DONE_KEYWORD])
    finally:
        client.logout()
    print(f"\nbuild_maildir: 10,000 messages in {done_mailbox_10k.build_seconds:.2f} s; "
          f"Dovecot's first SELECT {first_select:.2f} s")
    assert done_mailbox_10k.count == 10_000
    assert info[b"EXISTS"] == 10_000
    assert len(done) == 10_000 and unseen_not_done == []
    assert done_mailbox_10k.build_seconds < 30  # generous: 1-5 s here, depending on the disk


def test_build_maildir_can_leave_messages_unseen_and_unflagged(dovecot_server, imap_account):
    dovecot_server.build_maildir(imap_account.user, [_message(1), _message(2)], keyword=None, seen=False)
    uids = dovecot_server.mailbox_uids(imap_account.user)
    assert len(uids) == 2
    assert "\\Seen" not in dovecot_server.flags(imap_account.user, uids[0])


def test_recreate_mailbox_gives_a_new_uidvalidity_and_keeps_the_messages(dovecot_server, imap_account):
    user = imap_account.user
    dovecot_server.build_maildir(user, [_message(n) for n in range(3)])
    dovecot_server.append(user, _message(3))
    before = dovecot_server.uidvalidity(user)
    new = dovecot_server.recreate_mailbox(user)
    assert new != before and dovecot_server.uidvalidity(user) == new
    uids = dovecot_server.mailbox_uids(user)
    assert len(uids) == 4
    assert DONE_KEYWORD in dovecot_server.flags(user, uids[0])  # flags survive, they live in the file names
    client = dovecot_server.client(user)
    try:
        client.select_folder("INBOX", readonly=True)
        ids = {int(data[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].split(b"<m")[1].split(b"@")[0])
               for data in client.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"]).values()}
    finally:
        client.logout()
    assert ids == {0, 1, 2, 3}


@pytest.mark.timeout(30)
def test_pause_stops_the_master_and_every_child_and_resume_brings_them_back(private_dovecot):
    account = private_dovecot.new_account()
    client = private_dovecot.client(account.user, timeout=1)
    try:
        pids = private_dovecot._group_pids()
        names = {psutil.Process(pid).name() for pid in pids}
        assert any("imap" in name for name in names), names  # the session's imap/imap-login processes
        private_dovecot.pause()
        # SIGSTOP is delivered asynchronously: give the kernel a moment before looking.
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and not all(_stopped(pid) for pid in pids):
            time.sleep(0.01)
        assert {pid: psutil.Process(pid).status() for pid in pids} == {pid: psutil.STATUS_STOPPED for pid in pids}
        with pytest.raises(socket.timeout):
            client.noop()
    finally:
        private_dovecot.resume()
        client.shutdown()
    # (a session process may exit once its client is gone: a vanished process is not a stopped one)
    assert not any(_status(pid) == psutil.STATUS_STOPPED for pid in pids)
    assert private_dovecot.mailbox_uids(account.user) == []


@pytest.mark.timeout(30)
def test_stop_leaves_no_process_and_no_directory(dovecot_binary):
    server = DovecotServer(dovecot_binary).start()
    account = server.new_account()
    client = server.client(account.user)  # an open session: its processes must go too
    pids = server._group_pids()
    server.pause()  # even a paused server
    server.stop()
    client.shutdown()
    assert not os.path.exists(server.dir)
    assert [pid for pid in pids if _alive(pid)] == []


@pytest.mark.timeout(30)
def test_the_server_dies_with_the_test_process_even_without_teardown(dovecot_binary):
    # pytest-timeout's thread method ends the process with os._exit: no fixture teardown runs.
    script = textwrap.dedent(f"""
        import os, sys
        from harness.dovecot import DovecotServer
        server = DovecotServer({dovecot_binary!r}).start()
        server.pause()
        print(server.proc.pid, server.dir, flush=True)
        os._exit(1)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=20, text=True, cwd=REPO)
    pid_text, directory = out.stdout.split()
    pid = int(pid_text)
    deadline = time.monotonic() + 10
    while (_alive(pid) or os.path.exists(directory)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
    assert not os.path.exists(directory)


def _status(pid: int) -> str | None:
    try:
        return psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return None


def _stopped(pid: int) -> bool:
    return _status(pid) == psutil.STATUS_STOPPED


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_imapclient_talks_to_both_listeners(dovecot_server, imap_account):
    plain = IMAPClient(dovecot_server.host, port=dovecot_server.port, ssl=False, timeout=5)
    plain.starttls(dovecot_server.ssl_context())
    plain.login(imap_account.user, imap_account.password)
    plain.logout()
    client = dovecot_server.client(imap_account.user, tls=True)
    assert b"IDLE" in client.capabilities()
    client.logout()
