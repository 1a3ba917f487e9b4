"""Free loopback ports and readiness waits shared by the fixtures."""

from __future__ import annotations

import socket
import subprocess
import time
from typing import Callable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
