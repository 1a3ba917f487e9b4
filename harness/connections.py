"""The connections of a threaded test server (the webhook receiver, the identity provider): one thread each, the
TLS handshake inside it (a client that never completes one stalls nobody else), every socket tracked so that the
server can close them all at once and join their threads, so a test leaves nothing running."""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
import time
from typing import Any


class ConnectionThreads:
    """``serve(server, request, client_address)`` from a server's ``process_request``; ``close_all()`` wakes every
    connection's thread (it closes its socket itself); ``join(timeout)`` returns the threads still alive."""

    def __init__(self, name: str, tls: ssl.SSLContext | None = None, handshake_timeout: float = 10.0) -> None:
        self.name = name
        self.tls = tls
        self.handshake_timeout = handshake_timeout
        self._lock = threading.Lock()
        self._sockets: dict[threading.Thread, socket.socket] = {}

    def serve(self, server: socketserver.BaseServer, request: Any, client_address: Any) -> None:
        assert isinstance(request, socket.socket)  # a TCP server hands over connected sockets, never datagrams
        thread = threading.Thread(target=self._serve, args=(server, request, client_address), name=self.name,
                                  daemon=True)
        self._track(thread, request)
        thread.start()

    def _serve(self, server: socketserver.BaseServer, request: socket.socket, client_address: Any) -> None:
        try:
            if self.tls is not None:
                request.settimeout(self.handshake_timeout)
                # wrap_socket detaches the plain socket (its fd moves to the TLS one): track the TLS socket before
                # the handshake, so that close_all() can interrupt a client that never completes it.
                request = self.tls.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
                self._track(threading.current_thread(), request)
                request.do_handshake()
            server.finish_request(request, client_address)
        except OSError:
            pass  # the client went away, or close_all() closed the connection: both are expected here
        finally:
            server.shutdown_request(request)
            with self._lock:
                self._sockets.pop(threading.current_thread(), None)

    def _track(self, thread: threading.Thread, conn: socket.socket) -> None:
        with self._lock:
            self._sockets[thread] = conn

    @property
    def threads(self) -> list[threading.Thread]:
        with self._lock:
            return list(self._sockets)

    def close_all(self) -> None:
        with self._lock:
            conns = list(self._sockets.values())
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def join(self, timeout: float) -> list[threading.Thread]:
        """Wait up to ``timeout`` for every connection's thread; the ones still alive."""
        threads = self.threads
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [thread for thread in threads if thread.is_alive()]
