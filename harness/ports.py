"""Free loopback ports and readiness waits shared by the fixtures."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import time
from typing import Callable, Iterator

# Ports handed out under pytest-xdist: below the kernel's ephemeral range (32768-60999 on Linux), which is where
# bind(("127.0.0.1", 0)) and every outgoing connection take theirs, split into one block per worker.
_WORKER_PORTS = range(20000, 32768)


def free_port() -> int:
    """A loopback port that nothing listens on now (the caller's server binds it next).

    Under pytest-xdist (``PYTEST_XDIST_WORKER``) each worker takes its ports from a block of its own, so two
    workers can never pick the same port between choosing it and binding it; without xdist the kernel picks."""
    for port in _worker_ports():
        if _bindable(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:  # in use, or a recent connection of it is still in TIME_WAIT
            return False
        return True


def _worker_block() -> range | None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")      # "gw0", "gw1", ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if not worker.startswith("gw") or not worker[2:].isdigit() or count < 1:
        return None
    index, size = int(worker[2:]), len(_WORKER_PORTS) // count
    return _WORKER_PORTS[index * size:(index + 1) * size] if index < count else None


_next_in_block: Iterator[int] | None = None


def _worker_ports() -> Iterator[int]:
    """This worker's ports, going round its block (one round at most per call); nothing outside xdist."""
    global _next_in_block
    block = _worker_block()
    if not block:
        return iter(())
    if _next_in_block is None:
        _next_in_block = itertools.cycle(block)
    return itertools.islice(_next_in_block, len(block))


def wait_until(check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None,
               log_path: str | None = None, interval: float = 0.02) -> None:
    """Poll ``check`` until it is true; fail with the process log if the process died or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready:\n{_tail(log_path)}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(interval)
    raise RuntimeError(f"{what} not ready after {timeout}s:\n{_tail(log_path)}")


def read_log(path: str) -> str:
    """A server's whole log file as text ("" while it does not exist yet)."""
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _tail(path: str | None, limit: int = 4000) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as handle:
            return handle.read()[-limit:].decode("utf-8", "replace")
    except OSError:
        return "(no log)"


def stop_process(proc: subprocess.Popen, sig_timeout: float = 5.0) -> None:
    """Terminate by PID, then kill if it does not exit; always reaps."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(sig_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
