"""The poison suite (issue 15): one mailbox where good emails are interleaved with every kind of poison the issue
lists, through the real stack: Dovecot, a webhook receiver and the service as a real Gunicorn master, run twice —
Redis state (Redis refusing connections for 20 s mid-run), and SQLite state with the file lease (another process
contending for the lock file whose writes fail: a full disk under the lock file).

It holds when every good email is delivered exactly once, every poison email is in a named end state visible on
/api/status, no email waits behind a poison one, and the workers' thread and descriptor counts are flat.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from email.message import EmailMessage

import pytest

from harness.lease_child import REPO
from harness.mail import event_id_of, make_email
from harness.redis_server import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.imap]

TOKEN = "poison-suite-token-Qx81"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DONE = "$RenderSignalDone"
POLL_SECONDS = 1.0
DROPBOX = "https://www.dropbox.com/scl/fi/{n}/poison-suite-{n}.zip?rlkey=k{n}&dl=0"

# A contender for the lock file whose every write fails (RLIMIT_FSIZE 0): before issue 15 its failed token write
# left the file locked, so no worker of the container could ever take the lease.
FULL_DISK_CONTENDER = textwrap.dedent("""
    import resource, sys, time
    from background.lease import FileLease
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    lease = FileLease(sys.argv[1])
    for _ in range(50):
        try:
            lease.try_acquire()
        except OSError:
            pass
        time.sleep(0.1)
    print("tried", flush=True)
    sys.stdin.read()
""")


def _utf7_body_email(n: int) -> bytes:
    """A body whose charset (utf-7) decodes to a lone surrogate: a payload that could not be serialised before."""
    raw = (f"From: Client <client@example.com>\r\nTo: bot@example.com\r\nSubject: utf-7 files {n}\r\n"
           f"Message-ID: <utf7-{n}@test.example>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
           "Content-Type: text/plain; charset=utf-7\r\n\r\n"
           f"Your files +2D0- are ready: {DROPBOX.format(n=n)}\r\n")
    return raw.encode("ascii")


def _accented_email(message_id: str) -> bytes:
    """An internationalised email (RFC 6532): raw UTF-8 in its headers, the Message-ID included."""
    return (f"From: Client <client@example.com>\r\nTo: bot@example.com\r\nSubject: rapport été\r\n"
            f"Message-ID: {message_id}\r\nDate: Tue, 01 Dec 2026 11:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n"
            f"Le rapport: {DROPBOX.format(n=77)}\r\n").encode("utf-8")


def _deep_html_email(n: int) -> bytes:
    message = EmailMessage()
    message["From"] = "Client <client@example.com>"
    message["To"] = "bot@example.com"
    message["Subject"] = f"deep html {n}"
    message["Message-ID"] = f"<deep-{n}@test.example>"
    message.set_content("see the HTML part")
    depth = 5000
    html = "<html><body>" + "<div>" * depth + f'<a href="{DROPBOX.format(n=n)}">files</a>' + "</div>" * depth
    message.add_alternative(html + "</body></html>", subtype="html")
    return message.as_bytes()


def _counts(service) -> tuple[int, int]:
    """(threads, descriptors) summed over the service's worker processes."""
    threads = descriptors = 0
    for pid in service.worker_pids():
        threads += len(os.listdir(f"/proc/{pid}/task"))
        descriptors += len(os.listdir(f"/proc/{pid}/fd"))
    return threads, descriptors


def _status(service) -> dict:
    response = service.get("/api/status", headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


def _wait(check, timeout: float, what: str, service=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    logs = service.log_text()[-6000:] if service is not None else ""
    raise AssertionError(f"{what} not reached within {timeout}s\n{logs}")


@pytest.fixture(params=["redis", "sqlite"])
def stack(request, imap_account, webhook_receiver, redis_binary, tmp_path):
    env = {**imap_account.settings_env(), "WEBHOOK_URL": webhook_receiver.url, "WEBHOOK_ALLOW_INSECURE": "true",
           "STATUS_API_TOKEN": TOKEN, "EMAIL_POLLING_INTERVAL_SECONDS": str(POLL_SECONDS),
           "IMAP_TIMEOUT_SECONDS": "2", "IMAP_RECONNECT_MAX_SECONDS": "1", "WEBHOOK_TIMEOUT_SECONDS": "2",
           "WEBHOOK_RETRY_SCHEDULE": "0.5,1,2", "IMAP_FETCH_MAX_FAILURES": "2", "REDIS_LOCK_TTL_SECONDS": "3",
           "REDIS_TIMEOUT_SECONDS": "0.5", "LEASE_RETRY_SECONDS": "0.5", "STATE_DIR": str(tmp_path / "state")}
    extras: dict = {"redis": None, "contender": None}
    if request.param == "redis":
        server = RedisServer(redis_binary).start()
        extras["redis"] = server
        env["REDIS_URL"] = server.url
    else:
        lock = str(tmp_path / "poller.lock")
        env["BG_POLLER_LOCK_FILE"] = lock
        extras["contender"] = subprocess.Popen([sys.executable, "-c", FULL_DISK_CONTENDER, lock], cwd=REPO,
                                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield request.param, env, extras
    finally:
        if extras["contender"] is not None:
            contender = extras["contender"]
            contender.kill()
            contender.wait(timeout=10)
            contender.stdin.close()
            contender.stdout.close()
        if extras["redis"] is not None:
            extras["redis"].stop()


@pytest.mark.timeout(240)
def test_every_good_email_is_delivered_once_and_every_poison_email_ends_visibly(stack, imap_account,
                                                                                webhook_receiver, service_factory):
    backend, env, extras = stack
    server, user = imap_account.server, imap_account.user
    if extras["contender"] is not None:
        assert extras["contender"].stdout.readline().strip() == "tried"   # it failed to write, and keeps running
    service = service_factory(env, workers=2)
    _wait(lambda: _status(service)["poller"]["last_success_at"], 30, "first cycle", service)

    # --- phase 1: good emails interleaved with poison ----------------------------------------------------------
    good = [make_email(subject=f"good {n}") for n in range(6)]
    reused = [make_email(subject=f"ticket {n}", message_id="<notifier@tickets.example>") for n in range(2)]
    special = [_utf7_body_email(1), _deep_html_email(2)]
    server.append(user, good[0])
    server.deliver_unreadable(user, make_email(subject="unreadable", message_id="<unreadable@test.example>"))
    server.append(user, good[1])
    server.append(user, reused[0])
    webhook_receiver.answer_sequence([_trickle()])            # the next POST is kept open, byte by byte
    server.append(user, reused[1])
    server.append(user, special[0])
    server.append(user, good[2])
    server.append(user, special[1])
    appended_at = time.monotonic()
    expected_phase1 = 3 + 2 + 2
    events = webhook_receiver.wait_for(expected_phase1, timeout=60)
    # no email waited behind the unreadable one or the trickling receiver for long
    assert time.monotonic() - appended_at < 45
    subjects = sorted(event["json"]["subject"] for event in events)
    assert subjects == sorted(["good 0", "good 1", "good 2", "ticket 0", "ticket 1", "utf-7 files 1",
                               "deep html 2"]), subjects
    deep = next(event for event in events if event["json"]["subject"] == "deep html 2")
    assert [link["provider"] for link in deep["json"]["delivery_links"]] == ["dropbox"]
    utf7 = next(event for event in events if event["json"]["subject"] == "utf-7 files 1")
    assert "\ufffd" in utf7["json"]["email_content"]
    # the unreadable one is parked, visible on /api/status, and not flagged done
    parked = _wait(lambda: [p for p in (_status(service)["parked"] or {}).get("recent", [])
                            if p["reason"] == "fetch_failed"], 60, "parked on /api/status", service)
    assert DONE not in server.flags(user, parked[0]["uid"])
    threads_before, fds_before = _counts(service)

    # --- phase 2: a fault of the backend while mail keeps coming -----------------------------------------------
    if extras["redis"] is not None:
        extras["redis"].refuse_connections()
        server.append(user, good[3])
        time.sleep(20)                                        # Redis refuses connections for 20 s
        extras["redis"].accept_connections()
    else:
        server.append(user, good[3])
    server.append(user, good[4])
    webhook_receiver.wait_for(expected_phase1 + 2, timeout=60)

    # --- phase 3: a non-ASCII Message-ID across a UIDVALIDITY change, with its flag request still pending --------
    accented = _accented_email("<rapport-été-ünï@exemple.fr>")
    uid = server.append(user, accented)
    webhook_receiver.wait_for(expected_phase1 + 3, timeout=30)
    _wait(lambda: DONE in server.flags(user, uid), 30, "accented email flagged", service)
    old_uidvalidity = server.uidvalidity(user)
    _unflag(server, user, uid)                               # as if its flag had never been applied …
    store = _open_store(env)
    try:
        store.queue_flag("INBOX", old_uidvalidity, uid, "rapport-été-ünï@exemple.fr")   # … and still pending
    finally:
        store.close()
    new_uidvalidity = server.recreate_mailbox(user)           # the mailbox is recreated under the running service
    assert new_uidvalidity != old_uidvalidity
    server.append(user, good[5])
    webhook_receiver.wait_for(expected_phase1 + 4, timeout=60)
    _wait(lambda: DONE in server.flags(user, _uids_of(server, user, [accented])[0]), 60,
          "the accented email flagged again after the UIDVALIDITY change (UTF-8 search)", service)
    _wait(lambda: all(DONE in server.flags(user, uid) for uid in _uids_of(server, user, good)), 30,
          "every good email flagged done", service)
    time.sleep(2 * POLL_SECONDS + 1)                         # a second copy would arrive by now

    # --- the verdict --------------------------------------------------------------------------------------------
    delivered = webhook_receiver.delivered_ids()
    assert len(delivered) == len(set(delivered)), "an email was delivered twice"
    for raw in good + [reused[0], accented]:
        assert delivered.count(event_id_of(raw)) == 1
    document = _status(service)
    # the unreadable message is parked (again under the new UIDVALIDITY, as the rescan finds it once more)
    assert set(document["counters"]["emails_parked"]) == {"fetch_failed"}
    assert all(p["reason"] == "fetch_failed" for p in document["parked"]["recent"])
    assert document["outbox"]["pending"] == 0 and document["outbox"]["dead_letters"]["count"] == 0
    health = service.get("/health").json()
    assert health["status"] == "ok", health
    threads_after, fds_after = _counts(service)
    assert threads_after <= threads_before + 2, (threads_before, threads_after)
    assert fds_after <= fds_before + 12, (fds_before, fds_after)
    print(f"\n[{backend}] delivered {len(delivered)}; threads {threads_before}->{threads_after}; "
          f"descriptors {fds_before}->{fds_after}")


def _unflag(server, user: str, uid: int) -> None:
    client = server.client(user, tls=False)
    try:
        client.select_folder("INBOX")
        client.remove_flags([uid], [DONE, "\\Seen"])
    finally:
        client.logout()


def _open_store(env: dict):
    from services.state_store import open_state_store
    from settings import Settings

    return open_state_store(Settings.from_env(env))


def _trickle():
    from harness.receiver import Answer

    return Answer(200, b"Accepted", trickle="head", trickle_interval=0.5)


def _uids_of(server, user: str, raws: list[bytes]) -> list[int]:
    from harness.mail import message_id_of

    client = server.client(user, tls=False)
    try:
        client.select_folder("INBOX", readonly=True)
        uids = []
        for raw in raws:
            uids += client.search(["HEADER", "Message-ID", f"<{message_id_of(raw)}>"], "UTF-8")
        return uids
    finally:
        client.logout()
