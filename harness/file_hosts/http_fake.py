"""What the file-host fakes of this package share (issue 19): a threaded HTTP server on 127.0.0.1 (a free port),
plain ``http`` or ``https`` with a throw-away trustme CA (``ca_file``), one tracked thread per connection
(``harness.connections.ConnectionThreads``) so that ``stop()`` closes and joins them all, failure injection
(``fail_next(n, status, retry_after=)``: the next ``n`` requests answer ``status``) and the log of every request
(``requests``: method, path, query). Each provider's fake is a Flask app handed to ``FakeHost``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from flask import Flask, Response, request

from harness.flask_server import HOST, FlaskTestServer, ServedFake

__all__ = ["HOST", "FakeHost", "RecordedRequest"]


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    status: int
    injected: bool  # answered by ``fail_next``


class FakeHost(ServedFake):
    """A fake file host serving ``app``; ``start()`` listens, ``stop()`` closes every connection, joins every
    thread and raises if one is left."""

    name = "file-host"

    def __init__(self, app: Flask, *, tls: bool = False) -> None:
        self.server = FlaskTestServer(self.name, app, tls=tls)
        self._lock = threading.Lock()
        self._failures: list[tuple[int, float | None]] = []
        self.requests: list[RecordedRequest] = []
        self.app = app
        app.before_request(self._injected)
        app.after_request(self._record)

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
