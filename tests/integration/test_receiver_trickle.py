"""Self-tests of the receiver's trickling answers (harness/receiver.py ``Answer(trickle=...)``), with a raw socket
as the client so that they do not depend on the sender they are used to test."""

from __future__ import annotations

import functools
import socket
import time

import pytest

from harness.receiver import Answer, WebhookReceiver

REQUEST = (b"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nwebhook-id: msg_1\r\n"
           b"Content-Length: 8\r\n\r\n{\"k\": 1}")


@pytest.fixture
def make_webhook_receiver(make_webhook_receiver):
    """Placeholder bodies, not webhooks: no payload contract here."""
    return functools.partial(make_webhook_receiver, contract=False)


def send_request(receiver: WebhookReceiver) -> socket.socket:
    client = socket.create_connection((receiver.host, receiver.port), timeout=5)
    client.sendall(REQUEST.replace(b"{path}", receiver.path.encode()))
    return client


def read_for(client: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """What arrives within ``seconds``, and whether the receiver closed the connection meanwhile."""
    received = b""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        client.settimeout(left)
        try:
            chunk = client.recv(4096)
        except socket.timeout:
            break
        if not chunk:
            return received, True
        received += chunk
    return received, False


@pytest.mark.timeout(20)
def test_a_head_trickle_sends_the_status_line_a_byte_at_a_time_and_never_finishes(webhook_receiver):
    webhook_receiver.answer_sequence([Answer(trickle="head", trickle_interval=0.2)])
    client = send_request(webhook_receiver)
    try:
        received, closed = read_for(client, 1.5)
        assert not closed
        assert 4 <= len(received) <= 9, received
        assert b"HTTP/1.1 200 OK\r\n".startswith(received)
        [event] = webhook_receiver.events
        assert event["status_answered"] is None and event["headers"]["webhook-id"] == "msg_1"
    finally:
        client.close()
    # Once the client is gone, the trickle ends (its writes fail) and the event says when
    deadline = time.monotonic() + 5
    while "trickle_ended_at" not in webhook_receiver.events[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "trickle_ended_at" in webhook_receiver.events[0]


@pytest.mark.timeout(20)
def test_a_body_trickle_sends_the_headers_at_once_then_the_body_a_byte_at_a_time(webhook_receiver):
    webhook_receiver.answer_sequence([Answer(503, trickle="body", trickle_interval=0.2)])
    client = send_request(webhook_receiver)
    try:
        received, closed = read_for(client, 1.5)
    finally:
        client.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert not closed
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and b"Content-Length: 1000000" in head
    assert 4 <= len(body) <= 9 and set(body) == {ord("a")}, body
    assert webhook_receiver.events[0]["status_answered"] == 503


@pytest.mark.timeout(20)
def test_stop_ends_a_trickle_that_is_still_running():
    receiver = WebhookReceiver(contract=False).start()
    receiver.answer_sequence([Answer(trickle="head", trickle_interval=0.2)])
    client = send_request(receiver)
    try:
        assert read_for(client, 0.5)[0]
        started = time.monotonic()
        receiver.stop()  # raises if a handler thread is still running
        assert time.monotonic() - started < 3
    finally:
        client.close()


def test_an_unknown_trickle_mode_is_refused():
    with pytest.raises(ValueError, match="trickle"):
        Answer(trickle="headers")
