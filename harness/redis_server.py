"""A real redis-server on loopback for the tests: started on a free port, stopped by PID.

Fixtures:
- ``redis_server`` (session): one shared server; ``redis_url`` (function) hands out a flushed database of it.
- ``private_redis`` (function): a server of the test's own, for fault tests that pause (SIGSTOP) or kill it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile

from harness.ports import free_port, stop_process, wait_until


class RedisServer:
    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="rds-")
        self.log_path = os.path.join(self.dir, "redis.log")
        self.proc: subprocess.Popen | None = None
        self.paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--dir", self.dir, "--logfile", self.log_path, "--protected-mode", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(self._pong, 10, "redis-server", self.proc, self.log_path)
        return self

    def _pong(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    def client(self, db: int = 0):
        import redis

        return redis.Redis.from_url(f"redis://127.0.0.1:{self.port}/{db}", socket_timeout=2,
                                    socket_connect_timeout=2, decode_responses=True)

    def flushall(self) -> None:
        client = self.client()
        try:
            client.flushall()
        finally:
            client.close()

    def refuse_connections(self) -> None:
        """Save the data and exit (``SHUTDOWN SAVE``): every connection is refused until ``accept_connections``
        starts the server again on the same port, with the same data."""
        client = self.client()
        try:
            client.shutdown(save=True)
        except Exception:  # redis-py reports the closed connection of a successful SHUTDOWN as an error
            pass
        finally:
            client.close()
        assert self.proc is not None
        self.proc.wait(timeout=10)

    def accept_connections(self) -> None:
        self.start()

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        if self.proc is not None:
            if self.paused:
                self.resume()
            stop_process(self.proc)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
