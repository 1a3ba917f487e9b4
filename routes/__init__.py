"""HTTP routes: /health (always), /api/status, /metrics and / (the operator surface)."""

from __future__ import annotations

from flask import Flask


def register_routes(app: Flask, runtime) -> None:
    from routes.health import bp as health_bp

    app.register_blueprint(health_bp)
    try:
        from routes.operator import register_operator_routes
    except ImportError:  # the operator surface module is optional while it is being built
        return
    register_operator_routes(app, runtime)
