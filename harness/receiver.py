"""A real HTTP webhook receiver on 127.0.0.1 that plays Make's "custom webhook" for the tests and the demo.

In the test process (pytest fixtures in tests/fixtures/receiver.py, loaded by tests/conftest.py):

- ``webhook_receiver`` (function): one started ``WebhookReceiver``; ``make_webhook_receiver(**kwargs)`` (function)
  builds more. Both are stopped at teardown (listening socket, open connections, handler threads).
- The URL is ``http://127.0.0.1:<port>/hook/<random token>``; other paths get 404 (recorded, never "delivered").
  Settings need ``WEBHOOK_ALLOW_INSECURE=true`` for it.
- By default every request is answered like Make: ``200``, ``text/plain``, body ``Accepted``.
- ``.events`` is a snapshot list of received requests, each a dict: ``headers`` (lower-case names), ``body``
  (bytes), ``json`` (parsed or None), ``received_at`` (time.time() when the request was read), ``answered_at``,
  ``status_answered`` (None when the connection was dropped or closed by ``go_down``/``stop`` before the answer),
  ``answer_error``, ``method``, ``path``. A sender that timed out while the receiver was slow usually still counts
  as answered (the kernel accepts the late write), as it would at a real receiver that acted on the request.
  An event is recorded just before its answer is written, so once a client has read an answer, its event is in
  ``.events``; but ``wait_for`` may return a moment before the client has read its answer.
- ``wait_for(count, timeout)`` blocks until ``count`` requests were answered 2xx and returns all such events;
  ``delivered_ids()`` lists their ``webhook-id`` headers in order, duplicates kept.
- Behaviour: ``respond_with(status, body, headers)`` changes the default answer; ``fail_next(n, status=503,
  headers=None)`` queues n failures before the default; ``answer_sequence([...])`` queues answers (an int status,
  a ``(status, body[, headers])`` tuple or an ``Answer``, which can also ``delay`` or ``drop`` the connection, or
  ``trickle`` it: ``"head"`` sends the status line and then headers one byte every ``trickle_interval`` seconds,
  never finishing; ``"body"`` sends the status line and headers at once, then the body one byte at a time, never
  finishing. A trickled event gets ``trickle_ended_at`` once its connection is gone; a head trickle is never
  ``status_answered``);
  ``set_delay(seconds)`` delays every answer (a slow receiver); ``go_down()`` closes the listening socket and every
  open connection (new connections are refused) and ``come_up()`` listens again on the same port; ``reset()``.
- ``WebhookReceiver(tls=server_ssl_context)`` serves https (e.g. with a ``trustme`` certificate for 127.0.0.1).

As a separate process, for the demo and the chaos runs::

    python -m harness.receiver --port 8099 --log /tmp/receiver.jsonl [--path /hook/TOKEN] \\
        [--fail-first N --fail-status 503] [--delay SECONDS] [--status 200]

prints one JSON line ``{"url": ..., "port": ..., "pid": ...}`` on stdout once it listens, then appends one JSON
line per received request to the log file (``received_at``, ``answered_at``, ``method``, ``path``, ``webhook_id``,
``status``, ``headers``, ``body`` as text, ``json``), after the answer was written. It stops on SIGTERM/SIGINT.
Its behaviour can be changed while it runs with ``POST /_control/<action>`` and a JSON object of arguments:
``respond_with {status, body, headers}``, ``fail_next {n, status, headers}``, ``set_delay {seconds}``,
``answer_sequence {answers: [{status, body, headers, delay, drop, trickle, trickle_interval}]}``,
``outage {seconds}`` (down, then up again on the same port), ``reset {}``.
Control requests are not recorded and are answered ``204``.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import secrets
import select
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Callable, Iterable, Mapping

from harness.connections import ConnectionThreads

MAX_BODY_BYTES = 10 * 1024 * 1024
JOIN_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Answer:
    """One scripted answer. ``drop`` closes the connection without answering (a receiver that crashed mid-request);
    ``delay`` overrides the receiver's delay for this answer; ``trickle`` (``"head"`` or ``"body"``) sends the
    answer one byte every ``trickle_interval`` seconds and never finishes it (a receiver that keeps a POST open)."""

    status: int = 200
    body: bytes = b"Accepted"
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float | None = None
    drop: bool = False
    trickle: str | None = None
    trickle_interval: float = 0.5

    def __post_init__(self) -> None:
        if self.trickle not in (None, "head", "body"):
            raise ValueError(f"trickle is 'head', 'body' or None, not {self.trickle!r}")


MAKE_ACCEPTED = Answer(200, b"Accepted", {"Content-Type": "text/plain; charset=utf-8"})


def _as_answer(item: Any) -> Answer:
    if isinstance(item, Answer):
        return item
    if isinstance(item, int):
        return Answer(item, b"" if item == 204 else f"status {item}".encode())
    if isinstance(item, tuple) and 2 <= len(item) <= 3:
        status, body = item[0], item[1]
        body = body.encode() if isinstance(body, str) else body
        return Answer(status, body, dict(item[2]) if len(item) == 3 and item[2] else {})
    raise TypeError(f"an answer is an int status, a (status, body[, headers]) tuple or an Answer, not {item!r}")


class _Server(HTTPServer):
    """HTTPServer with one thread per connection that the owning receiver tracks, closes and joins."""

    allow_reuse_address = True

    def __init__(self, owner: "WebhookReceiver", address: tuple[str, int]) -> None:
        self.owner = owner
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind() resolves the host name (getfqdn), which can stall without DNS; not needed here.
        socketserver.TCPServer.server_bind(self)
        host, self.server_port = self.server_address[:2]
        assert isinstance(host, str)  # an AF_INET address: (host, port)
        self.server_name = host

    def process_request(self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any) -> None:
        self.owner.connections.serve(self, request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real receiver: the sender's connection pool gets exercised
    server_version = "render-signal-test-receiver"
    timeout = 30  # an idle keep-alive connection ends its thread after this
    # Headers and body go out as separate writes; with Nagle on, the client's delayed ACK holds the body ~40 ms
    # per request (measured by bench/bench_burst.py), a cost real receivers do not impose.
    disable_nagle_algorithm = True

    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        pass

    def do_POST(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def _handle(self) -> None:
        owner = self.server.owner
        received_at = time.time()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._write(Answer(413, b"too large"))
            return
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            # The client went away mid-body (a killed sender): HTTP framing says the request never completed, so a
            # real receiver never acts on it; neither is it recorded here (nor held against the contract).
            self.close_connection = True
            return
        path = self.path.split("?", 1)[0]
        if owner.control and path.startswith("/_control/"):
            after_answer = owner._control(path[len("/_control/"):], body)
            self._write(Answer(204, b""))
            if after_answer is not None:
                after_answer()
            return
        if self.command != "POST":
            answer = Answer(405, b"method not allowed", {"Allow": "POST"})
        elif path != owner.path:
            answer = Answer(404, b"no such hook")
        else:
            answer = owner._next_answer()
        delay = answer.delay if answer.delay is not None else owner.delay
        if delay > 0:
            owner._stopping.wait(delay)
        # Recorded just before the answer is written: a client that has seen its answer always finds the event.
        headers = {name.lower(): value for name, value in self.headers.items()}
        answered = not answer.drop and answer.trickle != "head"
        event = {"method": self.command, "path": path, "headers": headers, "body": body, "json": _parse_json(body),
                 "received_at": received_at, "answered_at": time.time(),
                 "status_answered": answer.status if answered else None, "answer_error": None}
        owner._record(event)
        self._send(answer, event)
        owner._log(event)

    def _send(self, answer: Answer, event: dict[str, Any]) -> None:
        if answer.trickle is not None:
            self._trickle(answer, event)
        elif answer.drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        else:
            try:
                self._write(answer)
            except OSError as exc:
                # go_down()/stop() closed the connection. A client that merely gave up (timed out) is usually
                # NOT noticed here: the kernel accepts the write, so that request counts as answered, just as a
                # real receiver would have acted on it.
                self.server.owner._unanswered(event, type(exc).__name__)

    def _trickle(self, answer: Answer, event: dict[str, Any]) -> None:
        """Send ``answer`` slowly and endlessly, until the client goes away or the receiver stops."""
        owner = self.server.owner
        self.close_connection = True
        head = f"HTTP/1.1 {answer.status} {self.responses.get(answer.status, ('Status',))[0]}\r\n".encode()
        if answer.trickle == "head":
            sent_at_once, endless = b"", head + b"X-Trickle: "
        else:
            sent_at_once = head + b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 1000000\r\n\r\n"
            endless = b""
        try:
            if sent_at_once:
                self.connection.sendall(sent_at_once)
            index = 0
            while not owner._stopping.is_set() and not self._client_gone(answer.trickle_interval):
                # The script first, then "a" for ever: a header value or a body that never ends.
                byte = endless[index:index + 1] or b"a"
                index += 1
                self.connection.sendall(byte)
        except OSError:
            pass  # the client gave up (a reset, a broken pipe) or go_down() closed the connection
        with owner._cond:
            event["trickle_ended_at"] = time.time()
            owner._cond.notify_all()

    def _client_gone(self, seconds: float) -> bool:
        """Wait up to ``seconds``; True when the client has closed or shut down its side (end of stream)."""
        readable, _, _ = select.select([self.connection], [], [], seconds)
        return bool(readable) and not self.connection.recv(1024)

    def _write(self, answer: Answer) -> None:
        self.send_response(answer.status)
        names = {name.lower() for name in answer.headers}
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if "content-type" not in names and answer.body:
            self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if answer.body:
            self.wfile.write(answer.body)
        self.wfile.flush()


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


class WebhookReceiver:
    """A real HTTP receiver in a background thread of this process; see the module docstring."""

    def __init__(self, port: int = 0, path: str | None = None, log_path: str | None = None,
                 control: bool = False, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None,
                 contract: bool = True) -> None:
        self.host = host
        # Every webhook POSTed to the hook path is validated against docs/webhook-payload.schema.json; tests that
        # send placeholder bodies (the sender's and the receiver's own tests) switch it off.
        self.contract = contract
        self.tls = tls
        self.port = port
        self.path = path or f"/hook/{secrets.token_urlsafe(16)}"
        self.control = control
        self.delay = 0.0
        self._log_path = log_path
        self._log_lock = threading.Lock()
        self._cond = threading.Condition()
        self._events: list[dict[str, Any]] = []
        self._default = MAKE_ACCEPTED
        self._queue: list[Answer] = []
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._serve_thread: threading.Thread | None = None
        self.connections = ConnectionThreads("webhook-receiver-conn", tls, _Handler.timeout)
        self._timers: list[threading.Timer] = []
        self._updown_lock = threading.Lock()

    # --- lifecycle -------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.host}:{self.port}{self.path}"

    @property
    def is_up(self) -> bool:
        return self._server is not None

    def start(self) -> "WebhookReceiver":
        self.come_up()
        return self

    def come_up(self, bind_timeout: float = 5.0) -> None:
        """Listen (again) on the same port; retried briefly if the port is still held."""
        with self._updown_lock:
            if self._server is not None or self._stopping.is_set():
                return
            deadline = time.monotonic() + bind_timeout
            while True:
                try:
                    server = _Server(self, (self.host, self.port))
                    break
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            self.port = server.server_address[1]
            self._server = server
            self._serve_thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                                  name="webhook-receiver", daemon=True)
            self._serve_thread.start()

    def go_down(self) -> None:
        """Close the listening socket and every open connection: connections are refused until ``come_up()``."""
        with self._updown_lock:
            server, self._server = self._server, None
            if server is None:
                return
            server.shutdown()
            server.server_close()
            if self._serve_thread is not None:
                self._serve_thread.join(JOIN_TIMEOUT_SECONDS)
            self.connections.close_all()

    def stop(self) -> None:
        """Stop everything and join the handler threads; raise if one does not end (a leak in a test)."""
        self._stopping.set()
        for timer in self._timers:
            timer.cancel()
        self.go_down()
        alive = self.connections.join(JOIN_TIMEOUT_SECONDS)
        if alive:
            raise RuntimeError(f"webhook receiver: {len(alive)} handler thread(s) still running after stop")

    def __enter__(self) -> "WebhookReceiver":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- behaviour -------------------------------------------------------------------------------------------

    def respond_with(self, status: int, body: bytes | str = b"Accepted",
                     headers: Mapping[str, str] | None = None) -> None:
        """Answer every later request (after any queued ones) with this."""
        with self._cond:
            self._default = _as_answer((status, body, headers or {}))

    def fail_next(self, n: int, status: int = 503, headers: Mapping[str, str] | None = None) -> None:
        """Answer the next ``n`` requests with ``status``, then the default (Make's ``200 Accepted``)."""
        with self._cond:
            self._queue.extend(_as_answer((status, f"failure {status}", headers or {})) for _ in range(n))

    def answer_sequence(self, answers: Iterable[Any]) -> None:
        """Queue these answers (int, ``(status, body[, headers])`` or ``Answer``) before the default."""
        with self._cond:
            self._queue.extend(_as_answer(item) for item in answers)

    def set_delay(self, seconds: float) -> None:
        """Wait this long before every answer (interrupted only by ``stop()``)."""
        self.delay = max(0.0, float(seconds))

    def reset(self) -> None:
        """Default answer, no delay, nothing queued, no events."""
        with self._cond:
            self._default = MAKE_ACCEPTED
            self._queue.clear()
            self._events.clear()
        self.delay = 0.0

    def outage(self, seconds: float) -> None:
        """Go down now and come back up on the same port after ``seconds``."""
        self.go_down()
        timer = threading.Timer(seconds, self._come_up_unless_stopping)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _come_up_unless_stopping(self) -> None:
        if not self._stopping.is_set():
            self.come_up()

    def _next_answer(self) -> Answer:
        with self._cond:
            return self._queue.pop(0) if self._queue else self._default

    # --- what was received -----------------------------------------------------------------------------------

    @property
    def events(self) -> list[dict[str, Any]]:
        """A snapshot of every recorded request, oldest first."""
        with self._cond:
            return list(self._events)

    def delivered(self) -> list[dict[str, Any]]:
        self.assert_contract_kept()
        with self._cond:
            return [event for event in self._events if _is_2xx(event)]

    def contract_violations(self) -> list[str]:
        """One line per received webhook whose body breaks the payload contract (empty when ``contract`` is off)."""
        with self._cond:
            return [f"{event['headers'].get('webhook-id')}: {event['contract_error']}" for event in self._events
                    if event.get("contract_error")]

    def assert_contract_kept(self) -> None:
        violations = self.contract_violations()
        if violations:
            raise AssertionError("webhook bodies break docs/webhook-payload.schema.json: " + "; ".join(violations))

    def delivered_ids(self) -> list[str | None]:
        """``webhook-id`` of each 2xx-answered request, in order, duplicates kept."""
        return [event["headers"].get("webhook-id") for event in self.delivered()]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Block until ``count`` requests were answered 2xx; return every 2xx-answered event so far."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                delivered = [event for event in self._events if _is_2xx(event)]
                self.assert_contract_kept()  # a broken body fails the wait at once, not after the timeout
                if len(delivered) >= count:
                    return delivered
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(self._describe_wait_failure(count, timeout, delivered))
                self._cond.wait(remaining)

    def _describe_wait_failure(self, count: int, timeout: float, delivered: list[dict[str, Any]]) -> str:
        by_status: dict[str, int] = {}
        for event in self._events:
            key = str(event["status_answered"])
            by_status[key] = by_status.get(key, 0) + 1
        last = [(event["headers"].get("webhook-id"), event["path"] == self.path, event["status_answered"])
                for event in self._events[-5:]]
        return (f"webhook receiver: expected {count} request(s) answered 2xx within {timeout}s, got {len(delivered)}; "
                f"{len(self._events)} request(s) in all, by status answered {by_status or '{}'}; "
                f"last (webhook-id, right path, status): {last}; receiver is {'up' if self.is_up else 'DOWN'}, "
                f"delay {self.delay}s, {len(self._queue)} scripted answer(s) left")

    def _record(self, event: dict[str, Any]) -> None:
        if self.contract and event["method"] == "POST" and event["path"] == self.path:
            event["contract_error"] = _contract_error(event["headers"], event["body"])
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()

    def _unanswered(self, event: dict[str, Any], error: str) -> None:
        with self._cond:
            event["status_answered"] = None
            event["answer_error"] = error

    def _log(self, event: dict[str, Any]) -> None:
        if self._log_path:
            line = {"received_at": event["received_at"], "answered_at": event["answered_at"],
                    "method": event["method"], "path": event["path"],
                    "webhook_id": event["headers"].get("webhook-id"), "status": event["status_answered"],
                    "headers": event["headers"], "body": event["body"].decode("utf-8", "replace"),
                    "json": event["json"]}
            with self._log_lock, open(self._log_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(line, sort_keys=True) + "\n")

    def _control(self, action: str, body: bytes) -> Callable[[], None] | None:
        """Apply a control request; return what must run after it was answered (an outage), if anything."""
        args = _parse_json(body) or {}
        if action == "respond_with":
            self.respond_with(int(args.get("status", 200)), args.get("body", "Accepted"), args.get("headers"))
        elif action == "fail_next":
            self.fail_next(int(args.get("n", 1)), int(args.get("status", 503)), args.get("headers"))
        elif action == "set_delay":
            self.set_delay(float(args.get("seconds", 0)))
        elif action == "answer_sequence":
            self.answer_sequence(Answer(int(item.get("status", 200)), str(item.get("body", "")).encode(),
                                        dict(item.get("headers") or {}), item.get("delay"), bool(item.get("drop")),
                                        item.get("trickle"), float(item.get("trickle_interval", 0.5)))
                                 for item in args.get("answers", []))
        elif action == "outage":
            seconds = float(args.get("seconds", 5))
            return lambda: self.outage(seconds)
        elif action == "reset":
            self.reset()
        return None


def _contract_error(headers: Mapping[str, str], body: bytes) -> str | None:
    """Why a webhook breaks the contract: its body (the schema), or a ``webhook-id`` that is not its ``event_id``."""
    from harness.contract import WebhookContractError, validate_webhook_body

    try:
        validate_webhook_body(body)
    except WebhookContractError as exc:
        return str(exc)
    event_id = json.loads(body)["event_id"]
    if headers.get("webhook-id") != event_id:
        return f"webhook-id header {headers.get('webhook-id')!r} is not the body's event_id {event_id!r}"
    if not headers.get("content-type", "").startswith("application/json"):
        return f"content-type {headers.get('content-type')!r} is not application/json"
    return None


def _is_2xx(event: Mapping[str, Any]) -> bool:
    status = event["status_answered"]
    return status is not None and 200 <= status <= 299


# --- separate process ------------------------------------------------------------------------------------------

def receiver_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.receiver", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = a free one)")
    parser.add_argument("--log", required=True, help="file that gets one JSON line per received request")
    parser.add_argument("--path", default=None, help="hook path (default /hook/<random token>)")
    parser.add_argument("--status", type=int, default=200, help="default status (200 answers 'Accepted')")
    parser.add_argument("--fail-first", type=int, default=0, help="answer the first N requests with --fail-status")
    parser.add_argument("--fail-status", type=int, default=503)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before every answer")
    args = parser.parse_args(argv)

    receiver = WebhookReceiver(port=args.port, path=args.path, log_path=args.log, control=True)
    if args.status != 200:
        receiver.respond_with(args.status, f"status {args.status}")
    if args.fail_first:
        receiver.fail_next(args.fail_first, args.fail_status)
    receiver.set_delay(args.delay)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    receiver.start()
    print(json.dumps({"url": receiver.url, "port": receiver.port, "pid": os.getpid()}), flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        try:
            receiver.stop()
        except RuntimeError as exc:
            print(str(exc), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(receiver_main())
