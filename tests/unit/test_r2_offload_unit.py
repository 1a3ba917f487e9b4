"""Unit tests of services/r2_offload.py: pure helpers, the log lines of the Worker's circuit, wiring, and the failure
edges a real server cannot produce on demand (odd exceptions, a broken copy store or metrics hook). The behaviour
against a real Worker-shaped HTTP server is proven in test_r2_resilience.py; the breaker's own state machine in
test_circuit_breaker.py."""

from __future__ import annotations

import io
import json
import logging

import pytest
import requests

from config import R2Config
from email_processing import orchestrator
from email_processing.links import DeliveryLink
from email_processing.orchestrator import OffloadedLink
from services import r2_offload
from services.r2_offload import (
    NullOffloader,
    R2Offloader,
    build_offloader,
    endpoint_origin,
    file_name_for,
    is_allow_listed,
    key_form,
    normalise_source_url,
    object_key_for,
    worker_circuit_breaker,
)
from services.r2_presign import NullPresigner
from settings import Settings

TOKEN = "unit-token-7f3a9c2e5b1d"
FILE_RAW = "https://www.dropbox.com/scl/fi/aaaaaaaaaaaaaaaaaaaaa/Project%20Files.zip?rlkey=bbbbbbbbbbbbbbbbbbbbbbbbb&dl=0"
FILE_LINK = DeliveryLink("dropbox", FILE_RAW, FILE_RAW.replace("dl=0", "dl=1"))


def r2_settings(**env: str) -> Settings:
    base = {"R2_FETCH_ENABLED": "true", "R2_FETCH_ENDPOINT": "https://worker.example/fetch?x=1",
            "R2_FETCH_TOKEN": TOKEN, "R2_BUCKET_NAME": "deliveries"}
    base.update(env)
    return Settings.from_env(base)


class MemoryCopyStore:
    def __init__(self) -> None:
        self.records: dict[str, dict] = {}

    def get_r2_copy(self, source_url: str) -> dict | None:
        return self.records.get(source_url)

    def put_r2_copy(self, source_url: str, record: dict, ttl_seconds: float) -> None:
        self.records[source_url] = dict(record)


class BrokenCopyStore:
    def get_r2_copy(self, source_url: str) -> dict | None:
        raise OSError("disk gone")

    def put_r2_copy(self, source_url: str, record: dict, ttl_seconds: float) -> None:
        raise OSError("disk gone")


class RecordingMetrics:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str | None]] = []

    def incr(self, name: str, amount: int = 1, label: str | None = None) -> None:
        self.calls.append((name, amount, label))


class BrokenMetrics:
    def incr(self, name: str, amount: int = 1, label: str | None = None) -> None:
        raise RuntimeError("metrics down")


class FakeSession:
    """Stands in for requests.Session: raises ``error`` or answers ``status``/``body``."""

    def __init__(self, *, error: BaseException | None = None, status: int = 200, body: bytes = b"") -> None:
        self.error = error
        self.status = status
        self.body = body
        self.calls: list[dict] = []

    def post(self, url: str, **kwargs) -> requests.Response:
        self.calls.append({"url": url, **kwargs})
        if self.error is not None:
            raise self.error
        response = requests.Response()
        response.status_code = self.status
        response.raw = io.BytesIO(self.body)
        return response

    def close(self) -> None:
        pass


def success_body(key: str = "dropbox/00000000/11111111/Project_Files.zip") -> bytes:
    return json.dumps({"success": True, "r2_url": f"https://r2.example/{key}", "object_key": key,
                       "original_filename": "Project Files.zip"}).encode()


def make_offloader(session: FakeSession, store=None, metrics=None, **env: str) -> R2Offloader:
    return R2Offloader(R2Config.from_settings(r2_settings(**env)), store if store is not None else MemoryCopyStore(),
                       metrics, session=session)


def fallback_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("R2_TRANSFER: fallback to source URL")]


# --- object keys, file names, URLs ------------------------------------------------------------------------------

def test_object_key_is_provider_two_hash_parts_and_file_name_and_is_deterministic():
    url = normalise_source_url(FILE_LINK.direct_url)
    key = object_key_for("dropbox", url)
    assert key == object_key_for("dropbox", url)
    provider, first, second, name = key.split("/")
    assert provider == "dropbox" and name == "Project_Files.zip"
    import hashlib
    digest = hashlib.sha256(url.encode()).hexdigest()
    assert (first, second) == (digest[:8], digest[8:16])
    assert object_key_for("dropbox", url.replace("rlkey=b", "rlkey=c")) != key


@pytest.mark.parametrize("url, expected", [
    ("https://www.dropbox.com/s/abc/report.pdf?dl=1", "report.pdf"),
    ("https://www.dropbox.com/scl/fi/x/Project%20Files.zip?rlkey=k&dl=1", "Project_Files.zip"),
    ("https://www.dropbox.com/scl/fo/x/AAAAbbbb?rlkey=k&dl=1", "file"),
    ("https://www.dropbox.com/scl/fo/x/h?dl=1", "file"),
    ("https://www.dropbox.com/s/abc/..%2F..%2Fetc%2Fpasswd.txt", "etc_passwd.txt"),
    ("https://www.dropbox.com/s/abc/.bashrc", "file"),
    ("https://www.dropbox.com/s/abc/caf%C3%A9%20menu.PDF", "caf_menu.PDF"),
    ("https://www.dropbox.com/", "file"),
    ("https://www.dropbox.com/s/abc/name.with spaces and (brackets)!.tar", "name.with_spaces_and_brackets_.tar"),
])
def test_file_name_is_last_segment_with_extension_sanitised_else_file(url, expected):
    assert file_name_for(url) == expected


def test_file_name_is_capped_and_keeps_its_extension():
    name = file_name_for("https://www.dropbox.com/s/abc/" + "a" * 300 + ".mp4")
    assert len(name) == r2_offload.MAX_FILE_NAME_CHARS and name.endswith(".mp4")


def test_normalisation_touches_only_case_port_and_fragment():
    url = "HTTPS://WWW.Dropbox.COM:443/scl/fi/Tok/File.pdf?rlkey=AbC&st=XyZ&dl=1#frag"
    assert normalise_source_url(url) == "https://www.dropbox.com/scl/fi/Tok/File.pdf?rlkey=AbC&st=XyZ&dl=1"


@pytest.mark.parametrize("url", [
    "https://www.dropbox.com/s/x/a.pdf?dl=1",
    "https://dropbox.com/s/x/a.pdf",
    "https://dl.dropboxusercontent.com/s/x/a.pdf",
    "https://DL.DROPBOX.COM/s/x/a.pdf",
])
def test_dropbox_hosts_are_allow_listed(url):
    assert is_allow_listed("dropbox", url)


@pytest.mark.parametrize("url", [
    "https://dropbox.com.evil.example/s/x",
    "https://evildropbox.com/s/x",
    "https://www.dropbox.com@evil.example/s/x",
    "https://user:pw@www.dropbox.com/s/x",
    "http://www.dropbox.com/s/x/a.pdf",
    "ftp://www.dropbox.com/s/x",
    "https://127.0.0.1/s/x",
    "https://www.dropbox.com:bad/s/x",
    "not a url",
])
def test_anything_else_is_not_allow_listed(url):
    assert not is_allow_listed("dropbox", url)


def test_only_providers_that_serve_files_have_an_allow_list():
    assert not is_allow_listed("wetransfer", "https://wetransfer.com/downloads/abc")


def test_endpoint_origin_drops_path_query_and_credentials():
    assert endpoint_origin("https://u:p@worker.example:8443/secret/path?token=1") == "https://worker.example:8443"


# --- timeouts -------------------------------------------------------------------------------------------------

def test_production_default_timeouts_are_15_s_for_files_and_120_s_for_folders():
    settings = Settings.from_env({})
    assert (settings.r2_fetch_timeout_seconds, settings.r2_fetch_timeout_folder_seconds) == (15.0, 120.0)
    enabled = settings.replace(r2_fetch_enabled=True, r2_fetch_endpoint="https://w.example/", r2_fetch_token=TOKEN)
    offloader = R2Offloader(R2Config.from_settings(enabled), None, session=FakeSession())
    assert offloader.timeout_for("https://www.dropbox.com/scl/fo/x/AAA?rlkey=k&dl=1") == 120.0
    assert offloader.timeout_for("https://www.dropbox.com/sh/x/AAA?dl=1") == 120.0
    assert offloader.timeout_for("https://www.dropbox.com/scl/fi/x/a.zip?rlkey=k&dl=1") == 15.0
    assert offloader.timeout_for("https://www.dropbox.com/s/x/a.pdf?dl=1") == 15.0


def test_the_worker_call_uses_the_adaptive_timeout_and_never_follows_redirects():
    session = FakeSession(body=success_body())
    offloader = make_offloader(session, R2_FETCH_TIMEOUT_SECONDS="7", R2_FETCH_TIMEOUT_FOLDER_SECONDS="70")
    folder = DeliveryLink("dropbox", "https://www.dropbox.com/scl/fo/x/AAA?rlkey=k&dl=0",
                          "https://www.dropbox.com/scl/fo/x/AAA?rlkey=k&dl=1")
    offloader.offload_links("e1", [FILE_LINK])
    offloader.offload_links("e2", [folder])
    assert [call["timeout"] for call in session.calls] == [7.0, 70.0]
    assert all(call["allow_redirects"] is False and call["verify"] is True for call in session.calls)


@pytest.mark.parametrize("url", [
    "https://www.dropbox.com/l/AAD3xYzNotificationLink",      # a notification link: fetching it is a click
    "https://www.dropbox.com/t/Ab12Cd34Ef56",                  # a Dropbox Transfer landing page
    "https://www.dropbox.com/request/AbCdEf123",               # an upload page, no file
])
def test_dropbox_links_that_are_not_files_are_never_sent_to_the_worker(url):
    session = FakeSession(body=success_body())
    offloader = make_offloader(session)
    link = DeliveryLink("dropbox", url, url)
    assert not offloader.offloads_any([link])
    [result] = offloader.offload_links("e1", [link])
    assert session.calls == [] and result.r2_url is None


# --- the Worker's circuit -------------------------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_circuit_opens_after_threshold_logs_once_and_lets_one_trial_through_after_cooldown(caplog):
    caplog.set_level(logging.INFO, logger="services.r2_offload")
    clock = FakeClock()
    breaker = worker_circuit_breaker(3, 60, clock)
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == "open"
    assert not breaker.allow() and not breaker.allow()
    breaker.record_failure()  # a late failure of a call started before the opening: no second opening
    openings = [r for r in caplog.records if r.getMessage().startswith("R2_TRANSFER: circuit open")]
    assert len(openings) == 1 and openings[0].levelno == logging.WARNING
    clock.now += 59.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.allow()          # the trial
    assert not breaker.allow()      # only one at a time
    breaker.record_failure()        # trial failed: open again, logged again (a new opening)
    assert breaker.state == "open" and breaker.openings == 2
    clock.now += 60
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()
    # The operator-facing lines, exactly: one per change of state, in order
    circuit = [(r.levelno, r.getMessage()) for r in caplog.records if r.getMessage().startswith("R2_TRANSFER: circuit")]
    assert circuit == [
        (logging.WARNING, "R2_TRANSFER: circuit open after 3 consecutive Worker failures; links keep their source URLs "
                          "for 60 s, then one trial call"),
        (logging.INFO, "R2_TRANSFER: circuit half-open, trying one Worker call"),
        (logging.WARNING, "R2_TRANSFER: circuit open after 5 consecutive Worker failures; links keep their source URLs "
                          "for 60 s, then one trial call"),
        (logging.INFO, "R2_TRANSFER: circuit half-open, trying one Worker call"),
        (logging.INFO, "R2_TRANSFER: circuit closed, the Worker answered again"),
    ]


# --- wiring ---------------------------------------------------------------------------------------------------

def test_r2_is_off_without_the_flag_and_an_endpoint_alone_is_reported_once_at_info(caplog):
    caplog.set_level(logging.INFO, logger="services.r2_offload")
    endpoint_only = Settings.from_env({"R2_FETCH_ENDPOINT": "https://worker.example/secret"})
    offloader = build_offloader(R2Config.from_settings(endpoint_only), None)
    assert isinstance(offloader, NullOffloader) and isinstance(offloader, orchestrator.NullOffloader)
    off = [r for r in caplog.records if "R2 offload is off" in r.getMessage()]
    assert len(off) == 1 and off[0].levelno == logging.INFO
    assert "secret" not in off[0].getMessage()
    caplog.clear()
    assert isinstance(build_offloader(R2Config.from_settings(Settings.from_env({})), None), NullOffloader)
    assert not caplog.records


def test_null_offloader_keeps_every_source_url_without_logging(caplog):
    caplog.set_level(logging.DEBUG, logger="services.r2_offload")
    links = [FILE_LINK, DeliveryLink("wetransfer", "https://we.tl/t-x", "https://we.tl/t-x")]
    result = NullOffloader().offload_links("e1", links)
    assert result == [OffloadedLink(link.provider, link.raw_url, link.direct_url, None, None) for link in links]
    assert not caplog.records


def test_enabled_r2_builds_the_worker_client_with_a_null_presigner_for_public_buckets(caplog):
    caplog.set_level(logging.INFO, logger="services.r2_offload")
    offloader = build_offloader(R2Config.from_settings(r2_settings(R2_PUBLIC_BASE_URL="https://files.example")),
                                MemoryCopyStore())
    try:
        assert isinstance(offloader, R2Offloader)
        assert isinstance(offloader._presigner, NullPresigner)
        on = [r.getMessage() for r in caplog.records if "R2 offload on" in r.getMessage()]
        assert on and "https://worker.example" in on[0] and "fetch" not in on[0] and TOKEN not in on[0]
    finally:
        offloader.close()


# --- failure edges --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("error, reason", [
    (requests.exceptions.SSLError("bad certificate for https://worker.example/secret"), "connection_error"),
    (requests.exceptions.ConnectTimeout("slow"), "timeout"),
    (requests.exceptions.InvalidHeader("bad header"), "unexpected_error"),
    (ValueError("weird"), "unexpected_error"),
    (RuntimeError("bug"), "unexpected_error"),
])
def test_any_exception_of_the_worker_call_falls_back_and_never_escapes(caplog, error, reason):
    offloader = make_offloader(FakeSession(error=error))
    result = offloader.offload_links("e1", [FILE_LINK])
    assert result == [OffloadedLink("dropbox", FILE_LINK.raw_url, FILE_LINK.direct_url, None, None)]
    [record] = fallback_records(caplog)
    assert record.levelno == logging.WARNING and f"reason={reason}" in record.getMessage()
    assert "secret" not in caplog.text


@pytest.mark.parametrize("status, body, reason", [
    (200, json.dumps({"success": True, "r2_url": ""}).encode(), "missing_r2_url"),
    (200, json.dumps({"success": True, "r2_url": "javascript:alert(1)"}).encode(), "missing_r2_url"),
    (200, json.dumps({"success": "yes", "r2_url": "https://r2.example/x"}).encode(), "worker_refused"),
    (200, json.dumps(["success", True]).encode(), "invalid_json"),
    (200, b"\xff\xfe", "invalid_json"),
    (200, b"{" + b" " * (70 * 1024) + b"}", "invalid_json"),
    (302, b"", "http_302"),
    (401, b'{"success": false}', "http_401"),
])
def test_odd_worker_answers_fall_back_with_their_reason(caplog, status, body, reason):
    result = make_offloader(FakeSession(status=status, body=body)).offload_links("e1", [FILE_LINK])
    assert result[0].r2_url is None and result[0].direct_url == FILE_LINK.direct_url
    [record] = fallback_records(caplog)
    assert f"reason={reason}" in record.getMessage()


def test_worker_error_text_is_logged_only_when_it_cannot_carry_a_url(caplog):
    body = json.dumps({"success": False, "error": "source answered HTML"}).encode()
    make_offloader(FakeSession(body=body)).offload_links("e1", [FILE_LINK])
    body = json.dumps({"success": False, "error": f"could not fetch {FILE_LINK.direct_url}"}).encode()
    make_offloader(FakeSession(body=body)).offload_links("e2", [FILE_LINK])
    first, second = fallback_records(caplog)
    assert "detail=source answered HTML" in first.getMessage()
    assert "rlkey" not in second.getMessage()


def test_a_broken_copy_store_costs_reuse_but_not_the_copy(caplog):
    session = FakeSession(body=success_body())
    result = make_offloader(session, store=BrokenCopyStore()).offload_links("e1", [FILE_LINK])
    assert result[0].r2_url == "https://r2.example/dropbox/00000000/11111111/Project_Files.zip"
    assert len(session.calls) == 1
    assert sum("copy record" in r.getMessage() or "record the copy" in r.getMessage() for r in caplog.records) == 2


def test_a_broken_copy_store_and_a_failing_worker_still_fall_back(caplog):
    session = FakeSession(status=503)
    result = make_offloader(session, store=BrokenCopyStore()).offload_links("e1", [FILE_LINK])
    assert result[0].r2_url is None
    assert "reason=http_503" in fallback_records(caplog)[0].getMessage()


def test_a_recorded_copy_is_reused_without_calling_the_worker(caplog):
    caplog.set_level(logging.INFO, logger="services.r2_offload")
    store = MemoryCopyStore()
    first = make_offloader(FakeSession(body=success_body()), store=store).offload_links("e1", [FILE_LINK])
    session = FakeSession(status=500)
    second = make_offloader(session, store=store).offload_links("e2", [FILE_LINK])
    assert session.calls == []
    assert second == first and second[0].original_filename == "Project Files.zip"
    assert any("reused=True" in r.getMessage() and "email_id=e2" in r.getMessage() for r in caplog.records)


def test_metrics_count_successes_and_fallbacks_by_reason():
    metrics = RecordingMetrics()
    make_offloader(FakeSession(body=success_body()), metrics=metrics).offload_links("e1", [FILE_LINK])
    make_offloader(FakeSession(status=500), metrics=metrics).offload_links(
        "e2", [FILE_LINK, DeliveryLink("fromsmash", "https://fromsmash.com/x", "https://fromsmash.com/x")])
    assert metrics.calls == [("r2_success", 1, None), ("r2_fallback", 1, "http_500"),
                             ("r2_fallback", 1, "unsupported_provider")]


def test_a_failing_metrics_hook_changes_nothing():
    result = make_offloader(FakeSession(body=success_body()), metrics=BrokenMetrics()).offload_links("e1", [FILE_LINK])
    assert result[0].r2_url is not None


@pytest.mark.parametrize("url", [
    "https://user:pw@www.dropbox.com/s/x/a.pdf?dl=1",
    "https://www.dropbox.com:99999/s/x/a.pdf?dl=1",
    "http://www.dropbox.com/s/x/a.pdf?dl=1",
    "https://dropbox.com.evil.example/s/x/a.pdf?dl=1",
])
def test_a_dropbox_link_outside_the_allow_list_is_refused_with_a_security_warning(caplog, url):
    session = FakeSession(body=success_body())
    result = make_offloader(session).offload_links("e1", [DeliveryLink("dropbox", url, url)])
    assert session.calls == [] and result[0].r2_url is None and result[0].direct_url == url
    assert [r.levelno for r in caplog.records if r.getMessage().startswith("SECURITY:")] == [logging.WARNING]
    assert "reason=not_allow_listed" in fallback_records(caplog)[0].getMessage()


def test_an_email_without_links_costs_nothing():
    session = FakeSession()
    assert make_offloader(session).offload_links("e1", []) == []
    assert session.calls == []


@pytest.mark.parametrize("reason, counts", [
    ("timeout", True), ("connection_error", True), ("invalid_json", True), ("unexpected_error", True),
    ("http_401", True), ("http_500", True), ("http_503", True),
    ("http_403", False), ("policy_too_large", False), ("policy_key_conflict", False), ("policy_host", False),
    ("policy_refused", False), ("http_404", False), ("http_429", False), ("http_400", False), ("http_413", False),
    ("worker_refused", False),
])
def test_only_failures_of_the_worker_itself_count_toward_the_circuit(reason, counts):
    from services.r2_offload import _counts_against_worker

    assert _counts_against_worker(reason) is counts


# --- key form and the Worker's policy answers (issue 16) -----------------------------------------------------

@pytest.mark.parametrize("url, expected", [
    ("https://www.dropbox.com/scl/fi/Tok/a.pdf?rlkey=K&dl=1&a=1",
     "https://www.dropbox.com/scl/fi/Tok/a.pdf?dl=1&rlkey=K"),
    ("https://www.dropbox.com/scl/fi/Tok/a.pdf?utm_source=x&st=S&rlkey=K&dl=1#frag",
     "https://www.dropbox.com/scl/fi/Tok/a.pdf?dl=1&rlkey=K&st=S"),
    ("https://WWW.DROPBOX.COM:443/s/x/a.pdf?raw=1", "https://www.dropbox.com/s/x/a.pdf?raw=1"),
    ("https://www.dropbox.com/s/x/a.pdf?a=1&b=2", "https://www.dropbox.com/s/x/a.pdf"),
])
def test_the_dropbox_key_form_keeps_only_identifying_parameters_sorted(url, expected):
    assert key_form("dropbox", url) == expected


def test_junk_parameters_map_to_one_object_while_a_different_rlkey_maps_to_another():
    base = "https://www.dropbox.com/scl/fi/Tok/a.pdf?rlkey=K&dl=1"
    junks = ("", "&a=1", "&a=2&zz=", "&utm_source=x")
    keys = {object_key_for("dropbox", key_form("dropbox", base + junk)) for junk in junks}
    other = object_key_for("dropbox", key_form("dropbox", base.replace("rlkey=K", "rlkey=L")))
    assert len(keys) == 1 and other not in keys


def test_a_provider_without_key_rules_keeps_its_query_verbatim():
    url = "https://example.test/d/x?b=2&a=1"
    assert key_form("other", url) == normalise_source_url(url) == "https://example.test/d/x?b=2&a=1"


def test_the_worker_is_sent_the_key_form_as_source_url_and_source_key_with_max_bytes():
    session = FakeSession(body=success_body())
    link = DeliveryLink("dropbox", FILE_RAW, FILE_LINK.direct_url + "&junk=1")

    make_offloader(session, R2_MAX_BYTES="1000000").offload_links("e1", [link])

    sent = json.loads(session.calls[0]["data"])
    assert sent["source_url"] == sent["source_key"] == key_form("dropbox", FILE_LINK.direct_url)
    assert "junk" not in sent["source_url"]
    assert sent["max_bytes"] == 1_000_000
    assert sent["object_key"] == object_key_for("dropbox", sent["source_key"])


@pytest.mark.parametrize("answer, reason", [
    ({"success": False, "error": "policy", "reason": "too_large", "detail": "source announces 9 bytes"},
     "policy_too_large"),
    ({"success": False, "error": "policy", "reason": "key_conflict"}, "policy_key_conflict"),
    ({"success": False, "error": "policy", "reason": "host", "detail": "redirect refused: host x.example"},
     "policy_host"),
    ({"success": False, "error": "policy", "reason": "something\nnew"}, "policy_refused"),
    ({"success": False, "error": "forbidden"}, "http_403"),
    ("<html>proxy says no</html>", "http_403"),
])
def test_a_403_answer_is_read_as_the_workers_policy_reason(answer, reason, caplog):
    body = (answer if isinstance(answer, str) else json.dumps(answer)).encode()
    session = FakeSession(status=403, body=body)

    with caplog.at_level(logging.WARNING):
        result = make_offloader(session).offload_links("e1", [FILE_LINK])

    assert result[0].r2_url is None
    assert f"reason={reason} " in fallback_records(caplog)[0].getMessage()


def test_policy_refusals_never_open_the_circuit():
    refusal = json.dumps({"success": False, "error": "policy", "reason": "too_large"}).encode()
    offloader = make_offloader(FakeSession(status=403, body=refusal), store=None, R2_CIRCUIT_FAILURES="2")
    links = [DeliveryLink("dropbox", FILE_RAW, FILE_LINK.direct_url.replace("rlkey=b", f"rlkey=r{n}"))
             for n in range(6)]

    for link in links:
        offloader.offload_links("e1", [link])

    assert offloader.breaker.allow()
    assert len(offloader._worker._session.calls) == 6  # every link reached the Worker: none was skipped
