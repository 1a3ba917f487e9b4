"""The status routes read a ``StatusSource`` and nothing else; the runtime's source follows its live views."""

from __future__ import annotations

from flask import Flask

from background.runner import PollerState, ServiceRuntime
from background.status_source import StatusSource
from routes import register_routes
from settings import Settings

TOKEN = "source-token-Hq52-do-not-print"
HEALTHY_VIEW = {"poller": "polling", "lease": "held", "imap": "ok", "outbox": "ok", "cluster": "ok",
                "published": None, "outbox_stats": None, "stale": False}


def never_opened():
    raise AssertionError("the store must not be opened when nothing shared is there to read")


def make_source(**changes) -> StatusSource:
    values = dict(version="v9", status_api_token=TOKEN, background_mode="disabled", lease_backend="file",
                  shared_redis=False, mailbox_folder="Renders", open_store=never_opened,
                  instance=lambda: {"host": "h", "pid": 7, "worker": 2, "uptime_s": 1.0, "version": "v9"},
                  poller_snapshot=lambda: {"state": "standby"}, lease_snapshot=lambda: None,
                  cluster_view=lambda: None, threads_dead=lambda: False)
    values.update(changes)
    return StatusSource(**values)


def app_over(source: StatusSource) -> Flask:
    app = Flask("test_status_source")
    register_routes(app, source)
    return app


def test_health_is_answered_from_the_source_alone():
    # Given only a status source whose background runs and whose observer saw the IMAP server unreachable
    source = make_source(background_mode="enabled", cluster_view=lambda: {**HEALTHY_VIEW, "imap": "unreachable"})
    # When /health is asked
    response = app_over(source).test_client().get("/health")
    # Then it answers from the source's view and version
    body = response.get_json()
    assert response.status_code == 200 and body["status"] == "degraded" and body["version"] == "v9"
    assert body["checks"]["imap"] == "unreachable"


def test_health_is_down_when_the_source_says_the_threads_died():
    source = make_source(background_mode="enabled", cluster_view=lambda: HEALTHY_VIEW, threads_dead=lambda: True)
    response = app_over(source).test_client().get("/health")
    assert response.status_code == 503 and response.get_json()["status"] == "down"


def test_the_status_document_of_a_disabled_background_comes_from_the_source_without_opening_the_store():
    response = app_over(make_source()).test_client().get("/api/status", headers={"X-API-Key": TOKEN})
    assert response.status_code == 200
    body = response.get_json()
    assert body["background"] == "disabled" and body["poller"]["mailbox"] == "Renders"
    assert body["lease"]["backend"] == "file" and body["instance"]["worker"] == 2


def test_the_status_routes_take_the_token_from_the_source():
    client = app_over(make_source(status_api_token=None)).test_client()
    assert client.get("/api/status", headers={"X-API-Key": TOKEN}).status_code == 404
    assert app_over(make_source()).test_client().get("/api/status").status_code == 401


def test_a_status_source_never_shows_its_token_in_its_repr():
    assert TOKEN not in repr(make_source())


def test_the_runtimes_source_reads_its_live_views(tmp_path):
    # Given a runtime without a background, and the source it hands to the routes
    settings = Settings.from_env({"STATE_DIR": str(tmp_path / "var"), "REDIS_URL": "redis://127.0.0.1:9/0",
                                  "IMAP_MAILBOX": "Renders", "STATUS_API_TOKEN": TOKEN})
    runtime = ServiceRuntime(settings)
    source = runtime.status_source()
    # Then its values are the runtime's, and its views follow the runtime after it was built
    assert (source.version, source.status_api_token, source.background_mode) == (runtime.version, TOKEN,
                                                                                 runtime.background_mode)
    assert (source.lease_backend, source.shared_redis, source.mailbox_folder) == ("redis", True, "Renders")
    runtime.poller_status.update(state=PollerState.BACKOFF)
    assert source.poller_snapshot()["state"] == "backoff"
    assert source.lease_snapshot() is None and source.cluster_view() is None and source.threads_dead() is False
    runtime.background_failed = True
    assert source.threads_dead() is True
    assert source.instance()["pid"] == runtime.instance.pid
