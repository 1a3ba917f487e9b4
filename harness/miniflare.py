"""The real Cloudflare Worker (worker/src/index.js) on Miniflare (workerd) for the Python tests.

``worker/scripts/serve.mjs`` runs it on 127.0.0.1 with a local R2 bucket; the Worker's outbound requests (for
``https://www.dropbox.com/...`` and the like) are answered by a source server the test runs on loopback, while the
Worker still checks the real URLs against its allow-list. A second loopback server serves the stored objects and is
the Worker's ``R2_PUBLIC_BASE_URL``, so ``r2_url`` can be fetched and compared.

Fixture ``worker_on_miniflare`` (function): a factory, ``worker_on_miniflare(source_origin, retention_hours=None)``
returns a started ``MiniflareWorker`` with ``.url`` (the endpoint to POST to, i.e. ``R2_FETCH_ENDPOINT``),
``.public_base_url``, ``.token`` (``R2_FETCH_TOKEN``); every worker it started is stopped at teardown.
Needs ``node`` and ``worker/node_modules`` (``make test`` runs ``npm ci`` in worker/): missing, the test is skipped
locally and fails under ``CI=true``.
"""

from __future__ import annotations

import io
import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from harness.binaries import MissingRuntime, find_binary

WORKER_DIR = Path(__file__).resolve().parents[1] / "worker"
SERVE_SCRIPT = WORKER_DIR / "scripts" / "serve.mjs"
READY_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0


@dataclass
class MiniflareWorker:
    """One running ``serve.mjs``: the Worker's URL, the public base URL of its bucket, and its token."""

    url: str
    public_base_url: str
    token: str
    proc: subprocess.Popen = field(repr=False)
    tmpdir: str = field(repr=False)
    log_path: str = field(repr=False)
    _drain: threading.Thread = field(repr=False)

    def log(self) -> str:
        """What the Worker and Miniflare printed (Worker console lines such as ``R2_FETCH: stored ...``)."""
        try:
            return Path(self.log_path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Close stdin (serve.mjs disposes Miniflare and exits), kill the process group if it hangs, clean TMPDIR."""
        try:
            if self.proc.poll() is None:
                assert self.proc.stdin is not None  # started with stdin=PIPE
                try:
                    self.proc.stdin.close()
                except OSError:
                    pass
                try:
                    self.proc.wait(STOP_TIMEOUT_SECONDS)
                except subprocess.TimeoutExpired:
                    _kill_group(self.proc)
            self._drain.join(5)
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    # serve.mjs was started in a session of its own, so its group holds it and its workerd child, nothing else.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(5)


def find_worker_runtime() -> str:
    """Path of ``node``, once the Worker's npm packages are installed; ``MissingRuntime`` otherwise."""
    node = find_binary("node", "nodejs")
    if not (WORKER_DIR / "node_modules" / "miniflare" / "package.json").is_file():
        raise MissingRuntime("worker/node_modules/miniflare is missing: run make test (npm ci in worker/)")
    return node


def start_worker(node: str, source_origin: str, *, token: str | None = None,
                 retention_hours: float | None = None) -> MiniflareWorker:
    """Start serve.mjs with a TMPDIR of its own and wait for its first stdout line (JSON with its URLs)."""
    token = token or secrets.token_urlsafe(24)
    tmpdir = tempfile.mkdtemp(prefix="mf-")
    log_path = os.path.join(tmpdir, "serve.log")
    env = dict(os.environ, TMPDIR=tmpdir, R2_FETCH_TOKEN=token)
    if retention_hours is not None:
        env["R2_RETENTION_HOURS"] = str(retention_hours)
    log_file = open(log_path, "ab")
    try:
        proc = subprocess.Popen(
            [node, str(SERVE_SCRIPT), "--source-origin", source_origin],
            cwd=str(WORKER_DIR), env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file,
            start_new_session=True,
        )
    except BaseException:
        log_file.close()
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    first_line: queue.Queue[bytes] = queue.Queue(maxsize=1)
    # The Worker's console output goes to stdout after the first line: drain it so the pipe never fills up.
    drain = threading.Thread(target=_drain_stdout, args=(proc, log_file, first_line), daemon=True,
                             name="miniflare-stdout")
    drain.start()
    try:
        line = first_line.get(timeout=READY_TIMEOUT_SECONDS)
        ready = json.loads(line) if line else None
        if not ready:
            raise RuntimeError("serve.mjs exited before it was ready")
    except (queue.Empty, ValueError, RuntimeError) as exc:
        if proc.poll() is None:
            _kill_group(proc)
        drain.join(5)
        log = Path(log_path).read_text(encoding="utf-8", errors="replace")[-4000:]
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise RuntimeError(f"Worker on Miniflare not ready ({exc!r}), exit code {proc.poll()}:\n{log}") from exc
    return MiniflareWorker(url=ready["url"], public_base_url=ready["public_base_url"], token=token, proc=proc,
                           tmpdir=tmpdir, log_path=log_path, _drain=drain)


def _drain_stdout(proc: subprocess.Popen, log_file, first_line: queue.Queue) -> None:
    stdout = proc.stdout
    # Started with stdout=PIPE and default buffering: a buffered binary reader, whose read1 returns what is there.
    assert isinstance(stdout, io.BufferedReader)
    try:
        first_line.put(stdout.readline())
        for chunk in iter(lambda: stdout.read1(65536), b""):
            log_file.write(chunk)
            log_file.flush()
    finally:
        log_file.close()
        stdout.close()
