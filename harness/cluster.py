"""The whole product on loopback, for the end-to-end suite, the demo and the chaos run (issue 10).

``Cluster`` starts, in this order: a real Dovecot (one fresh account), optionally a real Redis, a local file server
playing Dropbox / WeTransfer (``SourceServer``), the Cloudflare Worker on Miniflare (workerd) whose outbound requests
for the Dropbox hosts are routed to that file server, a webhook receiver (in-process), and N service instances, each
a real Gunicorn master with its workers (``harness.service.ServiceProcess``). With Redis the instances share it
(lease + state); without it there must be one instance (file lock + SQLite under its STATE_DIR).

Everything is started by PID and stopped by PID in ``stop()`` (reverse order, every step in its own try), and
``stop()`` returns the ``(pid, create_time)`` of every process the cluster ever saw, so a caller can check with
psutil that nothing was left behind (``leftover_processes``).

Faults, all as context managers that undo themselves in a ``finally``: ``redis_paused()``, ``dovecot_paused()``,
``receiver_failing(status)``, ``worker_hung()`` (SIGSTOP of the Worker's process group: node + workerd), and
``source_stalled()`` (the file server holds every answer). ``kill_lease_holder()`` kills -9 the master (Redis) or the
worker process (file lock) that holds the lease, and ``restart(instance)`` starts a killed master again on the same
environment, as Render would restart a crashed container.

The helpers in the test infrastructure are imported, never copied; the fixture that uses this lives in
tests/e2e/test_e2e_chaos.py.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import io
import os
import secrets
import signal
import threading
import time
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Callable, Iterator

import requests

from harness.binaries import MissingRuntime, find_binary  # noqa: F401 (MissingRuntime: the scripts catch it)
from harness.dovecot import DONE_KEYWORD, DovecotServer, ImapAccount
from harness.mail import event_id_of, make_email
from harness.miniflare import MiniflareWorker, find_worker_runtime, start_worker
from harness.pipeline import service_env
from harness.receiver import WebhookReceiver
from harness.redis_server import RedisServer
from harness.service import ServiceProcess

if TYPE_CHECKING:
    from services.state_store import StateStore

LEASE_KEY = "render_signal:poller_lock"
ALLOWED_DOMAIN = "@example.com"

# One step of Cluster.stop(): run ``action``, record its failure under ``what`` and go on.
_Step = Callable[[str, Callable[[], Any]], None]


# --- the file server playing Dropbox and WeTransfer ----------------------------------------------------------------

def source_bytes(path: str, size: int = 64 * 1024) -> bytes:
    """Deterministic content of the file behind a share path (so an R2 copy can be compared byte for byte)."""
    seed = hashlib.sha256(path.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def folder_zip(path: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in ("cut_v3.mov", "stills/frame_001.png", "README.txt"):
            # A fixed timestamp: the same folder always zips to the same bytes (so a copy can be compared).
            archive.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)),
                             source_bytes(path + "/" + name, 16 * 1024))
    return buffer.getvalue()


class _SourceHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: "SourceServer"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base class
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        owner = self.server.owner  # type: ignore[attr-defined]  # set on the server instance by FileServer
        host = self.headers.get("X-Original-Host", "")
        path = self.path.split("?")[0]
        owner.requests.append((host, path))
        if owner.stalled.is_set():
            # The Worker's fetch hangs here until the stall ends (or the server stops).
            owner.released.wait(120)
        if path.startswith("/scl/fi/") or path.startswith("/scl/fo/"):
            # Dropbox: the share URL redirects to the content host, which serves the file (a zip for folders).
            location = f"https://uc{abs(hash(path)) % 997}.dl.dropboxusercontent.com/cd/0/get{path}?dl=1"
            self._answer(302, b"", {"Location": location})
        elif path.startswith("/cd/0/get/scl/fo/"):
            name = path.rstrip("/").rsplit("/", 1)[-1] or "folder"
            self._answer(200, folder_zip(path[len("/cd/0/get"):]), {
                "Content-Type": "application/zip",
                "Content-Disposition": f'attachment; filename="{name}.zip"'})
        elif path.startswith("/cd/0/get/scl/fi/"):
            name = path.rsplit("/", 1)[-1]
            self._answer(200, source_bytes(path[len("/cd/0/get"):]), {
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f'attachment; filename="{name}"'})
        elif path.startswith("/downloads/"):
            # WeTransfer serves an HTML landing page, never the file (the service does not offload it).
            self._answer(200, b"<html><body>WeTransfer landing page</body></html>", {"Content-Type": "text/html"})
        else:
            self._answer(404, b"no such file", {"Content-Type": "text/plain"})

    def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)


class SourceServer:
    """A ThreadingHTTPServer on 127.0.0.1 playing Dropbox (files, folders as zip) and WeTransfer landing pages."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.stalled = threading.Event()
        self.released = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _SourceHandler)
        self._server.daemon_threads = True
        self._server.owner = self  # type: ignore[attr-defined]  # read back by the handler (http.server API)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="e2e-source-server", daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "SourceServer":
        self._thread.start()
        return self

    def stall(self) -> None:
        self.released.clear()
        self.stalled.set()

    def release(self) -> None:
        self.stalled.clear()
        self.released.set()

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


# --- emails ----------------------------------------------------------------------------------------------------------

def expected_bytes(direct_url: str) -> bytes | None:
    """What the file server serves for a Dropbox link (by its share path), to compare an R2 copy with."""
    from urllib.parse import urlsplit

    path = urlsplit(direct_url).path
    if path.startswith("/scl/fo/"):
        return folder_zip(path)
    if path.startswith("/scl/fi/"):
        return source_bytes(path)
    return None


def dropbox_file_link(tag: str) -> str:
    return f"https://www.dropbox.com/scl/fi/{tag}/render_{tag}.mov?rlkey=k{tag}&dl=0"


def dropbox_folder_link(tag: str) -> str:
    return f"https://www.dropbox.com/scl/fo/{tag}/Project_{tag}?rlkey=k{tag}&dl=0"


def wetransfer_link(tag: str) -> str:
    return f"https://wetransfer.com/downloads/{tag}aa11bb22cc33/dd44ee{tag}"


@dataclass
class Sent:
    """One email the harness appended, and what it must become."""

    subject: str
    event_id: str
    email_id: str
    expect: str  # "deliver" | "skipped:<reason>"
    uid: int
    appended_at: float
    phase: str
    source_path: str | None = None  # the Dropbox share path, for checking an R2 copy


# --- the cluster ---------------------------------------------------------------------------------------------------

@dataclass
class Cluster:
    instances: int = 2
    workers: int = 2
    threads: int = 2
    use_redis: bool = True
    r2: bool = True
    env_overrides: dict[str, str] = field(default_factory=dict)
    log: Callable[[str], None] = lambda message: None

    def __post_init__(self) -> None:
        self.dovecot: DovecotServer | None = None
        self.account: ImapAccount | None = None
        self.redis: RedisServer | None = None
        self.source: SourceServer | None = None
        self.worker: MiniflareWorker | None = None
        self.receiver: WebhookReceiver | None = None
        self.services: list[ServiceProcess] = []  # the live instance per slot
        self.all_services: list[ServiceProcess] = []  # every master ever started, killed ones included
        self.env: dict[str, str] = {}
        self.status_token = secrets.token_urlsafe(16)
        self.webhook_secret = "whsec_" + __import__("base64").b64encode(secrets.token_bytes(24)).decode()
        self._seen: dict[int, float] = {}  # pid -> create_time of every process the cluster ran
        self._store: StateStore | None = None

    # --- life cycle ---------------------------------------------------------------------------------------------

    def start(self) -> "Cluster":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        dovecot_bin = find_binary("dovecot", "dovecot-imapd")
        redis_bin = find_binary("redis-server", "redis-server") if self.use_redis else None
        node = find_worker_runtime() if self.r2 else None
        started = time.monotonic()
        self.log("starting Dovecot (IMAP + IMAPS, own CA) ...")
        self.dovecot = DovecotServer(dovecot_bin).start()
        self.account = self.dovecot.new_account("e2e")
        assert self.dovecot.proc is not None  # start() returns once the master greets
        self._remember_group(self.dovecot.proc.pid)
        if redis_bin:
            self.log("starting Redis ...")
            self.redis = RedisServer(redis_bin).start()
            assert self.redis.proc is not None  # start() returns once the server answers
            self._remember(self.redis.proc.pid)
        self.source = SourceServer().start()
        self.log(f"file server playing Dropbox/WeTransfer on {self.source.origin}")
        if node:
            self.log("starting the Worker on Miniflare (workerd, local R2 bucket) ...")
            self.worker = start_worker(node, self.source.origin)
            self._remember_group(self.worker.proc.pid)
        self.receiver = WebhookReceiver().start()
        self.log(f"webhook receiver on {self.receiver.url.rsplit('/', 1)[0]}/...")
        overrides: dict[str, Any] = {
            "REDIS_LOCK_TTL_SECONDS": "3",
            "LEASE_RETRY_SECONDS": "1",
            "IMAP_TIMEOUT_SECONDS": "2",
            "EMAIL_POLLING_INTERVAL_SECONDS": "1",
            "WEBHOOK_TIMEOUT_SECONDS": "2",
            "WEBHOOK_RETRY_SCHEDULE": "0.5,1,2",
            "SENDER_OF_INTEREST_FOR_POLLING": ALLOWED_DOMAIN,
            "STATUS_API_TOKEN": self.status_token,
            "WEBHOOK_SECRET": self.webhook_secret,
            "HEARTBEAT_INTERVAL_SECONDS": "5",
        }
        if self.worker is not None:
            overrides.update({
                "R2_FETCH_ENABLED": "true",
                "R2_FETCH_ENDPOINT": self.worker.url,
                "R2_ALLOW_INSECURE": "true",  # Miniflare serves http:// on loopback
                "R2_FETCH_TOKEN": self.worker.token,
                "R2_BUCKET_NAME": "render-signal",
                "R2_FETCH_TIMEOUT_SECONDS": "2",
                "R2_FETCH_TIMEOUT_FOLDER_SECONDS": "4",
                "R2_CIRCUIT_FAILURES": "2",
                "R2_CIRCUIT_COOLDOWN_SECONDS": "2",
            })
        overrides.update(self.env_overrides)
        self.env = service_env(self.account, self.receiver, redis_url=self.redis.url if self.redis else None,
                               **overrides)
        if not self.redis and self.instances != 1:
            raise ValueError("without Redis the state is one container's SQLite: one instance only")
        for index in range(self.instances):
            self.log(f"starting service instance {index + 1}/{self.instances} "
                     f"(Gunicorn master, {self.workers} workers) ...")
            self.services.append(self._start_service(index))
        self.wait_for_holder(20)
        self.log(f"cluster up in {time.monotonic() - started:.1f}s; lease holder pid {self.holder_pid()}")

    def _service_env(self, index: int) -> dict[str, str]:
        if self.redis:
            # Separate containers: separate disks (their STATE_DIR is unused with Redis).
            return {**self.env, "STATE_DIR": f"{self.env['STATE_DIR']}-{index}"}
        return dict(self.env)

    def _start_service(self, index: int) -> ServiceProcess:
        service = ServiceProcess(self._service_env(index), workers=self.workers, threads=self.threads)
        self.all_services.append(service)
        service.start()
        self._remember_service(service)
        return service

    def add_instance(self) -> ServiceProcess:
        if not self.redis:
            raise ValueError("more instances need Redis")
        service = self._start_service(len(self.services))
        self.services.append(service)
        return service

    def restart(self, index: int) -> ServiceProcess:
        """Start instance ``index`` again on the same environment (a restarted container)."""
        self.services[index].cleanup()
        service = self._start_service(index)
        self.services[index] = service
        return service

    def stop(self) -> list[tuple[int, float]]:
        """Stop everything (gracefully where possible) and return every (pid, create_time) the cluster saw."""
        errors: list[str] = []

        def step(what: str, action: Callable[[], Any]) -> None:
            try:
                action()
            except BaseException as exc:  # noqa: BLE001 - every step must run
                errors.append(f"{what}: {exc!r}")

        for service in self.services:
            self._remember_service(service)
        self.threads_at_stop = self.harness_threads()
        self._undo_faults(step)
        self._stop_services(step)
        self._stop_backends(step)
        self.stop_errors = errors
        return sorted(self._seen.items())

    def _undo_faults(self, step: _Step) -> None:
        """Resume what a fault left stopped, so each process can then be stopped gracefully."""
        if self.worker is not None:
            self._remember_group(self.worker.proc.pid)
            step("worker resume", functools.partial(_signal_group, self.worker.proc.pid, signal.SIGCONT))
        if self.redis is not None and self.redis.paused:
            step("redis resume", self.redis.resume)
        if self.dovecot is not None and self.dovecot.paused:
            step("dovecot resume", self.dovecot.resume)

    def _stop_services(self, step: _Step) -> None:
        """SIGTERM every live master (timing how long each took to drain), then clean up every one."""
        self.graceful_seconds: dict[int, float] = {}
        for service in self.all_services:
            if service.proc is not None and service.proc.poll() is None:
                began = time.monotonic()
                step(f"service {service.port} SIGTERM", functools.partial(service.terminate, timeout=30))
                self.graceful_seconds[service.port] = time.monotonic() - began
            step(f"service {service.port} cleanup", service.cleanup)

    def _stop_backends(self, step: _Step) -> None:
        """The state store, then the servers the services talked to, in reverse order of their start."""
        if self._store is not None:
            step("state store close", self._store.close)
            self._store = None
        if self.receiver is not None:
            step("receiver", self.receiver.stop)
        if self.worker is not None:
            step("worker", self.worker.stop)
        if self.source is not None:
            step("source server", self.source.stop)
        if self.redis is not None:
            step("redis", self.redis.stop)
        if self.dovecot is not None:
            self._remember_group(self.dovecot.proc.pid if self.dovecot.proc else 0)
            step("dovecot", self.dovecot.stop)

    # --- bookkeeping for the "nothing left behind" check -------------------------------------------------------

    def _remember(self, pid: int) -> None:
        import psutil

        try:
            self._seen.setdefault(pid, psutil.Process(pid).create_time())
        except psutil.Error:
            pass

    def _remember_group(self, pid: int) -> None:
        import psutil

        if not pid:
            return
        self._remember(pid)
        try:
            for child in psutil.Process(pid).children(recursive=True):
                self._remember(child.pid)
        except psutil.Error:
            pass

    def _remember_service(self, service: ServiceProcess) -> None:
        if service.proc is not None:
            self._remember_group(service.proc.pid)

    def remember_all(self) -> None:
        for service in self.services:
            self._remember_service(service)
        if self.dovecot is not None and self.dovecot.proc is not None:
            self._remember_group(self.dovecot.proc.pid)
        if self.worker is not None:
            self._remember_group(self.worker.proc.pid)

    # --- the lease ----------------------------------------------------------------------------------------------

    def holder_token(self) -> str | None:
        if self.redis is not None:
            client = self.redis.client()
            try:
                return client.get(LEASE_KEY)
            finally:
                client.close()
        path = self.env.get("BG_POLLER_LOCK_FILE") or os.path.join(self.env["STATE_DIR"], "poller.lock")
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read().strip() or None
        except OSError:
            return None

    def holder_pid(self) -> int | None:
        token = self.holder_token()
        if not token:
            return None
        try:
            return int(token.split()[0].split("=", 1)[1])
        except (IndexError, ValueError):
            return None

    def holder_index(self) -> int | None:
        pid = self.holder_pid()
        for index, service in enumerate(self.services):
            if pid is not None and pid in service.worker_pids():
                return index
        return None

    def wait_for_holder(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                index = self.holder_index()
            except Exception:  # noqa: BLE001 - Redis may be paused or the file half-written
                index = None
            if index is not None:
                return index
            time.sleep(0.1)
        raise AssertionError(f"no live lease holder within {timeout}s (token {self.holder_token()!r})")

    def kill_lease_holder(self) -> tuple[int, int]:
        """Redis: SIGKILL the holder's whole master (a crashed container). File lock: SIGKILL only the holding
        worker (Gunicorn forks a new one). Returns (instance index, killed pid)."""
        index = self.wait_for_holder(15)
        pid = self.holder_pid()
        assert pid is not None
        service = self.services[index]
        self._remember_service(service)
        if self.redis is not None:
            assert service.proc is not None  # the holder's worker runs, so its master does
            killed = service.proc.pid
            service.kill9()
        else:
            killed = pid
            os.kill(pid, signal.SIGKILL)
        return index, killed

    # --- faults (each undone in its finally) --------------------------------------------------------------------

    @contextlib.contextmanager
    def redis_paused(self) -> Iterator[None]:
        assert self.redis is not None
        self.redis.pause()
        try:
            yield
        finally:
            self.redis.resume()

    @contextlib.contextmanager
    def dovecot_paused(self) -> Iterator[None]:
        assert self.dovecot is not None and self.dovecot.proc is not None
        self._remember_group(self.dovecot.proc.pid)
        self.dovecot.pause()
        try:
            yield
        finally:
            self.dovecot.resume()

    @contextlib.contextmanager
    def receiver_failing(self, status: int = 503) -> Iterator[None]:
        assert self.receiver is not None
        self.receiver.respond_with(status, f"status {status}")
        try:
            yield
        finally:
            self.receiver.respond_with(200, b"Accepted", {"Content-Type": "text/plain; charset=utf-8"})

    @contextlib.contextmanager
    def worker_hung(self) -> Iterator[None]:
        """SIGSTOP the Worker's process group (serve.mjs and workerd): connections are accepted, nothing answers."""
        assert self.worker is not None
        self._remember_group(self.worker.proc.pid)
        _signal_group(self.worker.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            _signal_group(self.worker.proc.pid, signal.SIGCONT)

    @contextlib.contextmanager
    def source_stalled(self) -> Iterator[None]:
        assert self.source is not None
        self.source.stall()
        try:
            yield
        finally:
            self.source.release()

    # --- mail and results ---------------------------------------------------------------------------------------

    def append(self, raw: bytes) -> int:
        assert self.dovecot is not None and self.account is not None
        return self.dovecot.append(self.account.user, raw)

    def store(self) -> StateStore:
        if self._store is None:
            from services.state_store import open_state_store
            from settings import Settings

            self._store = open_state_store(Settings.from_env(self.env))
        return self._store

    def flags(self, uids: list[int]) -> dict[int, tuple[str, ...]]:
        assert self.dovecot is not None and self.account is not None
        client = self.dovecot.client(self.account.user, tls=False)
        try:
            client.select_folder("INBOX", readonly=True)
            found = client.get_flags(uids)
        finally:
            client.logout()
        return {uid: tuple(flag.decode() for flag in found.get(uid, ())) for uid in uids}

    def unflagged(self, uids: list[int]) -> list[int]:
        return [uid for uid, flags in self.flags(uids).items() if DONE_KEYWORD not in flags]

    def status(self) -> dict:
        for service in self.services:
            try:
                answer = requests.get(service.url + "/api/status", timeout=5,
                                      headers={"Authorization": f"Bearer {self.status_token}"})
                if answer.status_code == 200:
                    return answer.json()
            except requests.RequestException:
                continue
        return {}

    def harness_threads(self) -> list[threading.Thread]:
        """The threads this cluster runs in the calling process (receiver, file server, Worker log drain)."""
        threads: list[threading.Thread | None] = []
        if self.receiver is not None:
            threads.append(self.receiver._serve_thread)
            threads.extend(self.receiver.connections.threads)
        if self.source is not None:
            threads.append(self.source._thread)
        if self.worker is not None:
            threads.append(self.worker._drain)
        return [thread for thread in threads if thread is not None]

    def service_logs(self) -> str:
        return "\n".join(f"===== instance on port {s.port} =====\n{s.log_text()}" for s in self.all_services)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def leftover_processes(seen: list[tuple[int, float]], wait: float = 10.0) -> list[str]:
    """Processes of ``seen`` still alive (same pid and start time, not a zombie) after up to ``wait`` seconds."""
    import psutil

    def alive() -> list[str]:
        found = []
        for pid, created in seen:
            try:
                process = psutil.Process(pid)
                if abs(process.create_time() - created) > 0.01 or process.status() == psutil.STATUS_ZOMBIE:
                    continue
                found.append(f"{pid} {process.name()} {' '.join(process.cmdline())[:120]}")
            except psutil.Error:
                continue
        return found

    deadline = time.monotonic() + wait
    remaining = alive()
    while remaining and time.monotonic() < deadline:
        time.sleep(0.2)
        remaining = alive()
    return remaining


# --- runs: tracked emails and the end-of-run checks (the e2e suite and scripts/chaos.py) -----------------------

class Mail:
    """Appends tracked emails: most with a Dropbox link (deliver), some that must be skipped."""

    def __init__(self, cluster: "Cluster", prefix: str) -> None:
        self.cluster = cluster
        self.prefix = prefix
        self.sent: list[Sent] = []
        self.count = 0

    def one(self, phase: str) -> Sent:
        self.count += 1
        n = self.count
        tag = f"{self.prefix}{n:03d}"
        subject = f"[{self.prefix}] {phase} #{n}"
        source_path = None
        if n % 11 == 5:  # a sender outside SENDER_OF_INTEREST_FOR_POLLING
            raw = make_email(subject=subject, sender="Stranger <promo@elsewhere.test>",
                             links=[dropbox_file_link(tag)])
            expect = "skipped:sender_not_allowed"
        elif n % 11 == 10:  # an allowed sender, but no delivery link
            raw = make_email(subject=subject, links=[], extra_text="Just saying hello, no files this time.")
            expect = "skipped:no_delivery_links"
        else:
            raw = make_email(subject=subject, links=[dropbox_file_link(tag)])
            expect = "deliver"
            source_path = f"/scl/fi/{tag}/render_{tag}.mov"
        event_id = event_id_of(raw)
        appended_at = time.time()
        uid = self.cluster.append(raw)
        sent = Sent(subject=subject, event_id=event_id, email_id=event_id[len("msg_"):], expect=expect, uid=uid,
                    appended_at=appended_at, phase=phase, source_path=source_path)
        self.sent.append(sent)
        return sent

    def burst(self, phase: str, count: int, over_seconds: float = 0.0) -> None:
        for _ in range(count):
            self.one(phase)
            if over_seconds:
                time.sleep(over_seconds / count)


def delivered_events(cluster: "Cluster") -> dict[str, list[dict]]:
    assert cluster.receiver is not None
    by_id: dict[str, list[dict]] = collections.defaultdict(list)
    for event in cluster.receiver.delivered():
        by_id[event["headers"].get("webhook-id")].append(event)
    return by_id


def settled(cluster: "Cluster", sent: list[Sent]) -> list[Sent]:
    """The emails not yet at their final state (delivered and recorded, or recorded as skipped)."""
    delivered = delivered_events(cluster)
    store = cluster.store()
    waiting = []
    for item in sent:
        if item.expect == "deliver":
            record = store.get_item(item.event_id)
            if item.event_id not in delivered or record is None or record.status != "delivered":
                waiting.append(item)
        elif store.get_done(item.email_id) != item.expect:
            waiting.append(item)
    return waiting


def wait_settled(cluster: "Cluster", sent: list[Sent], what: str, timeout: float = 45.0) -> float:
    started = time.monotonic()
    deadline = started + timeout
    waiting = sent
    while time.monotonic() < deadline:
        try:
            waiting = settled(cluster, sent)
        except Exception:  # noqa: BLE001 - the store may still be reconnecting after a fault
            pass
        else:
            if not waiting:
                return time.monotonic() - started
        time.sleep(0.25)
    detail = [(item.subject, item.event_id, item.uid) for item in waiting[:10]]
    raise AssertionError(f"{what}: {len(waiting)} email(s) not settled within {timeout}s: {detail}\n"
                         f"status: {cluster.status()}\nlogs:\n{cluster.service_logs()[-12000:]}")


def check_run(cluster: "Cluster", sent: list[Sent], label: str, check_r2: bool = True,
              flag_wait: float = 20.0) -> tuple[dict, list[str]]:
    """The end-of-run checks: returns the tally and the list of problems (empty = all good)."""
    store = cluster.store()
    delivered = delivered_events(cluster)
    ours = {item.event_id for item in sent}
    deliverable = [item for item in sent if item.expect == "deliver"]
    skipped = [item for item in sent if item.expect != "deliver"]
    problems: list[str] = []

    problems += _lost_or_wrongly_delivered(store, delivered, deliverable, skipped)
    problems += _webhook_id_mismatches(delivered, deliverable)
    duplicates = sum(len(events) - 1 for webhook_id, events in delivered.items() if webhook_id in ours)
    possible_duplicates = store.counters().get("possible_duplicates", 0) or 0
    assert not isinstance(possible_duplicates, dict)  # a flat counter (only some counters are per-key maps)
    counted = int(possible_duplicates)
    if duplicates > counted:
        problems.append(f"{duplicates} duplicate deliveries but only {counted} counted as possible_duplicates")
    dead = store.list_items("dead", limit=1000)
    if dead:
        problems.append(f"dead letters: {[(d.event_id, d.dead_reason, d.last_status) for d in dead]}")
    problems += _unflagged(cluster, sent, flag_wait)
    with_r2, r2_problems = _r2_copies(delivered, deliverable, check_r2)
    problems += r2_problems

    latencies = _latencies(delivered, deliverable)
    worst = max(latencies, default=(0.0, "-"))
    per_phase: dict[str, float] = {}
    for latency, phase in latencies:
        per_phase[phase] = max(per_phase.get(phase, 0.0), latency)
    tally = {
        "run": label,
        "emails": len(sent),
        "delivered": len([item for item in deliverable if item.event_id in delivered]),
        "expected_deliveries": len(deliverable),
        "duplicates": duplicates,
        "possible_duplicates_counted": counted,
        "skipped": len(skipped),
        "dead_letters": len(dead),
        "with_r2_url": with_r2,
        "max_latency_s": round(worst[0], 2),
        "max_latency_phase": worst[1],
        "max_latency_by_phase_s": {phase: round(value, 2) for phase, value in per_phase.items()},
        "counters": store.counters(),
    }
    return tally, problems


def _lost_or_wrongly_delivered(store: StateStore, delivered: dict[str, list[dict]], deliverable: list[Sent],
                               skipped: list[Sent]) -> list[str]:
    """Exactly one delivered event id per deliverable email; skipped emails produced none and are recorded."""
    problems = []
    for item in deliverable:
        if item.event_id not in delivered:
            problems.append(f"LOST {item.subject} ({item.event_id}, uid {item.uid})")
    for item in skipped:
        if item.event_id in delivered:
            problems.append(f"DELIVERED BUT SHOULD SKIP {item.subject} ({item.event_id})")
        outcome = store.get_done(item.email_id)
        if outcome != item.expect:
            problems.append(f"SKIP NOT RECORDED {item.subject}: done record {outcome!r}, expected {item.expect!r}")
    return problems


def _webhook_id_mismatches(delivered: dict[str, list[dict]], deliverable: list[Sent]) -> list[str]:
    """A second delivery only with an identical webhook-id: group the 2xx requests by the email (subject) they
    carry."""
    problems = []
    ids_per_subject: dict[str | None, set[str]] = collections.defaultdict(set)
    for webhook_id, events in delivered.items():
        for event in events:
            body = event["json"] or {}
            if body.get("event_id") != webhook_id:
                problems.append(f"webhook-id {webhook_id} but body event_id {body.get('event_id')}")
            ids_per_subject[body.get("subject")].add(webhook_id)
    for item in deliverable:
        if len(ids_per_subject.get(item.subject, set())) > 1:
            problems.append(f"{item.subject} delivered under several webhook-ids {ids_per_subject[item.subject]}")
    return problems


def _unflagged(cluster: "Cluster", sent: list[Sent], flag_wait: float) -> list[str]:
    """Every email flagged done on the server (within ``flag_wait`` seconds)."""
    deadline = time.monotonic() + flag_wait
    unflagged = cluster.unflagged([item.uid for item in sent])
    while unflagged and time.monotonic() < deadline:
        time.sleep(0.5)
        unflagged = cluster.unflagged([item.uid for item in sent])
    return [f"not flagged $RenderSignalDone: uids {unflagged}"] if unflagged else []


def _r2_copies(delivered: dict[str, list[dict]], deliverable: list[Sent], check_r2: bool) -> tuple[int, list[str]]:
    """How many first deliveries carry an r2_url and, with ``check_r2``, which copies do not serve the source's
    bytes."""
    with_r2 = 0
    problems = []
    for item in deliverable:
        for event in delivered.get(item.event_id, [])[:1]:
            for link in (event["json"] or {}).get("delivery_links", []):
                if link.get("r2_url"):
                    with_r2 += 1
                    if check_r2 and not _serves_source(link["r2_url"], item):
                        problems.append(f"r2_url of {item.subject} does not serve the source bytes")
    return with_r2, problems


def _serves_source(r2_url: str, item: Sent) -> bool:
    assert item.source_path is not None  # Mail gives every deliverable email its Dropbox share path
    return requests.get(r2_url, timeout=10).content == source_bytes(item.source_path)


def _latencies(delivered: dict[str, list[dict]], deliverable: list[Sent]) -> list[tuple[float, str]]:
    """(seconds from append to first delivery, phase) of every delivered email."""
    latencies = []
    for item in deliverable:
        events = delivered.get(item.event_id)
        if events:
            latencies.append((events[0]["received_at"] - item.appended_at, item.phase))
    return latencies
