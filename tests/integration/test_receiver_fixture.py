"""Self-tests of the webhook receiver fixture (harness/receiver.py) that the delivery, e2e and chaos tests use.

These use plain ``requests``/sockets as the client, so they do not depend on the code the receiver tests.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from harness.ports import free_port
from harness.receiver import Answer, WebhookReceiver

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

@pytest.fixture
def make_webhook_receiver(make_webhook_receiver):
    """This file posts placeholder bodies (``msg_1``, ``{"k": 1}``), not webhooks: no payload contract here."""
    return functools.partial(make_webhook_receiver, contract=False)



def post(url: str, webhook_id: str, body: bytes = b'{"k": 1}', timeout: float = 5) -> requests.Response:
    with requests.Session() as session:
        session.trust_env = False
        return session.post(url, data=body, headers={"webhook-id": webhook_id, "Content-Type": "application/json"},
                            timeout=timeout)


def test_it_answers_like_make_by_default_and_records_the_request(webhook_receiver):
    assert webhook_receiver.url.startswith(f"http://127.0.0.1:{webhook_receiver.port}/hook/")

    response = post(webhook_receiver.url, "msg_1")

    assert (response.status_code, response.text) == (200, "Accepted")
    assert response.headers["Content-Type"].startswith("text/plain")
    [event] = webhook_receiver.wait_for(1, timeout=2)
    assert event["headers"]["webhook-id"] == "msg_1"
    assert event["headers"]["content-type"] == "application/json"
    assert (event["body"], event["json"], event["status_answered"]) == (b'{"k": 1}', {"k": 1}, 200)
    assert abs(event["received_at"] - time.time()) < 5


def test_fail_next_then_success(webhook_receiver):
    webhook_receiver.fail_next(2, status=503, headers={"Retry-After": "1"})

    responses = [post(webhook_receiver.url, "msg_1") for _ in range(3)]

    assert [r.status_code for r in responses] == [503, 503, 200]
    assert responses[0].headers["Retry-After"] == "1"
    assert [e["status_answered"] for e in webhook_receiver.events] == [503, 503, 200]
    assert webhook_receiver.delivered_ids() == ["msg_1"]


def test_delivered_ids_keep_duplicates_and_order_and_skip_failures(webhook_receiver):
    webhook_receiver.answer_sequence([200, 500, (201, "ok"), Answer(202, b"")])
    for webhook_id in ["a", "b", "a", "c", "d"]:
        post(webhook_receiver.url, webhook_id)

    assert webhook_receiver.delivered_ids() == ["a", "a", "c", "d"]
    assert len(webhook_receiver.wait_for(4, timeout=1)) == 4


def test_respond_with_changes_the_default_answer(webhook_receiver):
    webhook_receiver.respond_with(400, b'{"error": "bad"}', {"Content-Type": "application/json"})

    response = post(webhook_receiver.url, "msg_1")

    assert (response.status_code, response.json()) == (400, {"error": "bad"})
    assert webhook_receiver.delivered_ids() == []


def test_another_path_is_404_and_never_counts_as_delivered(webhook_receiver):
    wrong = webhook_receiver.url.rsplit("/", 1)[0] + "/guessed"

    assert post(wrong, "msg_1").status_code == 404
    assert webhook_receiver.delivered_ids() == []
    assert webhook_receiver.events[0]["path"].endswith("/guessed")


def test_go_down_refuses_connections_and_come_up_serves_on_the_same_port(webhook_receiver):
    port, url = webhook_receiver.port, webhook_receiver.url
    assert post(url, "before").status_code == 200

    webhook_receiver.go_down()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with pytest.raises(requests.ConnectionError):
        post(url, "while-down")

    webhook_receiver.come_up()
    assert (webhook_receiver.port, webhook_receiver.url) == (port, url)
    assert post(url, "after").status_code == 200
    assert webhook_receiver.delivered_ids() == ["before", "after"]


def test_go_down_also_closes_kept_alive_connections(webhook_receiver):
    with requests.Session() as session:
        session.trust_env = False
        assert session.post(webhook_receiver.url, data=b"{}").status_code == 200  # connection now pooled
        webhook_receiver.go_down()
        with pytest.raises(requests.ConnectionError):
            session.post(webhook_receiver.url, data=b"{}", timeout=2)


def test_set_delay_makes_a_slow_receiver(webhook_receiver):
    webhook_receiver.set_delay(0.6)

    started = time.monotonic()
    response = post(webhook_receiver.url, "msg_1")

    assert response.status_code == 200
    assert time.monotonic() - started >= 0.55
    with pytest.raises(requests.Timeout):
        post(webhook_receiver.url, "msg_2", timeout=0.2)


def test_a_dropped_answer_closes_the_connection_without_a_status(webhook_receiver):
    webhook_receiver.answer_sequence([Answer(drop=True)])

    with pytest.raises(requests.ConnectionError):
        post(webhook_receiver.url, "msg_1")
    assert post(webhook_receiver.url, "msg_1").status_code == 200
    assert [e["status_answered"] for e in webhook_receiver.events] == [None, 200]


def test_wait_for_times_out_with_a_helpful_message(webhook_receiver):
    webhook_receiver.fail_next(1, status=503)
    post(webhook_receiver.url, "msg_1")

    started = time.monotonic()
    with pytest.raises(AssertionError) as caught:
        webhook_receiver.wait_for(2, timeout=0.3)

    assert 0.25 <= time.monotonic() - started < 2
    message = str(caught.value)
    assert "expected 2 request(s) answered 2xx within 0.3s, got 0" in message
    assert "'503': 1" in message and "msg_1" in message


def test_wait_for_wakes_up_when_a_request_arrives(webhook_receiver):
    timer = threading.Timer(0.2, post, args=(webhook_receiver.url, "late"))
    timer.start()
    try:
        [event] = webhook_receiver.wait_for(1, timeout=5)
    finally:
        timer.join(5)
    assert event["headers"]["webhook-id"] == "late"


def test_the_factory_makes_independent_receivers(make_webhook_receiver):
    first, second = make_webhook_receiver(), make_webhook_receiver()
    first.fail_next(1, status=500)

    assert first.port != second.port and first.path != second.path
    assert post(first.url, "x").status_code == 500
    assert post(second.url, "y").status_code == 200


def test_stop_ends_every_thread_even_with_open_and_slow_connections():
    receiver = WebhookReceiver(contract=False).start()
    receiver.set_delay(30)
    idle = socket.create_connection(("127.0.0.1", receiver.port), timeout=5)  # an idle keep-alive client
    slow = threading.Thread(target=lambda: _post_ignoring_errors(receiver.url), daemon=True)
    slow.start()
    time.sleep(0.2)

    started = time.monotonic()
    receiver.stop()

    assert time.monotonic() - started < 3
    assert not any(t.name.startswith("webhook-receiver") and t.is_alive() for t in threading.enumerate())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", receiver.port), timeout=2).close()
    idle.close()
    slow.join(5)


def _post_ignoring_errors(url: str) -> None:
    try:
        post(url, "slow", timeout=10)
    except requests.RequestException:
        pass


def test_it_runs_as_a_separate_process_with_a_json_log_and_control_requests(tmp_path):
    log = tmp_path / "receiver.jsonl"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "harness.receiver", "--port", str(port), "--log", str(log),
                             "--fail-first", "1"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["port"] == port and ready["pid"] == proc.pid
        url = ready["url"]

        assert post(url, "msg_1").status_code == 503
        assert post(url, "msg_1").status_code == 200
        control = f"http://127.0.0.1:{port}/_control/fail_next"
        with requests.Session() as session:
            session.trust_env = False
            assert session.post(control, json={"n": 1, "status": 429}, timeout=5).status_code == 204
        assert post(url, "msg_2").status_code == 429
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err

    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(line["webhook_id"], line["status"]) for line in lines] == [("msg_1", 503), ("msg_1", 200), ("msg_2", 429)]
    assert lines[0]["json"] == {"k": 1} and lines[0]["headers"]["webhook-id"] == "msg_1"


def test_a_receiver_refuses_a_webhook_body_that_breaks_the_payload_contract():
    # Given a receiver with the contract on (the default for every delivery, e2e and chaos test)
    receiver = WebhookReceiver().start()
    try:
        example = (Path(REPO) / "docs" / "webhook-payload.v1.example.json").read_bytes()
        event_id = json.loads(example)["event_id"]
        # When a valid webhook arrives, then one whose body has an unplanned field
        assert post(receiver.url, event_id, example).status_code == 200
        assert receiver.wait_for(1, timeout=2) and receiver.contract_violations() == []
        broken = json.dumps({**json.loads(example), "unplanned": 1}).encode()
        assert post(receiver.url, event_id, broken).status_code == 200
        # Then every read of what was delivered fails, naming the schema and the field
        with pytest.raises(AssertionError, match="webhook-payload.schema.json"):
            receiver.wait_for(2, timeout=2)
        with pytest.raises(AssertionError, match="unplanned"):
            receiver.delivered()
    finally:
        receiver.stop()


def test_a_receiver_refuses_a_webhook_whose_id_header_is_not_its_event_id():
    receiver = WebhookReceiver().start()
    try:
        example = (Path(REPO) / "docs" / "webhook-payload.v1.example.json").read_bytes()
        assert post(receiver.url, "msg_" + "0" * 32, example).status_code == 200
        with pytest.raises(AssertionError, match="is not the body's event_id"):
            receiver.wait_for(1, timeout=2)
    finally:
        receiver.stop()
