"""IMAP ingestion against a real Dovecot: never hangs, never loses, never double-sends (issue 5)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from harness.mail import event_id_of, make_email
from harness.pipeline import service_env

pytestmark = pytest.mark.imap

DONE = "$RenderSignalDone"


def test_an_email_appended_while_idling_reaches_the_webhook(imap_account, webhook_receiver, pipeline_factory):
    # Given a running poller that has done its first pass and is idling
    pipeline = pipeline_factory(service_env(imap_account, webhook_receiver))
    pipeline.wait_until(lambda: pipeline.runtime.poller_status.idle, what="idling")
    # When an email with a Dropbox link is appended
    raw = make_email()
    started = time.monotonic()
    uid = imap_account.server.append(imap_account.user, raw)
    # Then its webhook arrives, with the payload fields receivers read, and the email is flagged done
    event = webhook_receiver.wait_for(1, timeout=10)[0]
    latency = time.monotonic() - started
    assert event["headers"]["webhook-id"] == event_id_of(raw)
    body = event["json"]
    assert body["event_id"] == event_id_of(raw)
    assert body["delivery_links"][0]["provider"] == "dropbox"
    assert body["sender_email"] == "client@example.com"
    pipeline.wait_until(lambda: DONE in imap_account.server.flags(imap_account.user, uid), what="flagged done")
    assert "\\Seen" in imap_account.server.flags(imap_account.user, uid)
    print(f"APPEND -> webhook latency {latency:.2f}s")


def test_first_start_processes_unseen_mail_only_and_passes_over_old_mail(imap_account, webhook_receiver,
                                                                          pipeline_factory, caplog):
    from datetime import datetime, timedelta, timezone

    server, user = imap_account.server, imap_account.user
    # Given a mailbox with: a fresh unseen email, a read one, an unseen one older than the window, one flagged done
    fresh = make_email(subject="fresh")
    server.append(user, fresh)
    server.append(user, make_email(subject="already read"), flags=["\\Seen"])
    old_uid = server.append(user, make_email(subject="ancient"),
                            internaldate=datetime.now(timezone.utc) - timedelta(hours=100))
    server.append(user, make_email(subject="done before"), flags=[DONE])
    caplog.set_level(logging.INFO)
    # When the service starts on this mailbox for the first time
    pipeline = pipeline_factory(service_env(imap_account, webhook_receiver))
    # Then only the fresh unseen email is delivered, and the old one is counted as passed over
    assert webhook_receiver.wait_for(1, timeout=10)[0]["json"]["subject"] == "fresh"
    pipeline.wait_until(lambda: pipeline.runtime.poller_status.idle, what="idle after first pass")
    time.sleep(1.5)
    assert len(webhook_receiver.delivered_ids()) == 1
    counters = pipeline.store.counters()
    assert counters["emails_skipped"]["older_than_first_start_window"] == 1
    assert "passed over 1 unseen messages older than 72h" in caplog.text
    assert DONE not in server.flags(user, old_uid)


def test_an_email_read_by_a_person_before_the_poller_saw_it_is_still_processed(imap_account, webhook_receiver,
                                                                                 pipeline_factory):
    pipeline = pipeline_factory(service_env(imap_account, webhook_receiver, IMAP_USE_IDLE="false",
                                            EMAIL_POLLING_INTERVAL_SECONDS="2"))
    pipeline.wait_until(lambda: pipeline.runtime.poller_status.last_success_at is not None, what="first cycle")
    # Given an email that another client opened (\Seen) before the next poll
    raw = make_email(subject="opened by a person")
    imap_account.server.append(imap_account.user, raw, flags=["\\Seen"])
    # Then it is delivered all the same
    assert webhook_receiver.wait_for(1, timeout=10)[0]["headers"]["webhook-id"] == event_id_of(raw)


def test_wrong_password_logs_one_error_per_streak_backs_off_and_never_shows_the_password(
        imap_account, webhook_receiver, pipeline_factory, caplog):
    caplog.set_level(logging.INFO)
    env = service_env(imap_account, webhook_receiver, EMAIL_PASSWORD="wrong-password-xyz",
                      IMAP_RECONNECT_MAX_SECONDS="0.5")
    pipeline = pipeline_factory(env)
    # When the login keeps failing
    pipeline.wait_until(lambda: caplog.text.count("IMAP: reconnect attempt") >= 3, timeout=15, what="3 retries")
    # Then one ERROR for the streak names the server and user, never the password, and the thread lives on
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith(("services", "background"))]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert imap_account.user in errors[0].getMessage() and imap_account.host in errors[0].getMessage()
    assert "wrong-password-xyz" not in caplog.text
    assert pipeline.runtime.poller_status.imap == "auth_failed"
    assert not pipeline.runtime.threads_dead()
    pipeline.stop()
    # And fixing the password (a restart with the right one) recovers
    good = pipeline_factory(service_env(imap_account, webhook_receiver, state_dir=env["STATE_DIR"]))
    imap_account.server.append(imap_account.user, make_email())
    webhook_receiver.wait_for(1, timeout=10)
    assert good.runtime.poller_status.imap == "ok"


def test_a_failing_webhook_leaves_the_email_unflagged_and_delivers_it_once_after_recovery(
        imap_account, webhook_receiver, pipeline_factory):
    server, user = imap_account.server, imap_account.user
    webhook_receiver.respond_with(503, b"down")
    pipeline = pipeline_factory(service_env(imap_account, webhook_receiver))
    raw = make_email()
    uid = server.append(user, raw)
    # While the receiver fails: attempts are made, the email stays unflagged
    pipeline.wait_until(lambda: len(webhook_receiver.events) >= 2, what="two failed attempts")
    assert DONE not in server.flags(user, uid) and "\\Seen" not in server.flags(user, uid)
    # After recovery: delivered exactly once, then flagged done
    webhook_receiver.respond_with(200, b"Accepted")
    webhook_receiver.wait_for(1, timeout=10)
    pipeline.wait_until(lambda: DONE in server.flags(user, uid), what="flagged after delivery")
    time.sleep(1.0)
    assert webhook_receiver.delivered_ids() == [event_id_of(raw)]
    item = pipeline.store.get_item(event_id_of(raw))
    assert item.status == "delivered" and item.attempts >= 3


def test_a_uidvalidity_change_does_not_send_delivered_mail_again(imap_account, webhook_receiver, pipeline_factory):
    server, user = imap_account.server, imap_account.user
    env = service_env(imap_account, webhook_receiver)
    pipeline = pipeline_factory(env)
    raws = [make_email(subject=f"before {i}") for i in range(3)]
    for raw in raws:
        server.append(user, raw)
    webhook_receiver.wait_for(3, timeout=15)
    pipeline.wait_until(lambda: len(server.keywords(user)) > 0 and not pipeline.store.pending_flags("INBOX", 10),
                        what="flags applied")
    pipeline.stop()
    # Given the mailbox was recreated: same messages, new UIDVALIDITY (and no keywords)
    old = server.uidvalidity(user)
    new = server.recreate_mailbox(user)
    assert new != old
    # When the service starts again on the same state
    pipeline = pipeline_factory(env)
    after = make_email(subject="after the change")
    pipeline.wait_until(lambda: pipeline.runtime.poller_status.uidvalidity == new, what="new uidvalidity seen")
    server.append(user, after)
    # Then only the new email is delivered; nothing already delivered is sent again
    webhook_receiver.wait_for(4, timeout=15)
    time.sleep(1.5)
    ids = webhook_receiver.delivered_ids()
    assert sorted(ids) == sorted([event_id_of(r) for r in raws] + [event_id_of(after)])


def _live_threads() -> int:
    """Threads of the service (the receiver's per-connection threads live in this process too: not counted)."""
    return sum(1 for thread in threading.enumerate() if not thread.name.startswith("webhook-receiver"))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_server_paused_mid_idle_times_out_reconnects_and_leaves_no_thread_behind(private_dovecot, webhook_receiver,
                                                                                      pipeline_factory, caplog):
    caplog.set_level(logging.INFO)
    account = private_dovecot.new_account()
    pipeline = pipeline_factory(service_env(account, webhook_receiver, IMAP_TIMEOUT_SECONDS="1",
                                            EMAIL_POLLING_INTERVAL_SECONDS="2"))
    pipeline.wait_until(lambda: pipeline.runtime.poller_status.idle, what="idling")
    baseline = _live_threads()
    for round_ in range(3):
        # Given an idling poller / When the server freezes
        pipeline.wait_until(lambda: pipeline.runtime.poller_status.idle, what="idling")
        timeouts = caplog.text.count("IMAP: timeout after 1s during")
        private_dovecot.pause()
        try:
            # Then within interval + timeout the poller notices, logs it and schedules a reconnect
            pipeline.wait_until(lambda timeouts=timeouts: caplog.text.count("IMAP: timeout after 1s during") > timeouts,
                                timeout=10,
                                what="timeout logged")
        finally:
            private_dovecot.resume()
        assert "IMAP: reconnect attempt" in caplog.text
        # And after SIGCONT new mail is processed
        private_dovecot.append(account.user, make_email(subject=f"after idle pause {round_}"))
        webhook_receiver.wait_for(round_ + 1, timeout=15)
        # (an attempt in progress has its watchdog timer thread for the attempt's duration: wait for it to end)
        pipeline.wait_until(lambda: _live_threads() == baseline, timeout=5, what="no thread left behind")
    assert "during idle" in caplog.text


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_server_paused_mid_fetch_times_out_and_the_email_is_still_delivered_once(
        private_dovecot, webhook_receiver, pipeline_factory, caplog, monkeypatch):
    from services import imap_mailbox

    caplog.set_level(logging.INFO)
    account = private_dovecot.new_account()
    original = imap_mailbox.MailboxClient.fetch_full
    pause_next = threading.Event()

    def fetch_full_with_a_frozen_server(self, uid):
        if pause_next.is_set():
            pause_next.clear()
            private_dovecot.pause()  # the server freezes just as the poller sends FETCH
        return original(self, uid)

    monkeypatch.setattr(imap_mailbox.MailboxClient, "fetch_full", fetch_full_with_a_frozen_server)
    pipeline = pipeline_factory(service_env(account, webhook_receiver, IMAP_TIMEOUT_SECONDS="1",
                                            EMAIL_POLLING_INTERVAL_SECONDS="2"))
    pipeline.wait_until(lambda: pipeline.runtime.poller_status.idle, what="idling")
    baseline = _live_threads()
    raws = []
    for round_ in range(3):
        count = caplog.text.count("IMAP: timeout after 1s during fetch")
        pause_next.set()
        raws.append(make_email(subject=f"fetched while frozen {round_}"))
        private_dovecot.append(account.user, raws[-1])
        try:
            pipeline.wait_until(lambda count=count: caplog.text.count("IMAP: timeout after 1s during fetch") > count,
                                timeout=10,
                                what="fetch timeout")
        finally:
            private_dovecot.resume()
        webhook_receiver.wait_for(round_ + 1, timeout=15)
        # (an attempt in progress has its watchdog timer thread for the attempt's duration: wait for it to end)
        pipeline.wait_until(lambda: _live_threads() == baseline, timeout=5, what="no thread left behind")
    time.sleep(1.0)
    assert sorted(webhook_receiver.delivered_ids()) == sorted(event_id_of(raw) for raw in raws)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_cycle_over_ten_thousand_done_messages_stays_fast(imap_account, webhook_receiver, pipeline_factory):
    from background.poller import MailboxPoller
    from services.imap_mailbox import MailboxClient

    server, user = imap_account.server, imap_account.user
    # Given 10,000 messages already done (written as Maildir files, not APPENDed)
    started = time.monotonic()
    template = ("From: client@example.com\r\nTo: bot@example.com\r\nSubject: old {i}\r\n"
                "Message-ID: <old-{i}@test.example>\r\nDate: Mon, 2 Nov 2026 10:00:00 +0000\r\n\r\n"
                "https://www.dropbox.com/s/old{i}/file.zip\r\n")
    server.build_maildir(user, (template.format(i=i).encode() for i in range(10_000)))
    build_s = time.monotonic() - started
    pipeline = pipeline_factory(service_env(imap_account, webhook_receiver))
    pipeline.wait_until(lambda: pipeline.runtime.poller_status.last_success_at is not None, timeout=60,
                        what="first pass")
    assert webhook_receiver.delivered_ids() == []
    # When a new email arrives, it is found without scanning the mailbox
    raw = make_email(subject="new among 10k")
    t0 = time.monotonic()
    server.append(user, raw)
    webhook_receiver.wait_for(1, timeout=15)
    latency = time.monotonic() - t0
    # And one reconciliation cycle (checkpoint search) on the 10,000-message mailbox is quick
    background = pipeline.background
    client = MailboxClient(background.poller.config, guard=background.guard)
    client.connect()
    try:
        state = client.select("INBOX")
        poller: MailboxPoller = background.poller
        t1 = time.monotonic()
        handled = poller.run_cycle(client, state)
        cycle_s = time.monotonic() - t1
    finally:
        client.close()
    assert handled == 0
    print(f"10k maildir built in {build_s:.2f}s; new-mail latency {latency:.2f}s; idle cycle {cycle_s * 1000:.1f}ms")
    assert cycle_s < 5, "a cycle on a large, fully processed mailbox must not scan it"


def test_an_email_expunged_between_listing_and_reading_is_skipped_and_the_next_one_delivered(
        imap_account, webhook_receiver, pipeline_factory, monkeypatch, caplog):
    from services import imap_mailbox

    caplog.set_level(logging.INFO)
    server, user = imap_account.server, imap_account.user
    original = imap_mailbox.MailboxClient.fetch_full
    doomed: dict[str, int] = {}

    def fetch_full_after_someone_expunged(self, uid):
        if uid == doomed.get("uid"):
            other = server.client(user)  # another client deletes the message right now
            other.select_folder("INBOX")
            other.delete_messages([uid])
            other.expunge()
            other.logout()
        return original(self, uid)

    monkeypatch.setattr(imap_mailbox.MailboxClient, "fetch_full", fetch_full_after_someone_expunged)
    pipeline = pipeline_factory(service_env(imap_account, webhook_receiver, IMAP_USE_IDLE="false",
                                            EMAIL_POLLING_INTERVAL_SECONDS="1"))
    pipeline.wait_until(lambda: pipeline.runtime.poller_status.last_success_at is not None, what="first cycle")
    doomed["uid"] = server.append(user, make_email(subject="deleted before it was read"))
    survivor = make_email(subject="next one")
    server.append(user, survivor)
    assert webhook_receiver.wait_for(1, timeout=15)[0]["headers"]["webhook-id"] == event_id_of(survivor)
    time.sleep(1.0)
    assert len(webhook_receiver.delivered_ids()) == 1
    assert "was expunged before it could be read" in caplog.text
    assert "reconnect attempt" not in caplog.text


def test_a_mailbox_that_authenticates_senders_delivers_only_what_its_receiving_server_vouches_for(
        imap_account, webhook_receiver, pipeline_factory):
    # Given a mailbox whose allow-listed senders must be vouched for by the Authentication-Results of mx.example.org
    pipeline = pipeline_factory(service_env(imap_account, webhook_receiver,
                                            SENDER_OF_INTEREST_FOR_POLLING="@example.com",
                                            SENDER_REQUIRE_AUTHENTICATED="true", SENDER_AUTHSERV_ID="mx.example.org"))
    pipeline.wait_until(lambda: pipeline.runtime.poller_status.idle, what="idling")
    vouched = b"Authentication-Results: mx.example.org; dmarc=pass header.from=example.com\n"
    failed = b"Authentication-Results: mx.example.org; dmarc=fail header.from=example.com\n"
    ambiguous = make_email(subject="ambiguous").replace(b"From: Client <client@example.com>",
                                                        b"From: client@example.com <attacker@evil.example>", 1)
    # When the server's own header fails (a forged passing one below it), the From header is ambiguous, or it passes
    for raw in (failed + vouched + make_email(subject="forged below"), vouched + ambiguous,
                vouched + make_email(subject="vouched")):
        imap_account.server.append(imap_account.user, raw)
    # Then only the vouched email is delivered; the other two are skipped with their reasons
    assert webhook_receiver.wait_for(1, timeout=10)[0]["json"]["subject"] == "vouched"

    def skipped() -> dict:
        return pipeline.store.counters().get("emails_skipped") or {}

    pipeline.wait_until(lambda: {"sender_not_authenticated", "sender_ambiguous"} <= set(skipped()), what="two skips")
    assert skipped() == {"sender_not_authenticated": 1, "sender_ambiguous": 1}
    assert len(webhook_receiver.delivered_ids()) == 1
