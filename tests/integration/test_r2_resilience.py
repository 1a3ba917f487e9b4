"""R2 offload against a real HTTP server on 127.0.0.1 playing the Cloudflare Worker.

Contract proven here (what the orchestrator and the end-to-end suite rely on): ``offload_links`` returns one
``OffloadedLink`` per link, in input order, never raises, and within the longest link timeout plus a few seconds;
whenever the Worker fails, ``raw_url``/``direct_url`` hold the source, ``r2_url`` is None and a WARNING starting
``R2_TRANSFER: fallback to source URL`` names provider, reason and email id, never the token or the Worker's
path and query.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import pytest

from config import R2Config
from email_processing.links import DeliveryLink
from email_processing.orchestrator import OffloadedLink
from services.r2_offload import R2Offloader, build_offloader, key_form
from settings import Settings

TOKEN = "r2-token-Zq81-never-logged"
# The Worker URL's path and query may be a capability too: they must not reach the logs either.
WORKER_PATH = "/fetch-7c1e9?route=hidden"
FALLBACK = "R2_TRANSFER: fallback to source URL"


def dropbox_file(name: str = "Project%20Files.zip", token: str = "aaaaaaaaaaaaaaaaaaaaa") -> DeliveryLink:
    raw = f"https://www.dropbox.com/scl/fi/{token}/{name}?rlkey=bbbbbbbbbbbbbbbbbbbbbbbbb&dl=0"
    return DeliveryLink("dropbox", raw, raw.replace("dl=0", "dl=1"))


def dropbox_legacy_file() -> DeliveryLink:
    return DeliveryLink("dropbox", "https://www.dropbox.com/s/kqbk7ttolh2n3eb/shot.png?dl=0",
                        "https://www.dropbox.com/s/kqbk7ttolh2n3eb/shot.png?dl=1")


def dropbox_folder() -> DeliveryLink:
    raw = "https://www.dropbox.com/scl/fo/y0jj42hmrhedofd7dmb53/APlY-eJRqv375beJTIOszFc?rlkey=2txputjiysyg2&dl=0"
    return DeliveryLink("dropbox", raw, raw.replace("dl=0", "dl=1"))


# --- the Worker stand-in ----------------------------------------------------------------------------------------

@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    delay: float = 0.0
    hang: bool = False   # never answer (until the test ends)


def worker_success(request: dict) -> Answer:
    key = request["body"]["object_key"]
    return Answer(body=json.dumps({"success": True, "r2_url": f"https://files.example/{key}", "object_key": key,
                                   "original_filename": key.rsplit("/", 1)[-1]}).encode())


class FakeWorker:
    """A threaded HTTP server on 127.0.0.1; ``respond(request) -> Answer`` decides each answer; every request
    (path, headers, JSON body) is recorded."""

    def __init__(self, respond: Callable[[dict], Answer]) -> None:
        self.respond = respond
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self.release = threading.Event()
        worker = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                request = {"path": self.path, "headers": dict(self.headers), "body": body}
                with worker._lock:
                    worker.requests.append(request)
                answer = worker.respond(request)
                if answer.hang:
                    worker.release.wait(30)
                    self.close_connection = True
                    return
                if answer.delay:
                    worker.release.wait(answer.delay)
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{WORKER_PATH}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-r2-worker", daemon=True)
        self._thread.start()

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@pytest.fixture
def fake_worker():
    started: list[FakeWorker] = []

    def start(respond: Callable[[dict], Answer]) -> FakeWorker:
        worker = FakeWorker(respond)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def refused_url():
    # A socket bound but never listening: connecting to it is refused, and no other test can take the port.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}{WORKER_PATH}"
    sock.close()


class MemoryCopyStore:
    def __init__(self) -> None:
        self.records: dict[str, dict] = {}
        self.ttls: list[float] = []

    def get_r2_copy(self, source_url: str) -> dict | None:
        return self.records.get(source_url)

    def put_r2_copy(self, source_url: str, record: dict, ttl_seconds: float) -> None:
        self.records[source_url] = dict(record)
        self.ttls.append(ttl_seconds)


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def r2_settings(endpoint: str, **env: str) -> Settings:
    base = {"R2_FETCH_ENABLED": "true", "R2_FETCH_ENDPOINT": endpoint, "R2_FETCH_TOKEN": TOKEN,
            "R2_ALLOW_INSECURE": "true",  # the fake Worker serves http:// on loopback
            "R2_BUCKET_NAME": "deliveries", "R2_PUBLIC_BASE_URL": "https://files.example",
            "R2_FETCH_TIMEOUT_SECONDS": "1", "R2_FETCH_TIMEOUT_FOLDER_SECONDS": "3"}
    base.update(env)
    return Settings.from_env(base)


def offloader_for(endpoint: str, store: MemoryCopyStore | None = None, **kwargs) -> R2Offloader:
    env = kwargs.pop("env", {})
    return R2Offloader(R2Config.from_settings(r2_settings(endpoint, **env)),
                       store if store is not None else MemoryCopyStore(), **kwargs)


@pytest.fixture(autouse=True)
def r2_logs(caplog):
    caplog.set_level(logging.INFO, logger="services.r2_offload")
    yield caplog
    # Whatever happened in the test: no log record carries the token or the Worker's path and query.
    for record in caplog.records:
        text = record.getMessage() + (caplog.handler.formatter.formatException(record.exc_info)
                                      if record.exc_info else "")
        assert TOKEN not in text
        assert "fetch-7c1e9" not in text and "route=hidden" not in text


def fallback_messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.getMessage().startswith(FALLBACK)]


def assert_source_kept(result: list, links: list[DeliveryLink]) -> None:
    assert result == [OffloadedLink(link.provider, link.raw_url, link.direct_url, None, None) for link in links]


def assert_fell_back(caplog, reason: str, email_id: str, count: int = 1) -> None:
    messages = fallback_messages(caplog)
    assert len(messages) == count, messages
    for message in messages:
        assert f"reason={reason}" in message and f"email_id={email_id}" in message and "provider=dropbox" in message


# --- guaranteed fallback --------------------------------------------------------------------------------------

def test_it_falls_back_to_source_url_when_worker_answers_500(fake_worker, r2_logs):
    # Given a Worker that fails with HTTP 500
    worker = fake_worker(lambda request: Answer(status=500, body=b'{"error": "boom"}'))
    link = dropbox_file()
    # When the links of an email are offloaded
    result = offloader_for(worker.url).offload_links("email-500", [link])
    # Then the Worker was asked, and the link keeps its source URLs with the fallback WARNING
    assert worker.request_count == 1
    assert_source_kept(result, [link])
    assert_fell_back(r2_logs, "http_500", "email-500")


def test_it_falls_back_to_source_url_when_worker_refuses(fake_worker, r2_logs):
    # Given a Worker that answers {"success": false}
    worker = fake_worker(lambda request: Answer(body=b'{"success": false}'))
    link = dropbox_file()
    # When
    result = offloader_for(worker.url).offload_links("email-refused", [link])
    # Then
    assert_source_kept(result, [link])
    assert_fell_back(r2_logs, "worker_refused", "email-refused")


def test_it_falls_back_to_source_url_when_worker_answers_garbage(fake_worker, r2_logs):
    # Given a Worker that answers something that is not JSON
    worker = fake_worker(lambda request: Answer(body=b"<html>Error 1101: Worker threw exception</html>"))
    link = dropbox_file()
    # When
    result = offloader_for(worker.url).offload_links("email-garbage", [link])
    # Then
    assert_source_kept(result, [link])
    assert_fell_back(r2_logs, "invalid_json", "email-garbage")


def test_it_falls_back_when_the_answer_lacks_r2_url(fake_worker, r2_logs):
    # Given a Worker that claims success without saying where the copy is
    worker = fake_worker(lambda request: Answer(body=b'{"success": true}'))
    link = dropbox_file()
    # When
    result = offloader_for(worker.url).offload_links("email-no-url", [link])
    # Then
    assert_source_kept(result, [link])
    assert_fell_back(r2_logs, "missing_r2_url", "email-no-url")


@pytest.mark.timeout(20)
def test_it_falls_back_to_source_url_when_worker_times_out(fake_worker, r2_logs):
    # Given a Worker that never answers, and a 1 s timeout for file links
    worker = fake_worker(lambda request: Answer(hang=True))
    link = dropbox_file()
    # When
    started = time.monotonic()
    result = offloader_for(worker.url).offload_links("email-hang", [link])
    elapsed = time.monotonic() - started
    # Then the call returns once the timeout fires (not later), with the source URLs
    assert 0.9 <= elapsed < 4.0, elapsed
    assert_source_kept(result, [link])
    assert_fell_back(r2_logs, "timeout", "email-hang")


def test_it_falls_back_to_source_url_when_worker_refuses_connections(refused_url, r2_logs):
    # Given nothing listening at the Worker's address
    link = dropbox_file()
    # When
    started = time.monotonic()
    result = offloader_for(refused_url).offload_links("email-refused-conn", [link])
    # Then
    assert time.monotonic() - started < 2.0
    assert_source_kept(result, [link])
    assert_fell_back(r2_logs, "connection_error", "email-refused-conn")


# --- the request and success --------------------------------------------------------------------------------

def test_a_dropbox_link_is_copied_with_the_documented_request_and_recorded_for_reuse(fake_worker, r2_logs):
    # Given a healthy Worker
    worker = fake_worker(worker_success)
    store = MemoryCopyStore()
    link = dropbox_file()
    # When
    result = offloader_for(worker.url, store).offload_links("email-ok", [link])
    # Then the Worker got the documented request
    [request] = worker.requests
    assert request["path"] == WORKER_PATH
    headers = {name.lower(): value for name, value in request["headers"].items()}
    assert headers["x-r2-fetch-token"] == TOKEN and headers["content-type"] == "application/json"
    body = request["body"]
    assert set(body) == {"source_url", "source_key", "object_key", "bucket", "provider", "email_id", "max_bytes"}
    # the link's key form (Dropbox: only its identifying parameters, sorted), as source_url and source_key
    assert body["source_url"] == body["source_key"] == key_form("dropbox", link.direct_url)
    assert body["max_bytes"] == 2 * 1024 ** 3
    assert (body["bucket"], body["provider"], body["email_id"]) == ("deliveries", "dropbox", "email-ok")
    provider, first, second, name = body["object_key"].split("/")
    assert provider == "dropbox" and len(first) == len(second) == 8 and name == "Project_Files.zip"
    # and the link carries the R2 URL next to its source URLs
    assert result == [OffloadedLink("dropbox", link.raw_url, link.direct_url,
                                    f"https://files.example/{body['object_key']}", "Project_Files.zip")]
    assert any(r.getMessage().startswith("R2_TRANSFER: success") and body["object_key"] in r.getMessage()
               and "email_id=email-ok" in r.getMessage() for r in r2_logs.records)
    assert not fallback_messages(r2_logs)
    # and the copy is remembered for the bucket's retention (24 h by default)
    assert store.records[body["source_key"]]["r2_url"] == result[0].r2_url and store.ttls == [24 * 3600.0]


def test_a_source_already_copied_is_not_fetched_again(fake_worker):
    # Given a link copied for a first email
    worker = fake_worker(worker_success)
    offloader = offloader_for(worker.url, MemoryCopyStore())
    link = dropbox_file()
    first = offloader.offload_links("email-1", [link])
    # When a second email carries the same link
    second = offloader.offload_links("email-2", [link])
    # Then the Worker was called once, and both emails carry the same R2 URL
    assert worker.request_count == 1
    assert second == first and first[0].r2_url


def test_reuse_works_through_the_sqlite_state_store(fake_worker, tmp_path):
    state_store = pytest.importorskip("services.state_store")
    # Given the real SQLite state store as the copy record
    store = state_store.open_state_store(Settings.from_env({"STATE_DIR": str(tmp_path)}))
    try:
        worker = fake_worker(worker_success)
        link = dropbox_file()
        first = offloader_for(worker.url, store).offload_links("email-1", [link])
        # When a fresh offloader (another process, say) meets the same link
        second = offloader_for(worker.url, store).offload_links("email-2", [link])
        # Then it reuses the recorded copy
        assert worker.request_count == 1 and second == first and first[0].r2_url
    finally:
        store.close()


# --- what is offloaded ---------------------------------------------------------------------------------------

def test_non_dropbox_links_keep_their_source_and_are_never_sent(fake_worker, r2_logs):
    # Given a healthy Worker and an email with WeTransfer, SwissTransfer and FromSmash links
    worker = fake_worker(worker_success)
    links = [DeliveryLink("wetransfer", "https://wetransfer.com/downloads/abc/def", "https://wetransfer.com/downloads/abc/def"),
             DeliveryLink("swisstransfer", "https://www.swisstransfer.com/d/1234", "https://www.swisstransfer.com/d/1234"),
             DeliveryLink("fromsmash", "https://fromsmash.com/xyz", "https://fromsmash.com/xyz")]
    # When
    result = offloader_for(worker.url).offload_links("email-others", links)
    # Then nothing reached the Worker; each link is a fallback with reason=unsupported_provider
    assert worker.request_count == 0
    assert_source_kept(result, links)
    messages = fallback_messages(r2_logs)
    assert len(messages) == 3 and all("reason=unsupported_provider" in message for message in messages)


def test_a_url_outside_the_allow_list_is_never_sent(fake_worker, r2_logs):
    # Given an email whose "Dropbox" link points at a look-alike host, next to a genuine one
    worker = fake_worker(worker_success)
    evil = DeliveryLink("dropbox", "https://dropbox.com.evil.example/s/x", "https://dropbox.com.evil.example/s/x")
    genuine = dropbox_file()
    # When
    result = offloader_for(worker.url).offload_links("email-evil", [evil, genuine])
    # Then only the genuine link reached the Worker
    assert [request["body"]["source_url"] for request in worker.requests] == [key_form("dropbox", genuine.direct_url)]
    assert result[0] == OffloadedLink("dropbox", evil.raw_url, evil.direct_url, None, None)
    assert result[1].r2_url is not None
    security = [r for r in r2_logs.records if r.getMessage().startswith("SECURITY:")]
    assert len(security) == 1 and security[0].levelno == logging.WARNING
    assert "dropbox.com.evil.example" in security[0].getMessage()
    assert_fell_back(r2_logs, "not_allow_listed", "email-evil")


# --- adaptive timeout -----------------------------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_a_folder_link_gets_the_longer_timeout_and_a_file_link_does_not(fake_worker, r2_logs):
    # Given a Worker that answers after 2 s, a 1 s file timeout and a 3 s folder timeout
    worker = fake_worker(lambda request: Answer(delay=2.0, body=worker_success(request).body))
    offloader = offloader_for(worker.url)
    folder, file_link = dropbox_folder(), dropbox_file()
    # When a folder link is offloaded, Then it succeeds
    [copied] = offloader.offload_links("email-folder", [folder])
    assert copied.r2_url is not None and copied.direct_url == folder.direct_url
    # When a file link is offloaded, Then it falls back on its 1 s timeout
    started = time.monotonic()
    result = offloader.offload_links("email-file", [file_link])
    assert time.monotonic() - started < 1.9
    assert_source_kept(result, [file_link])
    assert_fell_back(r2_logs, "timeout", "email-file")


# --- circuit breaker ------------------------------------------------------------------------------------------

def test_after_5_failures_the_circuit_opens_and_after_the_cooldown_one_trial_call_is_made(fake_worker, r2_logs):
    # Given a failing Worker, a breaker of 5 failures / 60 s and a clock the test moves
    worker = fake_worker(lambda request: Answer(status=503))
    clock = FakeClock()
    offloader = offloader_for(worker.url, clock=clock)
    for number in range(5):
        offloader.offload_links(f"email-{number}", [dropbox_file()])
    assert worker.request_count == 5
    # When more emails arrive during the cool-down
    later = [offloader.offload_links(f"email-open-{number}", [dropbox_file(), dropbox_legacy_file()])
             for number in range(3)]
    # Then they fall back at once without calling the Worker, and the opening is logged once
    assert worker.request_count == 5
    assert all(result[0].r2_url is None and result[1].r2_url is None for result in later)
    assert sum("reason=circuit_open" in message for message in fallback_messages(r2_logs)) == 6
    assert sum(r.getMessage().startswith("R2_TRANSFER: circuit open") for r in r2_logs.records) == 1
    # When the cool-down has passed and an email with two links arrives
    clock.now += 60
    trial = offloader.offload_links("email-trial", [dropbox_file(), dropbox_legacy_file()])
    # Then exactly one trial call was made; it failed, so the circuit is open again
    assert worker.request_count == 6
    assert [link.r2_url for link in trial] == [None, None]
    offloader.offload_links("email-after-trial", [dropbox_file()])
    assert worker.request_count == 6
    assert sum(r.getMessage().startswith("R2_TRANSFER: circuit open") for r in r2_logs.records) == 2


def test_a_successful_trial_closes_the_circuit(fake_worker):
    # Given an open circuit after 5 failures
    healthy = threading.Event()
    worker = fake_worker(lambda request: worker_success(request) if healthy.is_set() else Answer(status=500))
    clock = FakeClock()
    offloader = offloader_for(worker.url, clock=clock)
    for number in range(5):
        offloader.offload_links(f"email-{number}", [dropbox_file()])
    assert offloader.offload_links("email-open", [dropbox_file()])[0].r2_url is None
    assert worker.request_count == 5
    # When the Worker recovers and the cool-down passes
    healthy.set()
    clock.now += 61
    trial = offloader.offload_links("email-trial", [dropbox_file()])
    # Then the trial succeeds and the next email's links all go to the Worker again
    assert trial[0].r2_url is not None
    after = offloader.offload_links("email-next", [dropbox_file(token="c" * 21), dropbox_legacy_file()])
    assert all(link.r2_url for link in after) and worker.request_count == 5 + 1 + 2


def test_refusals_about_one_source_do_not_open_the_circuit(fake_worker):
    # Given a Worker that is up but refuses every source (e.g. dead Dropbox links)
    worker = fake_worker(lambda request: Answer(body=b'{"success": false, "error": "source answered 404"}'))
    offloader = offloader_for(worker.url)
    # When many such links arrive
    for number in range(8):
        offloader.offload_links(f"email-{number}", [dropbox_file()])
    # Then every one was still tried: a sender's bad links do not switch R2 off for everyone
    assert worker.request_count == 8


def test_policy_refusals_of_the_worker_do_not_open_the_circuit(fake_worker):
    # Given a Worker that answers 403 policy for every link it will not copy (issue 16: five of them used to open
    # the circuit for everyone for 60 s)
    worker = fake_worker(lambda request: Answer(status=403, body=b'{"error": "policy", "detail": "host"}'))
    offloader = offloader_for(worker.url)
    # When many such links arrive
    for number in range(8):
        offloader.offload_links(f"email-policy-{number}", [dropbox_file()])
    # Then every one was still tried
    assert worker.request_count == 8


# --- never stall the line -------------------------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_the_links_of_one_email_are_offloaded_concurrently_and_keep_their_order(fake_worker):
    # Given a Worker that takes 1 s per request, and an email with 3 links (2 s file timeout)
    worker = fake_worker(lambda request: Answer(delay=1.0, body=worker_success(request).body))
    links = [dropbox_file(token="a" * 21), dropbox_legacy_file(), dropbox_file(name="b.pdf", token="b" * 21)]
    offloader = offloader_for(worker.url, env={"R2_FETCH_TIMEOUT_SECONDS": "2"})
    # When
    started = time.monotonic()
    result = offloader.offload_links("email-three", links)
    elapsed = time.monotonic() - started
    # Then it took about 1 s, not 3, and each result belongs to its link
    assert elapsed < 2.5, elapsed
    assert worker.request_count == 3
    assert [link.direct_url for link in result] == [link.direct_url for link in links]
    assert [link.r2_url.rsplit("/", 1)[-1] for link in result] == ["Project_Files.zip", "shot.png", "b.pdf"]


@pytest.mark.timeout(20)
def test_the_total_r2_time_of_an_email_is_bounded_however_many_links_it_has(fake_worker, r2_logs):
    # Given a Worker that never answers, one link at a time, a 0.5 s timeout and a 0.5 s email budget margin
    worker = fake_worker(lambda request: Answer(hang=True))
    links = [dropbox_file(token=f"{number:021d}") for number in range(8)]
    offloader = offloader_for(worker.url, env={"R2_FETCH_TIMEOUT_SECONDS": "0.5"}, max_parallel=1,
                              budget_grace_seconds=0.5)
    # When
    started = time.monotonic()
    result = offloader.offload_links("email-many", links)
    elapsed = time.monotonic() - started
    # Then the call returned after about the budget (1 s), not 8 x 0.5 s, and every link kept its source
    assert elapsed < 2.0, elapsed
    assert worker.request_count < len(links)
    assert_source_kept(result, links)
    assert_fell_back(r2_logs, "timeout", "email-many", count=len(links))


# --- wiring -----------------------------------------------------------------------------------------------------

def test_build_offloader_wires_a_working_client_from_settings(fake_worker):
    # Given settings with R2 on
    worker = fake_worker(worker_success)
    offloader = build_offloader(R2Config.from_settings(r2_settings(worker.url)), MemoryCopyStore())
    try:
        # When / Then the built offloader copies links through the Worker
        [link] = offloader.offload_links("email-built", [dropbox_file()])
        assert link.r2_url is not None and worker.request_count == 1
    finally:
        offloader.close()
