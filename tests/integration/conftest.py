"""Fixtures shared by the integration tests of the operator routes, the dashboard and the metrics."""

import pytest

from settings import Settings


@pytest.fixture
def make_app(tmp_path):
    """``make_app(env) -> Flask app``; every runtime is stopped (store closed) at teardown."""
    apps = []

    def make(env: dict[str, str]):
        from app import create_app

        app = create_app(Settings.from_env({"STATE_DIR": str(tmp_path / "var"), **env}))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["render_signal"].stop_background(timeout=1)
