"""render-signal's one wiring point: ``create_app(settings=None)`` builds the Flask app and its runtime.

``app = create_app()`` at module level is what Gunicorn serves (``app:app``). Importing this module opens no
socket and starts no thread: the runtime opens the state store lazily, and Gunicorn's ``post_worker_init``
hook starts the background machinery (see gunicorn.conf.py).
"""

from __future__ import annotations

import os
import sys

from flask import Flask

from background.runner import ServiceRuntime
from config import ServiceConfig
from config_file import service_config_or_exit
from log_setup import configure_logging
from settings import Settings, load_settings_or_exit


def create_app(settings: Settings | None = None) -> Flask:
    """The app on ``settings`` (read from the environment when None) and the configuration they name: the
    RENDER_SIGNAL_CONFIG file, read and checked here (a bad file exits 3), or the environment form."""
    config = None
    if settings is None:
        settings = load_settings_or_exit()
        # check-config reads the file itself and reports every error; the app it loads never runs.
        config = ServiceConfig() if _checking_config() else service_config_or_exit(settings, os.environ)
    configure_logging(settings)

    flask_app = Flask(__name__)
    # Error pages never show tracebacks or config (secrets); Flask's debug mode is never switched on here.
    flask_app.config.update(PROPAGATE_EXCEPTIONS=False, JSON_SORT_KEYS=False)
    # Werkzeug would answer ``/api//status`` with a 308 to ``http://<Host header>/api/status``: an open redirect for
    # a forged Host. Repeated slashes inside a path are simply not found. Rules take this when they are added, so
    # it is set before any route is registered.
    flask_app.url_map.merge_slashes = False
    runtime = ServiceRuntime(settings, config)
    flask_app.extensions["render_signal"] = runtime

    from cli import register_cli
    from routes import register_routes

    register_routes(flask_app, runtime.status_source(), runtime.operator_source())
    register_cli(flask_app)
    return flask_app


def _checking_config() -> bool:
    """True in ``flask --app app check-config``: the command reads the file itself, reporting every error (the
    app must load for the command to run at all)."""
    program = os.path.basename(sys.argv[0]) if sys.argv else ""
    return program in ("flask", "__main__.py") and "check-config" in sys.argv[1:]


app = create_app()
