"""What the transfer services' fakes (SwissTransfer, Smash, WeTransfer) share: one threaded HTTP server on
127.0.0.1 (werkzeug with a Flask app, as ``harness/identity.py``), plain ``http`` or ``https`` with a throw-away
trustme CA (``ca_file``), every connection tracked (``harness/connections.py``) so ``stop()`` closes and joins them
all, a log of the requests it answered (``requests``: method, path, query, headers, JSON body) and failure injection:
``fail_next(n, status, retry_after=, delay=)`` answers the next ``n`` requests with ``status`` (and a
``Retry-After`` header) after ``delay`` seconds — a delay longer than the client's timeout is a slow answer.

A subclass adds its routes in ``routes(app)``; every route passes through ``before`` (failures, recording) first.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from flask import Flask, Response, request

from harness.flask_server import FlaskTestServer, ServedFake


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


class TransferHostFake(ServedFake):
    """Base of the fakes: ``start()`` listens on a free port, ``stop()`` closes every connection and joins."""

    name = "transfer-host"

    def __init__(self, *, tls: bool = True) -> None:
        self._lock = threading.Lock()
        self._state = _State()
        self.app = Flask(self.name)
        self.app.before_request(self._before)
        self.routes(self.app)
        self.server = FlaskTestServer(self.name, self.app, tls=tls)

    def routes(self, app: Flask) -> None:  # pragma: no cover - every fake defines its own
        raise NotImplementedError

    # --- life cycle -------------------------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        return self.server.url

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
