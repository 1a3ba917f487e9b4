"""HTTP routes: /health (always), /api/status, /metrics and / (the operator surface), each a blueprint."""

from __future__ import annotations

from flask import Flask, current_app

from background.status_source import StatusSource

# The app extension the routes read; the CLI commands read the runtime itself, under "render_signal".
STATUS_SOURCE_KEY = "render_signal.status"


def register_routes(app: Flask, source: StatusSource) -> None:
    """Attach every blueprint; their views read ``source`` (from ``app.extensions``) per request."""
    from routes.health import bp as health_bp
    from routes.operator import bp as operator_bp

    app.extensions[STATUS_SOURCE_KEY] = source
    app.register_blueprint(health_bp)
    app.register_blueprint(operator_bp)


def status_source() -> StatusSource:
    """The status source of the app handling this request."""
    return current_app.extensions[STATUS_SOURCE_KEY]
