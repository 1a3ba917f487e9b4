"""A Flask app served for tests on 127.0.0.1 (a free port), plain ``http`` or ``https`` with a throw-away trustme CA
(``ca_file``), one tracked thread per connection (``harness.connections.ConnectionThreads``), no access log (request
lines carry capabilities: share codes, transfer ids, tokens). ``stop()`` closes every connection, joins every
thread and raises if one is left. What the file-host fakes share (``harness/file_hosts/``)."""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
import threading
from typing import Any, Self

from flask import Flask
from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from harness.connections import ConnectionThreads

HOST = "127.0.0.1"
JOIN_TIMEOUT_SECONDS = 5.0


class QuietHandler(WSGIRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # an idle keep-alive connection ends its thread after this

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        pass


class _Server(ThreadedWSGIServer):
    def __init__(self, connections: ConnectionThreads, app: Flask) -> None:
        self.connections = connections
        super().__init__(HOST, 0, app, handler=QuietHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections.serve(self, request, client_address)


class FlaskTestServer:
    """Serves ``app`` once started; ``url`` is its origin."""

    def __init__(self, name: str, app: Flask, *, tls: bool = False) -> None:
        self.name = name
        self.app = app
        self.dir = tempfile.mkdtemp(prefix=f"{name}-")
        self.ca_file: str | None = None
        self.tls = self._make_tls() if tls else None
        self.connections = ConnectionThreads(f"{name}-conn", self.tls, QuietHandler.timeout)
        self.port = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def _make_tls(self) -> ssl.SSLContext:
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert(HOST, "localhost")
        self.ca_file = os.path.join(self.dir, "ca.pem")
        ca.cert_pem.write_to_path(self.ca_file)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        return context

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    def start(self) -> None:
        server = _Server(self.connections, self.app)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=self.name, daemon=True)
        self._thread.start()

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


class ServedFake:
    """A fake served by its ``server`` (a ``FlaskTestServer`` a subclass sets in ``__init__``): the life cycle and
    addresses every fake has, delegated to that server."""

    server: FlaskTestServer

    @property
    def ca_file(self) -> str | None:
        return self.server.ca_file

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> Self:
        self.server.start()
        return self

    def stop(self) -> None:
        """Close the listener and every open connection, join the threads; raise if one does not end."""
        self.server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
