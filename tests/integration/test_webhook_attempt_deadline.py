"""WEBHOOK_TIMEOUT_SECONDS bounds a whole webhook attempt, not each socket read (issue 15 §5).

A real receiver (harness/receiver.py) that trickles its status line, its headers or its body one byte at a time
keeps every read under the per-read timeout; only a wall-clock bound on the attempt cuts it. Before the fix each of
these attempts hung until the test's watchdog (pytest-timeout) fired.
"""

from __future__ import annotations

import functools
import threading
import time

import pytest
import requests

from config import TargetConfig
from harness.receiver import Answer
from services.webhook import WebhookSender
from tests.unit.test_webhook_sender import BODY, settings_for

TIMEOUT = 2.0
BOUND = 2 * TIMEOUT  # generous: the cut comes at TIMEOUT, plus a little to close and classify


@pytest.fixture
def make_webhook_receiver(make_webhook_receiver):
    """Placeholder bodies (``msg_1``), not webhooks: no payload contract here."""
    return functools.partial(make_webhook_receiver, contract=False)


@pytest.fixture
def make_sender():
    senders: list[WebhookSender] = []

    def make(url: str, session: requests.Session | None = None, **extra: str) -> WebhookSender:
        settings = settings_for(url, WEBHOOK_TIMEOUT_SECONDS=str(TIMEOUT), **extra)
        sender = WebhookSender(TargetConfig.from_settings(settings), session=session)
        senders.append(sender)
        return sender

    yield make
    for sender in senders:
        sender.close()


def timed_attempt(sender: WebhookSender, event_id: str = "msg_1"):
    started = time.monotonic()
    outcome = sender.attempt(event_id, BODY)
    return outcome, time.monotonic() - started


@pytest.mark.timeout(30)
def test_a_receiver_trickling_its_status_line_is_cut_at_the_timeout_and_retried(webhook_receiver, make_sender):
    # Given a receiver that sends "HTTP/1.1 200 OK\r\n" one byte every 0.5 s and never finishes
    webhook_receiver.answer_sequence([Answer(trickle="head", trickle_interval=0.5)])
    # When one attempt is made with WEBHOOK_TIMEOUT_SECONDS=2
    outcome, took = timed_attempt(make_sender(webhook_receiver.url))
    # Then it ends at the timeout, as a retry "timeout"
    assert TIMEOUT * 0.9 <= took < BOUND, took
    assert (outcome.kind, outcome.status, outcome.error) == ("retry", None, "timeout")
    assert TIMEOUT * 900 <= outcome.elapsed_ms < BOUND * 1000


@pytest.mark.timeout(30)
def test_a_complete_status_line_with_headers_that_never_end_is_a_timeout_not_a_delivery(webhook_receiver,
                                                                                          make_sender):
    # Given a receiver whose "200 OK" status line arrives in 0.85 s, then a header that never ends
    webhook_receiver.answer_sequence([Answer(trickle="head", trickle_interval=0.05)])
    # When the attempt is cut, the end of the stream must not pass for the end of the headers
    outcome, took = timed_attempt(make_sender(webhook_receiver.url))
    assert took < BOUND, took
    assert (outcome.kind, outcome.status, outcome.error) == ("retry", None, "timeout")


@pytest.mark.timeout(30)
def test_a_503_whose_body_trickles_is_cut_at_the_timeout_and_retried(webhook_receiver, make_sender):
    webhook_receiver.answer_sequence([Answer(503, trickle="body", trickle_interval=0.5)])

    outcome, took = timed_attempt(make_sender(webhook_receiver.url))

    assert TIMEOUT * 0.9 <= took < BOUND, took
    assert (outcome.kind, outcome.status, outcome.error) == ("retry", 503, "http_503")


@pytest.mark.timeout(30)
def test_a_200_whose_body_trickles_is_cut_at_the_timeout_and_counts_as_delivered(webhook_receiver, make_sender):
    # The status line and headers arrived: the receiver accepted the webhook. Sending it again would deliver it
    # twice; the cut only shortens the excerpt of the answer (as a body that failed mid-way always did).
    webhook_receiver.answer_sequence([Answer(200, trickle="body", trickle_interval=0.5)])

    outcome, took = timed_attempt(make_sender(webhook_receiver.url))

    assert TIMEOUT * 0.9 <= took < BOUND, took
    assert (outcome.kind, outcome.status) == ("delivered", 200)


@pytest.mark.timeout(30)
def test_a_kept_alive_connection_that_starts_trickling_is_cut_and_the_pool_recovers(webhook_receiver, make_sender):
    # Given a sender whose first attempt leaves a kept-alive connection in its pool
    webhook_receiver.answer_sequence([200, Answer(trickle="head", trickle_interval=0.5)])
    sender = make_sender(webhook_receiver.url)
    assert sender.attempt("msg_1", BODY).delivered
    # When the next attempt on that connection trickles, it is cut at the timeout
    outcome, took = timed_attempt(sender, "msg_2")
    assert took < BOUND, took
    assert (outcome.kind, outcome.error) == ("retry", "timeout")
    # And the attempt after that is delivered on a fresh connection
    assert sender.attempt("msg_3", BODY).delivered
    assert webhook_receiver.delivered_ids() == ["msg_1", "msg_3"]


@pytest.fixture
def tls_receiver(make_webhook_receiver, tmp_path):
    import ssl

    import trustme  # pinned in requirements-dev.txt: no skip that could hide its absence

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return make_webhook_receiver(tls=server_context), str(ca_file)


@pytest.mark.timeout(30)
def test_the_bound_holds_over_tls_and_with_a_session_of_the_callers(tls_receiver, make_sender):
    receiver, ca_file = tls_receiver
    receiver.answer_sequence([Answer(trickle="head", trickle_interval=0.5)])
    session = requests.Session()
    session.trust_env = False
    session.verify = ca_file
    try:
        outcome, took = timed_attempt(make_sender(receiver.url, session=session))
    finally:
        session.close()
    assert took < BOUND, took
    assert (outcome.kind, outcome.error) == ("retry", "timeout")


@pytest.mark.timeout(30)
def test_an_attempt_leaves_no_watchdog_thread_behind(webhook_receiver, make_sender):
    webhook_receiver.answer_sequence([Answer(trickle="head", trickle_interval=0.5), 200])
    before = set(threading.enumerate())
    sender = make_sender(webhook_receiver.url)

    assert sender.attempt("msg_1", BODY).error == "timeout"
    assert sender.attempt("msg_2", BODY).delivered

    assert set(threading.enumerate()) - before <= {t for t in threading.enumerate() if "receiver" in t.name}
