"""HTTP routes: /health (always), /api/status, /metrics and / (the operator surface), each a blueprint."""

from __future__ import annotations

from flask import Flask


def register_routes(app: Flask) -> None:
    """Attach every blueprint; their views read the runtime from ``app.extensions`` per request."""
    from routes.health import bp as health_bp
    from routes.operator import bp as operator_bp

    app.register_blueprint(health_bp)
    app.register_blueprint(operator_bp)
