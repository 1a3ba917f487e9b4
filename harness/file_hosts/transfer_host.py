"""What the transfer services' fakes (SwissTransfer, Smash, WeTransfer) share: one threaded HTTP server on
127.0.0.1 (werkzeug with a Flask app, as ``harness/identity.py``), plain ``http`` or ``https`` with a throw-away
trustme CA (``ca_file``), every connection tracked (``harness/connections.py``) so ``stop()`` closes and joins them
all, a log of the requests it answered (``requests``: method, path, query, headers, JSON body) and failure injection:
``fail_next(n, status, retry_after=, delay=)`` answers the next ``n`` requests with ``status`` (and a
``Retry-After`` header) after ``delay`` seconds — a delay longer than the client's timeout is a slow answer.

A subclass adds its routes in ``routes(app)``; every route passes through ``before`` (failures, recording) first.
"""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from flask import Flask, Response, request
from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from harness.connections import ConnectionThreads

HOST = "127.0.0.1"
JOIN_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    json: Any = None


@dataclass
class _Failure:
    status: int
    retry_after: str | None
    delay: float


@dataclass
class _State:
    failures: list[_Failure] = field(default_factory=list)
    requests: list[RecordedRequest] = field(default_factory=list)


class _QuietHandler(WSGIRequestHandler):
    """No access log: a request line holds a transfer's capability (its id and security hash)."""

    protocol_version = "HTTP/1.1"
    timeout = 10

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        pass


class _Server(ThreadedWSGIServer):
    def __init__(self, owner: "TransferHostFake", app: Flask) -> None:
        self.owner = owner
        super().__init__(HOST, 0, app, handler=_QuietHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.owner.connections.serve(self, request, client_address)


class TransferHostFake:
    """Base of the fakes: ``start()`` listens on a free port, ``stop()`` closes every connection and joins."""

    name = "transfer-host"

    def __init__(self, *, tls: bool = True) -> None:
        self.dir = tempfile.mkdtemp(prefix=f"{self.name}-")
        self.ca_file: str | None = None
        self._tls = self._make_tls() if tls else None
        self._lock = threading.Lock()
        self._state = _State()
        self._server: _Server | None = None
        self._serve_thread: threading.Thread | None = None
        self.connections = ConnectionThreads(f"{self.name}-conn", self._tls, _QuietHandler.timeout)
        self.port = 0
        self.app = Flask(self.name)
        self.app.before_request(self._before)
        self.routes(self.app)

    def routes(self, app: Flask) -> None:  # pragma: no cover - every fake defines its own
        raise NotImplementedError

    # --- life cycle -------------------------------------------------------------------------------------------

    def _make_tls(self) -> ssl.SSLContext:
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert(HOST, "localhost")
        self.ca_file = os.path.join(self.dir, "ca.pem")
        ca.cert_pem.write_to_path(self.ca_file)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        return context

    def start(self) -> "TransferHostFake":
        server = _Server(self, self.app)
        self.port = server.server_address[1]
        self._server = server
        self._serve_thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                              name=self.name, daemon=True)
        self._serve_thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and every open connection, join the threads; raise if one does not end."""
        server, self._server = self._server, None
        try:
            if server is not None:
                server.shutdown()
                server.server_close()
                if self._serve_thread is not None:
                    self._serve_thread.join(JOIN_TIMEOUT_SECONDS)
            self.connections.close_all()
            alive = self.connections.join(JOIN_TIMEOUT_SECONDS)
            if alive or (self._serve_thread is not None and self._serve_thread.is_alive()):
                raise RuntimeError(f"{self.name}: {len(alive)} connection thread(s) still running after stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "TransferHostFake":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        return f"{'https' if self._tls else 'http'}://{HOST}:{self.port}"

    # --- test controls ----------------------------------------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 503, *, retry_after: int | str | None = None,
                  delay: float = 0.0) -> None:
        """Answer the next ``n`` requests with ``status`` (``Retry-After: retry_after`` when given) after
        ``delay`` seconds; ``status=200`` with a delay is a slow but otherwise normal answer."""
        failure = _Failure(status, None if retry_after is None else str(retry_after), delay)
        with self._lock:
            self._state.failures.extend([failure] * n)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._state.requests)

    # --- request handling -------------------------------------------------------------------------------------

    def _before(self) -> Response | None:
        body = request.get_json(silent=True) if request.is_json else None
        recorded = RecordedRequest(request.method, request.path, dict(request.args), dict(request.headers), body)
        with self._lock:
            self._state.requests.append(recorded)
            failure = self._state.failures.pop(0) if self._state.failures else None
        if failure is None:
            return None
        if failure.delay:
            time.sleep(failure.delay)
        if failure.status == 200:
            return None  # only slow
        response = Response('{"error": "injected"}', status=failure.status, mimetype="application/json")
        if failure.retry_after is not None:
            response.headers["Retry-After"] = failure.retry_after
        return response
