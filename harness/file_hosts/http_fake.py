"""What the file-host fakes of this package share (issue 19): a threaded HTTP server on 127.0.0.1 (a free port),
plain ``http`` or ``https`` with a throw-away trustme CA (``ca_file``), one tracked thread per connection
(``harness.connections.ConnectionThreads``) so that ``stop()`` closes and joins them all, failure injection
(``fail_next(n, status, retry_after=)``: the next ``n`` requests answer ``status``) and the log of every request
(``requests``: method, path, query). Each provider's fake is a Flask app handed to ``FakeHost``.
"""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, request
from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from harness.connections import ConnectionThreads

HOST = "127.0.0.1"
JOIN_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    status: int
    injected: bool  # answered by ``fail_next``


class _QuietHandler(WSGIRequestHandler):
    """No access log: request lines carry the share codes."""

    protocol_version = "HTTP/1.1"
    timeout = 10

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        pass


class _Server(ThreadedWSGIServer):
    def __init__(self, owner: "FakeHost", app: Flask) -> None:
        self.owner = owner
        super().__init__(HOST, 0, app, handler=_QuietHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.owner.connections.serve(self, request, client_address)


class FakeHost:
    """A fake file host serving ``app``; ``start()`` listens, ``stop()`` closes every connection, joins every
    thread and raises if one is left."""

    name = "file-host"

    def __init__(self, app: Flask, *, tls: bool = False) -> None:
        self.dir = tempfile.mkdtemp(prefix=f"{self.name}-")
        self.ca_file: str | None = None
        self._tls = self._make_tls() if tls else None
        self._lock = threading.Lock()
        self._failures: list[tuple[int, float | None]] = []
        self.requests: list[RecordedRequest] = []
        self.connections = ConnectionThreads(f"{self.name}-conn", self._tls, _QuietHandler.timeout)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.app = app
        app.before_request(self._injected)
        app.after_request(self._record)

    def _make_tls(self) -> ssl.SSLContext:
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = os.path.join(self.dir, "ca.pem")
        ca.cert_pem.write_to_path(self.ca_file)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        return context

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://{HOST}:{self.port}"

    def start(self) -> "FakeHost":
        server = _Server(self, self.app)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        try:
            if server is not None:
                server.shutdown()
                server.server_close()
                if self._thread is not None:
                    self._thread.join(JOIN_TIMEOUT_SECONDS)
            self.connections.close_all()
            alive = self.connections.join(JOIN_TIMEOUT_SECONDS)
            if alive or (self._thread is not None and self._thread.is_alive()):
                raise RuntimeError(f"{self.name}: {len(alive)} connection thread(s) still running after stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "FakeHost":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def fail_next(self, n: int = 1, status: int = 503, *, retry_after: float | None = None) -> None:
        """The next ``n`` requests answer ``status`` (with ``Retry-After`` when given) instead of the real answer."""
        with self._lock:
            self._failures.extend([(status, retry_after)] * n)

    def _injected(self) -> Response | None:
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
        if failure is None:
            return None
        status, retry_after = failure
        answer = Response("injected failure", status=status, content_type="text/plain")
        if retry_after is not None:
            answer.headers["Retry-After"] = str(int(retry_after))
        answer.headers["X-Injected"] = "1"
        return answer

    def _record(self, answer: Response) -> Response:
        injected = answer.headers.pop("X-Injected", None) is not None
        with self._lock:
            self.requests.append(RecordedRequest(request.method, request.path, dict(request.args),
                                                 answer.status_code, injected))
        return answer

    def paths(self) -> list[str]:
        with self._lock:
            return [item.path for item in self.requests]
