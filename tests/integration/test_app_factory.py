"""The app factory: one wiring point, no side effects at import, /health on embedded defaults."""

import json
import subprocess
import sys

from harness.service import ROOT, base_env
from settings import Settings


def test_importing_the_app_starts_no_thread_and_opens_no_socket():
    code = ("import threading, psutil, app; "
            "print(threading.active_count(), len(psutil.Process().net_connections(kind='all')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=base_env(), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "0"]


def test_importing_every_module_starts_no_thread():
    code = ("import threading, importlib, pkgutil\n"
            "import app, settings, log_setup, cli\n"
            "for pkg in ('background', 'services', 'email_processing', 'routes'):\n"
            "    mod = importlib.import_module(pkg)\n"
            "    for info in pkgutil.iter_modules(mod.__path__):\n"
            "        importlib.import_module(f'{pkg}.{info.name}')\n"
            "print(threading.active_count())\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=base_env(), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_a_bad_setting_at_import_exits_3_with_one_config_line():
    out = subprocess.run([sys.executable, "-c", "import app"], cwd=ROOT, env=base_env({"IMAP_USE_SSL": "maybe"}),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 3
    assert out.stderr.strip().splitlines() == ["CONFIG: IMAP_USE_SSL: expected one of true/false/1/0/yes/no/on/off"]


def test_health_says_not_configured_when_no_mailbox_is_set(tmp_path):
    from app import create_app

    client = create_app(Settings.from_env({"STATE_DIR": str(tmp_path)})).test_client()
    response = client.get("/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok" and body["checks"]["poller"] == "not_configured"
    assert body["checks"]["lease"] == "n/a"


def test_health_says_disabled_when_background_tasks_are_off(tmp_path):
    from app import create_app

    env = {"STATE_DIR": str(tmp_path), "ENABLE_BACKGROUND_TASKS": "false", "IMAP_SERVER": "127.0.0.1",
           "EMAIL_ADDRESS": "a@example.com", "EMAIL_PASSWORD": "x"}
    body = create_app(Settings.from_env(env)).test_client().get("/health").get_json()
    assert body["checks"]["poller"] == "disabled" and body["status"] == "ok"


def test_version_comes_from_render_git_commit(tmp_path):
    from app import create_app

    env = {"STATE_DIR": str(tmp_path), "RENDER_GIT_COMMIT": "abc1234"}
    assert create_app(Settings.from_env(env)).test_client().get("/health").get_json()["version"] == "abc1234"


def test_an_unknown_route_answers_json_free_of_internals(tmp_path):
    from app import create_app

    response = create_app(Settings.from_env({"STATE_DIR": str(tmp_path)})).test_client().get("/nope")
    assert response.status_code == 404
    assert "Traceback" not in response.get_data(as_text=True)
    json.dumps(response.get_data(as_text=True))


def test_health_is_down_503_when_the_background_cannot_start(tmp_path):
    from app import create_app

    # Given a state directory that cannot be created (a file stands in its way)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    env = {"STATE_DIR": str(blocker / "var"), "IMAP_SERVER": "127.0.0.1", "EMAIL_ADDRESS": "a@example.com",
           "EMAIL_PASSWORD": "x", "WEBHOOK_URL": "https://hook.example.com/h"}
    app = create_app(Settings.from_env(env))
    runtime = app.extensions["render_signal"]
    # When the worker starts its background tasks
    runtime.start_background()
    # Then /health says down with 503, so the platform restarts the instance
    response = app.test_client().get("/health")
    assert response.status_code == 503 and response.get_json()["status"] == "down"
    runtime.stop_background(timeout=5)
