"""The service itself under a real Gunicorn master, as a subprocess with a chosen environment.

``service_factory`` (function scoped) returns ``start(env, workers=2, threads=2) -> ServiceProcess``; every
process it started is killed (by process group) at the end of the test, even when the test failed.
A ``ServiceProcess`` has ``url``, ``get(path)``, ``log_text()``, ``wait_for_log(substring)``, ``terminate()``
(SIGTERM, graceful), ``kill9()`` (SIGKILL of the master and its workers) and ``worker_pids()``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Mapping

import requests

from harness.ports import free_port, read_log, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUNICORN = os.path.join(os.path.dirname(sys.executable), "gunicorn")


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment: PATH and friends only, so the developer's shell settings never leak in."""
    env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "CI") if key in os.environ}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = ROOT
    env.update(extra or {})
    return env


class ServiceProcess:
    def __init__(self, env: Mapping[str, str], workers: int = 2, threads: int = 2, port: int | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="svc-")
        self.log_path = os.path.join(self.dir, "service.log")
        env = dict(env)
        env.setdefault("STATE_DIR", os.path.join(self.dir, "var"))
        self.env = base_env(env)
        self.args = [GUNICORN, "-c", os.path.join(ROOT, "gunicorn.conf.py"), "--bind", f"127.0.0.1:{self.port}",
                     "--workers", str(workers), "--threads", str(threads), "--no-control-socket", *extra_args,
                     "app:app"]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> "ServiceProcess":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        if wait:
            wait_until(self._healthy, 20, "gunicorn service", self.proc, self.log_path, interval=0.05)
        return self

    def _healthy(self) -> bool:
        return requests.get(self.url + "/health", timeout=1).status_code in (200, 503)

    def get(self, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 5)
        return requests.get(self.url + path, **kwargs)

    def log_text(self) -> str:
        return read_log(self.log_path)

    def wait_for_log(self, substring: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if substring in self.log_text():
                return
            time.sleep(0.05)
        raise AssertionError(f"{substring!r} not logged within {timeout}s; log:\n{self.log_text()[-4000:]}")

    def worker_pids(self) -> list[int]:
        import psutil

        if self.proc is None:
            return []
        try:
            return [child.pid for child in psutil.Process(self.proc.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def terminate(self, timeout: float = 60.0) -> int:
        """Graceful stop (what Render does on a redeploy); returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._close()

    def kill9(self) -> None:
        """Kill the master and its workers at once, like an OOM kill or a crashed container."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self._close()

    def _close(self) -> None:
        log = getattr(self, "_log", None)
        if log is not None and not log.closed:
            log.close()

    def cleanup(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self._close()
