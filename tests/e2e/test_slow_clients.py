"""Slow clients (slowloris) against the real service under Gunicorn's gthread workers (issue 16).

What these tests pin down is the limit the README documents ("Slow clients"): a connection that sent part of a
request head holds one worker thread until the client closes it (Gunicorn has no request-head timeout, and the
worker's ``timeout`` does not fire while its main loop is alive); a connection that sent nothing holds a thread for
Gunicorn's 5 s wait for a first byte, then waits without one. Every socket a test opens is closed when the test
ends (ExitStack); each test has a watchdog.
"""

from __future__ import annotations

import socket
import time
from contextlib import ExitStack

import psutil
import pytest

from settings import Settings

DEFAULTS = Settings.from_env({})
WORKERS, THREADS = DEFAULTS.web_concurrency, DEFAULTS.gunicorn_threads
PARTIAL_HEAD = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
MAX_SLOW_CONNECTIONS = 16 * WORKERS * THREADS
FIRST_BYTE_WAIT_SECONDS = 5.0  # gunicorn.workers.gthread.DEFAULT_WORKER_DATA_TIMEOUT


def health_answers_within(port: int, seconds: float) -> bool:
    """A fresh connection's GET /health answers (200 or 503) within ``seconds``."""
    deadline = time.monotonic() + seconds
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=seconds) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            return sock.recv(16).startswith((b"HTTP/1.1 200", b"HTTP/1.1 503"))
    except OSError:
        return False


def connections_per_worker(service) -> list[int]:
    counts = []
    for pid in service.worker_pids():
        connections = psutil.Process(pid).net_connections(kind="tcp")
        counts.append(sum(1 for conn in connections
                          if conn.status == psutil.CONN_ESTABLISHED and conn.laddr.port == service.port))
    return counts


def open_slow(stack: ExitStack, port: int, head: bytes) -> socket.socket:
    sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=2))
    if head:
        sock.sendall(head)
    return sock


@pytest.mark.timeout(30)
def test_fewer_half_open_connections_than_a_workers_threads_leave_health_answering(service_factory):
    # Given the service with its default workers and threads, and THREADS - 1 clients stuck inside a request head
    service = service_factory({}, workers=WORKERS, threads=THREADS)
    with ExitStack() as stack:
        for _ in range(THREADS - 1):
            open_slow(stack, service.port, PARTIAL_HEAD)
            time.sleep(0.02)
        time.sleep(0.3)
        # Then every worker still has a free thread: /health answers every time, within 2 s
        assert all(health_answers_within(service.port, 2.0) for _ in range(5))


@pytest.mark.timeout(30)
def test_half_open_request_heads_on_every_worker_block_health_until_the_clients_close(service_factory):
    # Given the service, and clients that send part of a request head and never finish it, opened until every
    # worker holds at least THREADS of them (the kernel decides which worker accepts a connection)
    service = service_factory({}, workers=WORKERS, threads=THREADS)
    with ExitStack() as stack:
        opened = 0
        while min(connections_per_worker(service), default=0) < THREADS:
            assert opened < MAX_SLOW_CONNECTIONS, f"a worker stayed below {THREADS}: {connections_per_worker(service)}"
            open_slow(stack, service.port, PARTIAL_HEAD)
            opened += 1
            time.sleep(0.02)
        print(f"{opened} half-open connections, per worker {connections_per_worker(service)}")
        # Then /health does not answer within 2 s (nothing in Gunicorn times a request head out)
        time.sleep(0.5)
        assert not health_answers_within(service.port, 2.0)
        assert not health_answers_within(service.port, 2.0)
    # When the clients close, /health answers again at once
    assert health_answers_within(service.port, 2.0)


@pytest.mark.timeout(30)
def test_silent_connections_are_let_go_after_gunicorns_first_byte_wait_while_still_open(service_factory):
    # Given as many connections that send nothing as there are threads in all, all of them kept open
    service = service_factory({}, workers=WORKERS, threads=THREADS)
    with ExitStack() as stack:
        started = time.monotonic()
        for _ in range(WORKERS * THREADS):
            open_slow(stack, service.port, b"")
            time.sleep(0.02)
        # Each holds a thread for Gunicorn's 5 s wait for a first byte, those queued behind in turn: a worker holding
        # k of them is busy for ceil(k / THREADS) x 5 s
        busiest = max(connections_per_worker(service))
        budget = FIRST_BYTE_WAIT_SECONDS * -(-busiest // THREADS) + 3.0
        # Then /health answers within that, while the silent connections are still open
        assert health_answers_within(service.port, budget - (time.monotonic() - started)), (busiest, budget)
