"""HTTP routes: /health (always), /api/status, /metrics and / (the operator surface)."""

from __future__ import annotations

from flask import Flask


def register_routes(app: Flask, runtime) -> None:
    from routes.health import bp as health_bp

    from routes.operator import register_operator_routes

    app.register_blueprint(health_bp)
    register_operator_routes(app, runtime)
